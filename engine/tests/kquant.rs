//! K-quants (Q4_K, Q5_K, Q6_K): nibble's dequantization is bit-identical to the `gguf` Python package's
//! reference `dequantize`, on random super-blocks and on every K tensor of the family fixtures; and
//! Q5_0 and Q5_1 (llama-quantize's fallbacks where a K-quant does not fit a row), IQ4_NL and BF16
//! are re-stored with the same values.

mod common;
use common::*;
use half::f16;
use nibble_engine::gguf::Gguf;
use nibble_engine::quant::{GgmlType, QMatrix};

const K_TYPES: [GgmlType; 3] = [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

/// Random super-blocks of `gt` with finite f16 scales: every code and 6-bit scale pattern is reachable.
fn random_blocks(gt: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = Vec::new();
    for _ in 0..n {
        let mut b: Vec<u8> = (0..gt.block_bytes()).map(|_| next() as u8).collect();
        let mut f16_at = |at: usize, b: &mut Vec<u8>| {
            let v = (next() % 2001) as f32 / 1000.0 - 1.0;
            b[at..at + 2].copy_from_slice(&f16::from_f32(v * 0.01).to_le_bytes());
        };
        match gt {
            GgmlType::BF16 => {}
            GgmlType::Q6_K => f16_at(208, &mut b),
            _ => {
                f16_at(0, &mut b);
                f16_at(2, &mut b);
            }
        }
        out.extend(b);
    }
    out
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// gguf-py's `dequantize` of `bytes` (blocks of `gt`), through a file in `dir`.
fn gguf_py_dequantize(dir: &std::path::Path, gt: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let raw = dir.join(format!("{gt:?}.bin"));
    let out = dir.join(format!("{gt:?}.f32"));
    std::fs::write(&raw, bytes).unwrap();
    python(&[
        "dequant",
        &format!("{gt:?}"),
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    read_f32(&out)
}

fn assert_bits_equal(name: &str, ours: &[f32], want: &[f32]) {
    assert_eq!(ours.len(), want.len(), "{name}: length");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{name}: element {i} is {} but gguf-py gives {} (first of {} differences)",
            ours[i],
            want[i],
            (0..ours.len())
                .filter(|&i| ours[i].to_bits() != want[i].to_bits())
                .count()
        );
    }
}

#[test]
fn k_quant_blocks_dequantize_bit_exactly_as_gguf_py() {
    let dir = scratch("kquant_random");
    let (rows, blocks_per_row) = (6, 4);
    for (i, gt) in K_TYPES.into_iter().enumerate() {
        let bytes = random_blocks(gt, rows * blocks_per_row, 11 + i as u64);
        let want = gguf_py_dequantize(&dir, gt, &bytes);
        let cols = 256 * blocks_per_row;
        let m = QMatrix::from_ggml(gt, rows, cols, &bytes);
        let ours = m.to_f32();
        assert_bits_equal(&format!("{gt:?}"), &ours, &want);
        // The file's bytes come back unchanged (the in-memory padding is not written).
        assert_eq!(m.to_ggml().unwrap(), bytes, "{gt:?} round trip");
        // The product reads the same values: each row against a ramp, in f64 from the dequantized rows.
        let x: Vec<f32> = (0..cols)
            .map(|c| ((c * 7 % 13) as f32 - 6.0) / 6.0)
            .collect();
        let mut y = vec![0.0; rows];
        m.matvec(&x, &mut y);
        for r in 0..rows {
            let want: f64 = (0..cols)
                .map(|c| ours[r * cols + c] as f64 * x[c] as f64)
                .sum();
            // f32 accumulation over 1024 products of magnitude <= ~0.6: well under 1e-4.
            assert!(
                (y[r] as f64 - want).abs() < 1e-4,
                "{gt:?} row {r}: {} vs {want}",
                y[r]
            );
        }
    }
}

/// Q5_0 and Q5_1 blocks, re-stored at load as Q8_0 (the same scale, codes less 16) and as F32
/// (d * code + m, as ggml computes it), BF16 values, widened to F32, and IQ4_NL blocks, as Q8_0
/// with its table's values for codes, read back as gguf-py's `dequantize` gives them, bit for bit
/// but for the sign of zero.
#[test]
fn q5_iq4_nl_and_bf16_are_restored_with_gguf_py_values() {
    use nibble_engine::quant::WType;
    let dir = scratch("q5_random");
    let (rows, blocks_per_row) = (5, 6);
    for (i, (gt, stored)) in [
        (GgmlType::Q5_0, WType::Q8_0),
        (GgmlType::Q5_1, WType::F32),
        (GgmlType::BF16, WType::F32),
        (GgmlType::IQ4_NL, WType::Q8_0),
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = random_blocks(
            gt,
            rows * blocks_per_row * 32 / gt.block_len(),
            21 + i as u64,
        );
        let want = gguf_py_dequantize(&dir, gt, &bytes);
        let m = QMatrix::from_ggml(gt, rows, 32 * blocks_per_row, &bytes);
        assert_eq!((m.ty, m.block), (stored, stored.block_for(32)), "{gt:?}");
        let ours = m.to_f32();
        // Q8_0 reads code * d + 0, so a zero code under a negative scale is +0 where gguf-py's
        // d * 0 is -0: the same value. Every other bit agrees.
        let zero_signs = |v: &[f32]| v.iter().map(|&x| if x == 0.0 { 0.0 } else { x }).collect();
        let (ours, want): (Vec<f32>, Vec<f32>) = (zero_signs(&ours), zero_signs(&want));
        assert_bits_equal(&format!("{gt:?}"), &ours, &want);
    }
}

#[test]
fn every_k_tensor_of_the_family_fixtures_matches_gguf_py() {
    let Some(fam) = families_dir("every_k_tensor_of_the_family_fixtures_matches_gguf_py") else {
        return;
    };
    for file in [
        "llama3-tiny/llama3-tiny-Q4_K_M.gguf",
        "qwen2-tiny/qwen2-tiny-Q4_K_M.gguf",
    ] {
        let path = fam.join(file);
        let out = scratch(&format!("kquant_{}", file.split('/').next().unwrap()));
        // The first rows of each tensor: every super-block position and type, at a fraction of the
        // 128K-row embeddings' cost.
        let rows = 96;
        python(&[
            "dequant-gguf",
            path.to_str().unwrap(),
            out.to_str().unwrap(),
            &rows.to_string(),
        ]);
        let bytes = std::fs::read(&path).unwrap();
        let g = Gguf::parse(&bytes, file).unwrap();
        let mut seen = 0;
        for t in &g.tensors {
            let gt = t.ty;
            if !K_TYPES.contains(&gt) {
                continue;
            }
            let (cols, rows) = (t.dims[0] as usize, (t.dims[1] as usize).min(rows));
            let row_bytes = cols / 256 * gt.block_bytes();
            let m = QMatrix::from_ggml(gt, rows, cols, &g.tensor_data(t)[..rows * row_bytes]);
            let want = read_f32(&out.join(format!("{}.f32", t.name)));
            assert_bits_equal(&format!("{file}: {}", t.name), &m.to_f32(), &want);
            seen += 1;
        }
        assert_eq!(seen, 15, "{file}: K tensors (12 Q4_K + 3 Q6_K)");
    }
}
