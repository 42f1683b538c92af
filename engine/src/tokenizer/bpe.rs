//! Byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`: Llama 3, Qwen2/3, GPT-2), built from
//! GGUF metadata into Hugging Face's `tokenizers` crate, which the reference ids come from.
//!
//! What the crate cannot know from a GGUF file is written here: the pre-tokenizer that
//! `tokenizer.ggml.pre` names (llama.cpp's converter identifies it by hashing the original tokenizer's
//! output and stores only the name), which tokens are special (`token_type`), and the byte-level
//! alphabet, needed to give each token's raw bytes when text streams out token by token.

use super::{TYPE_CONTROL, TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use std::sync::Arc;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// The pre-tokenizers nibble knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    /// Llama 3: digits in runs of up to three; whole words found in the vocabulary skip the merges.
    LlamaBpe,
    /// Qwen2 and Qwen3: single digits; NFC-normalized input.
    Qwen2,
    /// GPT-2's own byte-level regex.
    Gpt2,
    /// SmolLM and SmolLM2: every digit alone, then GPT-2's regex.
    Smollm,
}

/// The `tokenizer.ggml.pre` names nibble takes and what each means. llama.cpp's converter names a
/// pre-tokenizer by the model it first met it in, so several names mean one (llama.cpp's
/// `llama-vocab.cpp` groups them); these are the groups of the families nibble runs.
pub const PRE_NAMES: [(&str, Pre); 8] = [
    ("llama-bpe", Pre::LlamaBpe),
    ("llama3", Pre::LlamaBpe),
    ("llama-v3", Pre::LlamaBpe),
    ("falcon3", Pre::LlamaBpe),
    ("qwen2", Pre::Qwen2),
    ("deepseek-r1-qwen", Pre::Qwen2),
    ("gpt-2", Pre::Gpt2),
    ("smollm", Pre::Smollm),
];

/// Contractions, letters with one leading non-letter, digit runs of `{digits}`, punctuation runs, line
/// breaks, and spaces that do not precede a word (as the original tokenizers' `Split` patterns).
fn split_pattern(digits: &str) -> String {
    format!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{digits}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
}

impl Pre {
    pub fn parse(name: &str) -> Option<Pre> {
        PRE_NAMES.iter().find(|(n, _)| *n == name).map(|&(_, p)| p)
    }

    fn pre_tokenizer(self) -> std::result::Result<PreTokenizerWrapper, String> {
        let split = |digits: &str| {
            Split::new(
                SplitPattern::Regex(split_pattern(digits)),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| e.to_string())
        };
        let bytes = ByteLevel::new(false, false, false);
        let gpt2 = ByteLevel::new(false, false, true);
        Ok(match self {
            Pre::LlamaBpe => Sequence::new(vec![split("{1,3}")?.into(), bytes.into()]).into(),
            Pre::Qwen2 => Sequence::new(vec![split("")?.into(), bytes.into()]).into(),
            Pre::Gpt2 => gpt2.into(),
            Pre::Smollm => Sequence::new(vec![Digits::new(true).into(), gpt2.into()]).into(),
        })
    }
}

/// A byte-level BPE tokenizer and what it was built from (kept for writing it back to GGUF).
#[derive(Debug, Clone)]
pub struct Bpe {
    pub pre: Pre,
    /// `tokenizer.ggml.pre` as the file names it (one of [`PRE_NAMES`]), written back as it was.
    pub pre_name: String,
    /// `tokenizer.ggml.merges`: "left right" in rank order.
    pub merges: Arc<Vec<String>>,
    /// Each token's bytes: the byte-level alphabet undone (special tokens are their text).
    raw: Vec<Vec<u8>>,
    tk: Arc<tokenizers::Tokenizer>,
}

