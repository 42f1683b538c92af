// Shared weight decoding, prepended to every shader that reads weights (WGSL has no #include).
//
// Weight layout (planar, see ARCHITECTURE.md), per matrix:
//   words:  array<u32>  codes. f32: one value per word. f16: two values per word (element 2k low half).
//           q8_0: four i8 codes per word, element i of a block at byte i%4 of word i/4.
//           q4_0/q4_1: eight 4-bit codes per word, element i of a block at bits 4*(i%8) of word i/8.
//   scales: array<u32>  f16 scale per block, two per word (block 2k in the low half).
//   mins:   array<u32>  f16 min per block (q4_1 only), two per word.
// A q4_0 element is (code - 8) * d, q4_1 is code * d + m, q8_0 is code * d.

// Weight kinds are the KIND_* codes generated from engine/src/dtype.rs (prepended to every shader).

fn half_at(buf_word: u32, index: u32) -> f32 {
    return unpack2x16float(buf_word)[index & 1u];
}

// Small integers as f32 without a conversion instruction: OR-ing 2^23's exponent into n < 2^23 gives
// the float 2^23 + n exactly, and subtracting 2^23 leaves n exactly, so the value is the same bit for
// bit. GPUs convert integers at a fraction of their float rate (NVIDIA: 16 per clock per SM against
// 128 float operations), and a 4-bit matvec converts one per weight: on an H200 that, not memory,
// bounded q4_0 decode. These are two full-rate operations.
const TWO23: f32 = 8388608.0;

fn u2f(n: u32) -> f32 {
    return bitcast<f32>(n | 0x4B000000u) - TWO23;
}

fn u2f4(n: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(n | vec4<u32>(0x4B000000u)) - vec4<f32>(TWO23);
}

// Signed bytes held in the low 8 bits of each lane of b (higher bits ignored): flipping the sign
// bit offsets them by 128 (0..255), taken away with 2^23.
fn s8f4(b: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>((b & vec4<u32>(255u)) ^ vec4<u32>(0x4B000080u)) - vec4<f32>(TWO23 + 128.0);
}
