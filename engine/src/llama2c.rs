//! llama2.c checkpoints, the legacy (v0) export: 7 i32s, then f32 tensors, each kind across all layers
//! (all `wq`, then all `wk`...), with the `freq_cis` tables (skipped: nibble computes RoPE) before an
//! optional classifier. A negative vocabulary size means the classifier is a tensor of its own.

use crate::arch::{Arch, Class, Config, TensorId};
use crate::error::{Error, Result};
use crate::model::{file_stem, Model, Tensor, Weights};
use crate::quant::QMatrix;

const HEADER: usize = 28;
const FIELDS: [&str; 7] = [
    "dim",
    "hidden_dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "seq_len",
];

impl Model {
    /// Reads a llama2.c checkpoint; the file size must equal what the header implies.
    pub fn from_llama2c(bytes: &[u8], file: &str) -> Result<Model> {
        let (config, tied) = header(bytes, file)?;
        let c = &config;
        let sections = sections(c, tied);
        check_size(&sections, bytes.len() as u64, file)?;
        // Every section is in bounds now; decode them.
        let mut data: Vec<Vec<f32>> = Vec::with_capacity(sections.len());
        let mut at = HEADER;
        for (_, n) in &sections {
            let end = at + *n as usize * 4;
            data.push(
                bytes[at..end]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            );
            at = end;
        }
        let sec =
            |i: usize, layer: usize, per: usize| data[i][layer * per..(layer + 1) * per].to_vec();
        let weights = Weights::build(c, tied, |id| {
            let (rows, cols) = id.shape(c);
            let n = rows * cols;
            let v = match id {
                TensorId::TokEmbd => data[0].clone(),
                TensorId::AttnNorm(l) => sec(1, l, n),
                TensorId::Wq(l) => sec(2, l, n),
                TensorId::Wk(l) => sec(3, l, n),
                TensorId::Wv(l) => sec(4, l, n),
                TensorId::Wo(l) => sec(5, l, n),
                TensorId::FfnNorm(l) => sec(6, l, n),
                TensorId::Gate(l) => sec(7, l, n),
                TensorId::Down(l) => sec(8, l, n),
                TensorId::Up(l) => sec(9, l, n),
                TensorId::OutNorm => data[10].clone(),
                TensorId::Output => data[13].clone(),
                t => unreachable!("{t:?} is not a tensor of llama2.c's layout"),
            };
            Ok(if id.class() == Class::Norm {
                Tensor::Norm(v)
            } else {
                Tensor::Matrix(QMatrix::from_f32(rows, cols, v))
            })
        })?;
        Ok(Model {
            name: file_stem(file),
            config,
            weights,
            tokenizer: None,
        })
    }
}

/// The hyper-parameters and whether the classifier is tied, checked before anything is sized.
fn header(bytes: &[u8], file: &str) -> Result<(Config, bool)> {
    if bytes.len() < HEADER {
        return Err(Error::format(
            file,
            "header",
            format!(
                "file is truncated: {} bytes, but a llama2.c header is {HEADER} bytes",
                bytes.len()
            ),
        ));
    }
    let h: Vec<i32> = bytes[..HEADER]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for (i, (&v, n)) in h.iter().zip(FIELDS).enumerate() {
        if v == 0 || (v < 0 && i != 5) || v == i32::MIN {
            return Err(Error::format(
                file,
                n,
                format!("{v} is not a valid value: not a llama2.c checkpoint, or corrupt"),
            ));
        }
    }
    let hint = |e: Error| match e {
        Error::Format { file, field, msg } => Error::Format {
            file,
            field,
            msg: format!("{msg} (read as a llama2.c checkpoint header: not one, or corrupt)"),
        },
        e => e,
    };
    let config = Config {
        arch: Arch::Llama,
        dim: h[0] as usize,
        hidden_dim: h[1] as usize,
        n_layers: h[2] as usize,
        n_heads: h[3] as usize,
        n_kv_heads: h[4] as usize,
        vocab_size: h[5].unsigned_abs() as usize,
        seq_len: h[6] as usize,
        rope_theta: 10000.0,
        rope_freqs: false,
        norm_eps: 1e-5,
        head_dim: None,
        rope_attn_factor: 1.0,
        rope_scale: 1.0,
        swa: None,
        attn_softcap: None,
        final_softcap: None,
    };
    config.validate(file).map_err(hint)?;
    Ok((config, h[5] > 0))
}

/// Sections in file order: (name, floats). Sizes are bounded by `validate` and computed in u64, so a
/// hostile header cannot overflow a 32-bit (wasm) usize.
fn sections(c: &Config, tied: bool) -> Vec<(&'static str, u64)> {
    let (d, hd, l) = (c.dim as u64, c.hidden_dim as u64, c.n_layers as u64);
    let (kv, hs) = (c.kv_dim() as u64, c.head_size() as u64);
    let (vocab, seq) = (c.vocab_size as u64, c.seq_len as u64);
    vec![
        ("token_embedding_table", vocab * d),
        ("rms_att_weight", l * d),
        ("wq", l * d * d),
        ("wk", l * d * kv),
        ("wv", l * d * kv),
        ("wo", l * d * d),
        ("rms_ffn_weight", l * d),
        ("w1", l * d * hd),
        ("w2", l * hd * d),
        ("w3", l * d * hd),
        ("rms_final_weight", d),
        ("freq_cis_real", seq * hs / 2),
        ("freq_cis_imag", seq * hs / 2),
        ("wcls", if tied { 0 } else { vocab * d }),
    ]
}

/// Every section must be in the file and nothing may follow the last.
fn check_size(sections: &[(&str, u64)], len: u64, file: &str) -> Result<()> {
    let total: u64 = sections.iter().map(|s| s.1).sum::<u64>() * 4 + HEADER as u64;
    let mut pos = HEADER as u64;
    for (name, n) in sections {
        if len - pos < n * 4 {
            return Err(Error::format(
                file,
                name,
                format!(
                    "file is truncated: {name} needs bytes {pos}..{} but the file has {len} (expected \
                     {total} bytes for this header)",
                    pos + n * 4,
                ),
            ));
        }
        pos += n * 4;
    }
    if pos != len {
        return Err(Error::format(
            file,
            "size",
            format!(
                "{} bytes remain after the last tensor (expected {total} bytes in all): the header \
                 contradicts the file size",
                len - pos
            ),
        ));
    }
    Ok(())
}