impl Bpe {
    /// Builds the tokenizer from the vocabulary (`pieces` as GGUF stores them), its token types, the
    /// merges and the pre-tokenizer's name. `file` names the source in errors.
    pub fn new(
        pieces: &[Vec<u8>],
        types: &[i32],
        merges: Vec<String>,
        pre: &str,
        file: &str,
    ) -> Result<Bpe> {
        let known: Vec<&str> = PRE_NAMES.iter().map(|(n, _)| *n).collect();
        let pre_name = pre.to_string();
        let pre = Pre::parse(pre).ok_or_else(|| {
            Error::format(
                file,
                "tokenizer.ggml.pre",
                format!(
                    "{pre:?} is not a pre-tokenizer nibble knows (it knows {})",
                    known.join(", ")
                ),
            )
        })?;
        let mut vocab = Vocab::default();
        for (i, p) in pieces.iter().enumerate() {
            let s = String::from_utf8_lossy(p).into_owned();
            // The first of two equal pieces keeps the id, as llama.cpp's lookup does.
            vocab.entry(s).or_insert(i as u32);
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                Error::format(
                    file,
                    format!("tokenizer.ggml.merges[{i}]"),
                    format!("{m:?} is not two tokens separated by a space"),
                )
            })?;
            pairs.push((a.to_string(), b.to_string()));
        }
        let bad = |field: &str, e: String| Error::format(file, field, e);
        let model = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .ignore_merges(pre == Pre::LlamaBpe)
            .build()
            .map_err(|e| bad("tokenizer.ggml.merges", e.to_string()))?;
        let mut tk = tokenizers::Tokenizer::new(model);
        if pre == Pre::Qwen2 {
            tk.with_normalizer(Some(NFC));
        }
        tk.with_pre_tokenizer(Some(
            pre.pre_tokenizer()
                .map_err(|e| bad("tokenizer.ggml.pre", e))?,
        ));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        // Control and user-defined tokens are matched whole in text, before the model sees it.
        let added: Vec<AddedToken> = pieces
            .iter()
            .zip(types)
            .filter(|(_, &t)| t == TYPE_CONTROL || t == TYPE_USER_DEFINED)
            .map(|(p, &t)| {
                let special = t == TYPE_CONTROL;
                AddedToken::from(String::from_utf8_lossy(p).into_owned(), special).normalized(false)
            })
            .collect();
        tk.add_special_tokens(&added);
        let raw = pieces
            .iter()
            .zip(types)
            .map(|(p, &t)| match t {
                TYPE_CONTROL | TYPE_USER_DEFINED => p.clone(),
                _ => unbyte(p),
            })
            .collect();
        Ok(Bpe {
            pre,
            pre_name,
            merges: Arc::new(merges),
            raw,
            tk: Arc::new(tk),
        })
    }

    /// Token ids of `text`, special tokens written in it included (no BOS: the caller adds it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tk
            .encode(text, false)
            .map_err(|e| Error::Invalid(format!("the tokenizer failed on the text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes of token `id` (empty past the vocabulary).
    pub fn raw(&self, id: u32) -> &[u8] {
        self.raw.get(id as usize).map_or(&[], Vec::as_slice)
    }
}

/// GPT-2's byte-level alphabet undone: each char of a piece stands for one byte. Printable Latin-1 bytes
/// are themselves; the other 68 bytes were moved to U+0100.. in byte order. A char outside the
/// alphabet is kept as its UTF-8.
fn unbyte(piece: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(piece);
    let mut out = Vec::with_capacity(piece.len());
    for ch in s.chars() {
        match byte_of(ch) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

const fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 68 non-printable bytes in order: the n-th stands as U+0100 + n.
const MOVED: [u8; 68] = {
    let mut t = [0u8; 68];
    let (mut b, mut n) = (0usize, 0usize);
    while b < 256 {
        if !printable(b as u8) {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

fn byte_of(ch: char) -> Option<u8> {
    let c = ch as u32;
    if c < 256 && printable(c as u8) {
        return Some(c as u8);
    }
    MOVED.get(c.checked_sub(0x100)? as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_round_trips_every_byte() {
        // Ġ (U+0120) is the space, Ċ (U+010A) the newline, as in every GPT-2 vocabulary.
        assert_eq!(byte_of('\u{120}'), Some(b' '));
        assert_eq!(byte_of('\u{10A}'), Some(b'\n'));
        assert_eq!(byte_of('A'), Some(b'A'));
        let mut seen = [false; 256];
        for c in (0x21..0x17F).filter_map(char::from_u32) {
            if let Some(b) = byte_of(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "every byte has a char");
    }

    #[test]
    fn an_unknown_pre_tokenizer_is_refused_by_name() {
        let e = Bpe::new(&[b"a".to_vec()], &[1], vec![], "falcon", "m.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.gguf") && e.contains("tokenizer.ggml.pre") && e.contains("falcon"),
            "{e}"
        );
    }
}
