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
