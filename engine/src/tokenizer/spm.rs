//! SentencePiece encoding (`tokenizer.ggml.model = "llama"`) as llama.cpp runs it: special tokens
//! (control, user-defined and unknown pieces, longest first) are split out of the text before
//! anything else, each text fragment between them gets the dummy-prefix space where it follows a
//! special token (or starts the text) and `tokenizer.ggml.add_space_prefix` is true (its default;
//! Gemma's files say false), and each fragment is then merged as llama2.c does: code points looked
//! up whole, bytes without a piece as `<0xNN>` tokens, pairs merged by best score (the leftmost of
//! equals). Held to `llama-tokenize` by `engine/tests/tokenizer_spm.rs`.

use super::{Tokenizer, TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// The special tokens matched whole in text: (text, id, whitespace after it stripped), longest
/// first, as llama.cpp orders them.
#[derive(Debug, Clone, Default)]
pub(super) struct Specials(Vec<(String, u32, bool)>);

impl Specials {
    /// From the vocabulary's types; `rstrip` says which ids strip the whitespace after them.
    pub fn of(pieces: &[Vec<u8>], types: &[i32], rstrip: &[u32]) -> Specials {
        let mut v: Vec<(String, u32, bool)> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| matches!(t, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
            .filter_map(|(i, _)| {
                // GGUF's text of the piece: llama.cpp matches it as the file stores it.
                let s = std::str::from_utf8(&pieces[i])
                    .ok()?
                    .replace(' ', "\u{2581}");
                (!s.is_empty()).then(|| (s, i as u32, rstrip.contains(&(i as u32))))
            })
            .collect();
        v.sort_by_key(|(s, ..)| std::cmp::Reverse(s.len()));
        Specials(v)
    }
}

/// A piece of the text: raw text, or a special token found in it.
enum Frag<'a> {
    Text(&'a str),
    Token(u32),
}

/// C's `isspace`, which llama.cpp strips with.
fn c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// The text with every special token split out, each token in turn over the fragments left.
fn partition<'a>(text: &'a str, specials: &Specials) -> Vec<Frag<'a>> {
    let mut frags = vec![Frag::Text(text)];
    for (s, id, rstrip) in &specials.0 {
        let mut out = Vec::with_capacity(frags.len());
        for f in frags {
            let Frag::Text(mut rest) = f else {
                out.push(f);
                continue;
            };
            while let Some(at) = rest.find(s.as_str()) {
                if at > 0 {
                    out.push(Frag::Text(&rest[..at]));
                }
                out.push(Frag::Token(*id));
                rest = &rest[at + s.len()..];
                if *rstrip {
                    rest = rest.trim_start_matches(c_space);
                }
            }
            if !rest.is_empty() {
                out.push(Frag::Text(rest));
            }
        }
        frags = out;
    }
    frags
}

impl Tokenizer {
    /// `tokenizer.ggml.add_space_prefix`, and llama.cpp's whitespace rule where `general.name`
    /// says Phi-3.
    pub(super) fn read_spm_settings(&mut self, g: &Gguf, file: &str) -> Result<()> {
        let key = "tokenizer.ggml.add_space_prefix";
        self.add_space_prefix = match g.get(key) {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                let v = v.display_short();
                return Err(Error::format(file, key, format!("{v} is not a boolean")));
            }
        };
        let name = g.get("general.name").and_then(Value::as_str).unwrap_or("");
        if ["phi-3", "phi3"]
            .iter()
            .any(|p| name.to_lowercase().contains(p))
        {
            self.set_rstrip(self.phi3_rstrip());
        }
        Ok(())
    }

    /// llama.cpp's rule for a vocabulary whose model is named Phi-3 (`llama-vocab.cpp`): every
    /// special token and `</s>` strip the whitespace after them, but `<unk>`, `<s>` and
    /// `<|endoftext|>`.
    fn phi3_rstrip(&self) -> Vec<u32> {
        let id = |s: &str| self.lookup.get(s.as_bytes()).copied();
        let keep = ["<unk>", "<s>", "<|endoftext|>"].map(id);
        let special = |i: usize| {
            matches!(
                self.types[i],
                TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN
            )
        };
        (0..self.pieces.len() as u32)
            .filter(|&i| special(i as usize) || Some(i) == id("</s>"))
            .filter(|i| !keep.contains(&Some(*i)))
            .collect()
    }

    /// The SentencePiece ids of `text` (no BOS or EOS: the caller adds them).
    pub(super) fn encode_spm(&self, text: &str, ids: &mut Vec<u32>) {
        let mut after_special = true;
        for f in partition(text, &self.specials) {
            match f {
                Frag::Token(id) => {
                    ids.push(id);
                    after_special = true;
                }
                Frag::Text(t) => {
                    let prefix = if self.add_space_prefix && after_special {
                        " "
                    } else {
                        ""
                    };
                    self.merge(&format!("{prefix}{t}"), ids);
                    after_special = false;
                }
            }
        }
    }

    /// One fragment: code points, byte fallback, then best-score merges.
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let mut ids: Vec<u32> = Vec::with_capacity(text.len());
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            let s = ch.encode_utf8(&mut buf).as_bytes();
            if let Some(&id) = self.lookup.get(s) {
                ids.push(id);
            } else {
                // A byte without a byte piece maps to <unk>, as SentencePiece does.
                ids.extend(s.iter().map(|&b| self.byte_ids[b as usize].unwrap_or(0)));
            }
        }
        let mut merged = Vec::new();
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for i in 0..ids.len().saturating_sub(1) {
                merged.clear();
                merged.extend_from_slice(&self.pieces[ids[i] as usize]);
                merged.extend_from_slice(&self.pieces[ids[i + 1] as usize]);
                if let Some(&id) = self.lookup.get(&merged) {
                    let score = self.scores[id as usize];
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, id));
                    }
                }
            }
            match best {
                Some((_, i, id)) => {
                    ids[i] = id;
                    ids.remove(i + 1);
                }
                None => break,
            }
        }
        out.extend(ids);
    }
}
