//! The kernel table's own checks: order, module contents, which kernels take which modules.

use super::*;
use crate::dtype::WType;

#[test]
fn the_table_is_in_kernel_order() {
    for (i, d) in TABLE.iter().enumerate() {
        assert_eq!(d.kernel as usize, i, "{:?} is out of place", d.kernel);
    }
}

/// Each case's kernel under `k`: (cols, type, block, long modules, the kernel wanted).
fn expect_matrices(k: MatvecKernel, cases: &[(usize, WType, usize, bool, Kernel)]) {
    for &(cols, ty, block, long, want) in cases {
        let got = k.for_matrix(cols, ty, block, long);
        assert_eq!(
            got, want,
            "{k:?}: {cols} {ty:?} in blocks of {block}, long modules {long}"
        );
    }
}

/// matvec4.wgsl finds blocks by shifting, so a block that is not a power of two (no format makes
/// one today) must take the 32-bit kernels, which divide.
#[test]
fn vec4_kernels_take_only_power_of_two_blocks() {
    use {Kernel::*, WType::*};
    let k = MatvecKernel::Tiled;
    expect_matrices(
        k,
        &[
            (4096, Q4_0, 64, false, Matvec4Q4C),
            (4096, Q4_0, 96, false, Matvec),
            (4096, Q8_0, 32, false, Matvec4Q8),
            (4096, Q8_0, 48, false, Matvec),
        ],
    );
}

/// The integer-dot kernels take q4_0 and K-quant rows that fit their workgroup memory, nothing
/// else; longer rows take the long modules where the adapter has their memory (`long`), up to
/// 22528 values, and only under `TiledInt8`; the integer prompt GEMMs take q4_0, q8_0 (rows of
/// whole blocks of 32) and the K-quants.
#[test]
fn int8_takes_the_rows_that_fit() {
    use {Kernel::*, WType::*};
    let k = MatvecKernel::TiledInt8;
    expect_matrices(
        k,
        &[
            (11008, Q4_0, 32, false, Matvec4Q4I),
            (14336, Q4_0, 32, false, Matvec4Q4C),
            (4096, Q4_1, 32, false, Matvec4Q4C),
            (4096, F16, 1, false, Matvec4F16),
            (4096, Q4_K, 256, false, Matvec4KI),
            (11264, Q5_K, 256, false, Matvec4KI),
            (11520, Q4_K, 256, false, Matvec4Q4K),
            (11008, Q6_K, 256, false, Matvec4Q6KI),
            (14336, Q6_K, 256, false, MatvecK),
            (11264, Q4_K, 256, true, Matvec4KI),
            (14336, Q4_K, 256, true, Matvec4KIL),
            (18944, Q6_K, 256, true, Matvec4Q6KIL),
            (22528, Q5_K, 256, true, Matvec4KIL),
            (22784, Q4_K, 256, true, Matvec4Q4K),
            (14336, Q4_0, 32, true, Matvec4Q4IL),
            (12288, Q4_0, 32, true, Matvec4Q4I),
            (22528, Q4_0, 32, true, Matvec4Q4IL),
            (22560, Q4_0, 32, true, Matvec4Q4C),
        ],
    );
    let tiled = MatvecKernel::Tiled.for_matrix(14336, Q4_K, 256, true);
    assert_eq!(tiled, Matvec4Q4K);
    // The prompt pass: any K-quant row (the GEMM stages a step of x at a time); f16 rows of whole
    // steps in f16 math where asked, under any kernel choice.
    let float = MatvecKernel::Tiled;
    for (kind, cols, ty, block, half, want) in [
        (k, 14336, Q6_K, 256, false, MatmulKI),
        (k, 14336, Q6_K, 256, true, MatmulKI),
        (k, 4096, Q8_0, 32, false, MatmulQ8I),
        (k, 4096, Q8_0, 32, true, MatmulQ8I),
        (k, 4096, Q8_0, 16, false, Matmul),
        (float, 4096, Q8_0, 32, false, Matmul),
        (float, 4096, Q4_K, 256, false, Matmul),
        (k, 4096, F16, 32, false, Matmul),
        (k, 4096, F16, 32, true, MatmulH),
        (float, 11008, F16, 32, true, MatmulH),
        (MatvecKernel::Row, 4096, F16, 32, true, MatmulH),
        (k, 172, F16, 32, true, Matmul),
    ] {
        let got = kind.for_matmul(cols, ty, block, half);
        assert_eq!(got, want, "{kind:?} {cols} {ty:?}, f16 math {half}");
    }
}

