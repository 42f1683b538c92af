//! The decode step's fusions (gpu/fused.rs) against the CPU oracle on lavapipe, with the tiled
//! kernels forced (lavapipe would pick the row kernels, which fold nothing). Tolerance as tests/gpu.rs
//! derives it (f32 activations; max |Δlogit| <= 2e-4 * (1 + max |logit|), top-1 agreeing): folding a
//! norm changes only where 1 / rms(x) multiplies, one rounding.

use nibble_engine::block_on;
use nibble_engine::cpu::CpuDecoder;
use nibble_engine::gpu::{Activations, Gpu, GpuDecoder, GpuOptions, MatvecKernel};
use nibble_engine::kv::KvConfig;
use nibble_engine::measure::{self, RunConfig};
use nibble_engine::model::TensorId;
use nibble_engine::{eval, Decoder, Model};

fn prepare(spec: &str) -> Model {
    measure::prepare(&Model::builtin(), &RunConfig::parse(spec).unwrap())
        .unwrap()
        .0
}

/// Decodes `tokens` on the GPU and the oracle, asserting the logits agree; the GPU's dispatches of
/// the last step.
fn decode(gpu: &Gpu, m: &Model, tokens: &[u32], what: &str) -> usize {
    let mut cpu = CpuDecoder::with_kv(m, KvConfig::default()).unwrap();
    let mut g = GpuDecoder::new(gpu, m, KvConfig::default()).unwrap();
    for (p, &t) in tokens.iter().enumerate() {
        let a = block_on(cpu.step(t, p)).unwrap().to_vec();
        let b = block_on(g.step(t, p)).unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            d <= 2e-4 * (1.0 + scale),
            "{what} pos {p}: max |Δlogit| {d}"
        );
        assert_eq!(eval::argmax(&a), eval::argmax(b), "{what} pos {p}");
    }
    g.dispatches().unwrap()
}

/// In a layer where Q, gate and the classifier are q4_0 (their kernels fold the norm) and K, V and up
/// q8_0 (theirs do not), the folded products and the norm dispatched once for the rest both match
/// the oracle, and the dispatch count says which happened: against the all-q4_0 model each layer
/// adds the attention norm (once for K and V), the feed-forward norm, and up and SwiGLU apart from
/// the fused gate/up kernel (gate alone still folds): 4 per layer, the classifier's norm folded in
/// both.
#[test]
fn a_norm_folds_into_q4_products_and_is_dispatched_once_for_the_rest() {
    let gpu = Gpu::open_blocking(GpuOptions {
        act: Some(Activations::F32),
        ..Default::default()
    })
    .expect("a WebGPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    gpu.set_matvec_kernel(MatvecKernel::Tiled);
    let q4 = prepare("weights=q4_0");
    let q8 = prepare("weights=q8_0");
    let mut mixed = q4.clone();
    for l in 0..q4.config.n_layers {
        for id in [TensorId::Wk(l), TensorId::Wv(l), TensorId::Up(l)] {
            *mixed.weights.matrix_mut(id) = q8.weights.matrix(id).clone();
        }
    }
    let toks: Vec<u32> = (0..10).map(|i| 3 + (i * 41 % 250) as u32).collect();
    let all = decode(&gpu, &q4, &toks, "q4_0");
    let some = decode(&gpu, &mixed, &toks, "mixed");
    assert_eq!(some, all + 4 * q4.config.n_layers, "dispatches per step");
}
