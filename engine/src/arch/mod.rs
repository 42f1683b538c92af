//! Model families. Each family is one
//! file beside this one, describing how its hyper-parameters are read from and written to GGUF
//! metadata, which tensors it has, and its forward pass over [`crate::forward::Kernels`]; it is listed
//! once in [`FAMILIES`].

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

pub use crate::config::{Arch, Class, Config, TensorId};
use crate::error::{Error, Result};
use crate::forward::Kernels;
use crate::gguf::{Gguf, Value};

/// What a family supplies. Functions rather than a trait object so the table is a `const`.
pub struct Family {
    pub arch: Arch,
    /// `general.architecture` and the prefix of the family's metadata keys.
    pub name: &'static str,
    /// Hyper-parameters from GGUF metadata (`file` names the source in errors).
    pub read_config: fn(&Gguf, &str) -> Result<Config>,
    /// The metadata that [`Family::read_config`] reads back.
    pub write_config: fn(&Config) -> Vec<(String, Value)>,
    /// Every tensor in GGUF order; the classifier only when not tied to the embedding.
    pub tensors: fn(&Config, bool) -> Vec<TensorId>,
    /// The forward pass over a batch of consecutive tokens (see [`crate::forward::forward`]).
    pub forward: fn(&mut dyn Kernels, &Config, &[u32], usize),
}

/// Every supported family.
pub const FAMILIES: [&Family; 6] = [
    &llama::FAMILY,
    &qwen2::FAMILY,
    &qwen3::FAMILY,
    &phi3::FAMILY,
    &gemma2::FAMILY,
    &gemma3::FAMILY,
];

impl Arch {
    pub fn family(self) -> &'static Family {
        FAMILIES
            .iter()
            .find(|f| f.arch == self)
            .expect("every Arch has a family")
    }
}

/// The family a GGUF file declares; an unknown one is refused by name with the supported list.
pub fn from_gguf(g: &Gguf, file: &str) -> Result<&'static Family> {
    let key = "general.architecture";
    let name = g
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::format(file, key, "missing"))?;
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            let known: Vec<String> = FAMILIES.iter().map(|f| format!("{:?}", f.name)).collect();
            Error::format(
                file,
                key,
                format!(
                    "{name:?} is not supported (nibble runs {})",
                    known.join(", ")
                ),
            )
        })
}

/// Typed reads of `{arch}.*` metadata keys with errors that name the key.
pub struct Meta<'g> {
    pub g: &'g Gguf<'g>,
    pub file: &'g str,
}

impl Meta<'_> {
    /// A positive integer that must be present.
    pub fn int(&self, key: &str) -> Result<usize> {
        let v = self
            .g
            .get(key)
            .ok_or_else(|| Error::format(self.file, key, "missing"))?;
        match v.as_int() {
            Some(i) if i > 0 && i <= u32::MAX as i128 => Ok(i as usize),
            _ => Err(Error::format(
                self.file,
                key,
                format!("{} is not a positive integer", v.display_short()),
            )),
        }
    }

    /// [`Meta::int`], or `default` when the key is absent.
    pub fn int_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.g.get(key) {
            None => Ok(default),
            Some(_) => self.int(key),
        }
    }

    /// A number, or `default` when the key is absent.
    pub fn float_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.g.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().map(|f| f as f32).ok_or_else(|| {
                Error::format(
                    self.file,
                    key,
                    format!("{} is not a number", v.display_short()),
                )
            }),
        }
    }
}

impl TensorId {
    /// All tensors of the model's family in GGUF order; `Output` only when the classifier is not tied.
    pub fn all(c: &Config, tied: bool) -> Vec<TensorId> {
        (c.arch.family().tensors)(c, tied)
    }
}

/// Runs `tokens` at positions `pos..` through the forward pass of the model's family; the logits of
/// token `i` end up in row `i` of [`crate::forward::Act::Logits`]. `tokens.len()` is at most
/// [`Kernels::max_rows`].
pub fn forward(k: &mut dyn Kernels, c: &Config, tokens: &[u32], pos: usize) {
    debug_assert!(!tokens.is_empty() && tokens.len() <= k.max_rows());
    (c.arch.family().forward)(k, c, tokens, pos)
}
