// Shared weight decoding, prepended to every shader that reads weights (WGSL has no #include).
//
// Weight layout (planar, see ARCHITECTURE.md), per matrix:
//   words:  array<u32>  codes. f32: one value per word. f16: two values per word (element 2k low half).
//           q8_0: four i8 codes per word, element i of a block at byte i%4 of word i/4.
//           q4_0/q4_1: eight 4-bit codes per word, element i of a block at bits 4*(i%8) of word i/8.
//   scales: array<u32>  f16 scale per block, two per word (block 2k in the low half).
//   mins:   array<u32>  f16 min per block (q4_1 only), two per word.
// A q4_0 element is (code - 8) * d, q4_1 is code * d + m, q8_0 is code * d.

// Weight kinds, as WType on the Rust side.
const KIND_F32: u32 = 0u;
const KIND_F16: u32 = 1u;
const KIND_Q8_0: u32 = 2u;
const KIND_Q4_0: u32 = 3u;
const KIND_Q4_1: u32 = 4u;

fn half_at(buf_word: u32, index: u32) -> f32 {
    return unpack2x16float(buf_word)[index & 1u];
}