/// The K-quant kernels most decode tokens run (and every one without a folded norm) are in a
/// module without the 12 KB staging array, which would cut how many workgroups a small GPU
/// keeps in flight; the norm-folding ones have it.
#[test]
fn only_the_norm_folding_k_quant_kernels_declare_staging_memory() {
    let staging = "var<workgroup> xh";
    let src = |parts| module_source(Activations::F16, parts, false);
    assert!(!src(MATVEC4_KQUANT_MODULE).contains(staging));
    assert!(src(MATVEC4_KQUANT_NORM_MODULE).contains(staging));
    // The float K-quant kernels (the integer ones hold quantized x instead).
    let float_k =
        |d: &&KernelDef| d.parts.contains(&MATVEC4_KQUANT) && !d.parts.contains(&MATVEC4_KINT8);
    for d in TABLE.iter().filter(float_k) {
        let norm = d.kernel.folds_norm();
        assert_eq!(d.parts.contains(&MATVEC4_NORM), norm, "{}", d.entry);
    }
}

#[test]
fn every_entry_point_is_in_its_module() {
    for d in &TABLE {
        let src = module_source(Activations::F32, d.parts, false);
        assert!(
            src.contains(&format!("fn {}(", d.entry)),
            "{} is not defined in module {}",
            d.entry,
            d.module
        );
    }
}

/// The integer-dot modules' sizes of x (`XW_WORDS` words of 8, `XK_BLOCKS` blocks of 32) and the
/// widths the kernel choice takes them for are one number each.
#[test]
fn the_integer_modules_hold_the_rows_the_choice_gives_them() {
    let size = |part: &str, name: &str| -> usize {
        let n = part
            .trim()
            .strip_prefix(&format!("const {name}: u32 = "))
            .unwrap();
        n.strip_suffix("u;").unwrap().parse().unwrap()
    };
    assert_eq!(8 * size(XW_SHORT, "XW_WORDS"), choice::INT8_MAX_COLS);
    assert_eq!(8 * size(XW_LONG, "XW_WORDS"), choice::INT8_LONG_MAX_COLS);
    assert_eq!(32 * size(XK_SHORT, "XK_BLOCKS"), choice::KINT8_MAX_COLS);
    assert_eq!(32 * size(XK_LONG, "XK_BLOCKS"), choice::KINT8_LONG_MAX_COLS);
    assert!(MATVEC4_INT8_MODULE.contains(&XW_SHORT) && MATVEC4_INT8_LONG_MODULE.contains(&XW_LONG));
    assert!(
        MATVEC4_KINT8_MODULE.contains(&XK_SHORT) && MATVEC4_KINT8_LONG_MODULE.contains(&XK_LONG)
    );
}

/// The GEMMs' tiles cover the rows the dispatch assumes (`Kernel::rows_per_group`): every prompt
/// GEMM of the table (entry `matmul*`) against its module's tile constant (a grid too small leaves
/// rows out, which the oracle tests see; too large, it idles workgroups, which only a timing sees:
/// `matmul_q8i` on the default 8 ran 3x slow on an H100).
#[test]
fn the_gemm_grids_match_their_tiles() {
    let size = wgsl_const;
    let mut seen = 0;
    for d in TABLE.iter().filter(|d| d.entry.starts_with("matmul")) {
        let tile = match d.module {
            "matvec" => size(MATRIX, "MM_R"),
            "matmul_f16" => size(MATMUL_F16, "MH_R"),
            "matmul_int8" => size(MATMUL_INT8, "MI_R"),
            m => panic!("{:?}: a GEMM module this test does not know: {m}", d.kernel),
        };
        assert_eq!(d.kernel.rows_per_group(), tile, "{:?}", d.kernel);
        let tokens = match d.entry {
            "matmul_h128" => size(MATMUL_F16, "MH_TALL"),
            _ => size(MATRIX, "MM_T"),
        };
        assert_eq!(d.kernel.tokens_per_group(), tokens, "{:?}", d.kernel);
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} GEMMs in the table");
}

/// The value of WGSL's `const NAME: u32 = Nu;` in `src`.
fn wgsl_const(src: &str, name: &str) -> usize {
    let at = src.find(&format!("const {name}: u32 = ")).unwrap();
    let rest = &src[at..];
    let n = rest[rest.find('=').unwrap() + 1..rest.find("u;").unwrap()].trim();
    n.parse().unwrap()
}

/// The prompt attention kernel's tile covers the rows the dispatch divides the pass by (too few
/// rows leave rows unattended; too many, rows attended twice by racing workgroups).
#[test]
fn the_attention_grid_matches_its_tile() {
    assert_eq!(wgsl_const(ATTENTION_TILE, "SQ"), ATTN_STAGED_ROWS);
}

/// `var name: T;` lines inside a loop body of WGSL `text` (1-based line, text): WGSL zeroes such a
/// variable on every iteration, but the naga in Firefox 153 ESR allocates it once, zeroed at
/// function entry, so it keeps the last iteration's value (gfx-rs/wgpu#9489, fixed in later naga):
/// `matmul_h`'s f16 sums then carried over and Gemma's fixtures scored max |dlogit| 46 in Firefox.
/// A loop body is a `{` opened on a line starting `for`, `while` or `loop`.
fn loop_locals_without_initializer(text: &str) -> Vec<(usize, String)> {
    let mut open = Vec::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let t = code.trim();
        let bare = t.starts_with("var ") && !t.contains('=') && t.ends_with(';');
        if bare && open.contains(&true) {
            out.push((i + 1, t.to_string()));
        }
        let mut header = ["for ", "for(", "while ", "loop "]
            .iter()
            .any(|k| t.starts_with(k));
        for c in code.chars() {
            match c {
                '{' => open.push(std::mem::take(&mut header)),
                '}' => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn the_loop_local_check_sees_a_bare_var() {
    let text = "fn f() {\n    var a: f32;\n    for (var i = 0u; i < 4u; i++) {\n        \
                var b = 0.0;\n        if (i > 0u) {\n            var c: array<f32, 4>;\n        \
                }\n    }\n    loop {\n        var d: u32; // counted\n    }\n    var e: u32;\n}\n";
    let found = loop_locals_without_initializer(text);
    let lines: Vec<usize> = found.iter().map(|f| f.0).collect();
    assert_eq!(lines, [6, 10], "{found:?}");
}

/// Every variable declared in a loop body of the shaders has an initializer, so browsers whose
/// naga does not zero it each iteration run what WGSL means (`loop_locals_without_initializer`).
#[test]
fn loop_locals_have_initializers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut found = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "wgsl") {
            let text = std::fs::read_to_string(&p).unwrap();
            for (n, t) in loop_locals_without_initializer(&text) {
                found.push(format!("{}:{n}: {t}", p.display()));
            }
            files += 1;
        }
    }
    assert!(
        files >= 20,
        "only {files} shader files in {}",
        dir.display()
    );
    assert!(
        found.is_empty(),
        "give these an initializer:\n{}",
        found.join("\n")
    );
}
