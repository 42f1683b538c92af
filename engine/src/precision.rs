//! Per-tensor weight precision: a default type (`--weights`), a block size (`--block`) and a policy of
//! rules by tensor class and layer range (`--precision`), applied to a loaded model; and the exact byte
//! accounting of the result.

use crate::error::{Error, Result};
use crate::model::{Class, Model, Plan, Tensor, TensorId, Weights};
use crate::quant::{check_finite, QMatrix, WType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Which tensors a rule matches: a class, or one matrix role of every layer by llama.cpp's name
/// (`attn_v`, `ffn_down`: what llama-quantize's mixes such as Q4_K_M give more bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    All,
    Attn,
    Ffn,
    Embed,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub target: Target,
    /// Half-open layer range; `None` matches every layer (and tensors outside layers).
    pub layers: Option<(usize, usize)>,
    pub ty: WType,
}

impl Target {
    /// The target a rule's left-hand side names (its layer range removed).
    pub fn parse(name: &str) -> Option<Target> {
        Some(match name {
            "all" => Target::All,
            "attn" => Target::Attn,
            "ffn" => Target::Ffn,
            "embed" => Target::Embed,
            "output" => Target::Output,
            "attn_q" => Target::AttnQ,
            "attn_k" => Target::AttnK,
            "attn_v" => Target::AttnV,
            "attn_output" => Target::AttnOutput,
            "ffn_gate" => Target::FfnGate,
            "ffn_up" => Target::FfnUp,
            "ffn_down" => Target::FfnDown,
            _ => return None,
        })
    }
}

impl Rule {
    fn matches(&self, id: TensorId) -> bool {
        let class_ok = match self.target {
            Target::All => true,
            Target::Attn => id.class() == Class::Attention,
            Target::Ffn => id.class() == Class::FeedForward,
            Target::Embed => id == TensorId::TokEmbd,
            Target::Output => id == TensorId::Output,
            Target::AttnQ => matches!(id, TensorId::Wq(_)),
            Target::AttnK => matches!(id, TensorId::Wk(_)),
            Target::AttnV => matches!(id, TensorId::Wv(_)),
            Target::AttnOutput => matches!(id, TensorId::Wo(_)),
            Target::FfnGate => matches!(id, TensorId::Gate(_)),
            Target::FfnUp => matches!(id, TensorId::Up(_)),
            Target::FfnDown => matches!(id, TensorId::Down(_)),
        };
        let layer_ok = match (self.layers, id.layer()) {
            (None, _) => true,
            (Some((a, b)), Some(l)) => l >= a && l < b,
            (Some(_), None) => false,
        };
        class_ok && layer_ok
    }
}

/// A precision policy: rules applied in order, later ones overriding earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The text it was parsed from, for reports.
    pub spec: String,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Parses a preset (`all-q4`, `attn-q8`, `f16`, `as-loaded`: no rule) or rules such as
    /// `attn=q8_0,ffn[0..2]=q4_0` or `all=q4_k,attn_v[0..4]=q6_k`.
    pub fn parse(spec: &str) -> Result<Policy> {
        let expanded = match spec {
            "as-loaded" => "",
            "all-q4" => "all=q4_0",
            "attn-q8" => "all=q4_0,attn=q8_0",
            "f16" => "all=f16",
            s => s,
        };
        let mut rules = Vec::new();
        for part in expanded.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |msg: &str| {
                Error::Invalid(format!(
                    "precision rule {part:?}: {msg} (expected CLASS[A..B]=TYPE with CLASS one of all, attn, \
                     ffn, embed, output or a matrix role: attn_q, attn_k, attn_v, attn_output, \
                     ffn_gate, ffn_up, ffn_down; or a preset: all-q4, attn-q8, f16, as-loaded)"
                ))
            };
            let (lhs, ty) = part.split_once('=').ok_or_else(|| bad("no '='"))?;
            let ty = WType::parse(ty.trim())?;
            let (class, layers) = match lhs.split_once('[') {
                None => (lhs.trim(), None),
                Some((c, range)) => {
                    let range = range.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
                    let (a, b) = range
                        .split_once("..")
                        .ok_or_else(|| bad("range needs '..'"))?;
                    let a: usize = a.trim().parse().map_err(|_| bad("bad range start"))?;
                    let b: usize = b.trim().parse().map_err(|_| bad("bad range end"))?;
                    if a >= b {
                        return Err(bad("empty layer range"));
                    }
                    (c.trim(), Some((a, b)))
                }
            };
            let target = Target::parse(class).ok_or_else(|| bad("unknown tensor class"))?;
            if layers.is_some() && matches!(target, Target::Embed | Target::Output) {
                return Err(bad("embed and output have no layers"));
            }
            rules.push(Rule { target, layers, ty });
        }
        Ok(Policy {
            spec: spec.to_string(),
            rules,
        })
    }

    pub fn type_for(&self, id: TensorId) -> Option<WType> {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matches(id))
            .map(|r| r.ty)
    }
}

/// How to store a model's weight matrices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightConfig {
    /// Type for matrices no rule matches; `None` keeps each as loaded.
    pub default: Option<WType>,
    pub block: usize,
    pub policy: Policy,
}

impl Default for WeightConfig {
    fn default() -> Self {
        WeightConfig {
            default: None,
            block: 32,
            policy: Policy::default(),
        }
    }
}

pub const BLOCK_SIZES: [usize; 4] = [32, 64, 128, 256];

impl WeightConfig {
    pub fn validate(&self) -> Result<()> {
        if !BLOCK_SIZES.contains(&self.block) {
            return Err(Error::Invalid(format!(
                "block size {} is not supported (expected one of {BLOCK_SIZES:?})",
                self.block
            )));
        }
        Ok(())
    }

    /// The type `cfg` asks for `id`, if any (a rule, else the default).
    pub fn type_for(&self, id: TensorId) -> Option<WType> {
        self.policy.type_for(id).or(self.default)
    }

    /// Whether a tied classifier gets its own matrix: the output is asked for another type than the
    /// embedding.
    pub fn unties(&self) -> bool {
        let (e, o) = (
            self.type_for(TensorId::TokEmbd),
            self.type_for(TensorId::Output),
        );
        o.is_some() && o != e
    }

    /// The (type, block) matrix `id` of shape `m` ends up with, the fallback to f16 included, without
    /// quantizing anything.
    pub fn target(&self, id: TensorId, m: &QMatrix) -> (WType, usize) {
        self.target_of(id, m.ty, m.block, m.cols)
    }

    /// [`WeightConfig::target`] from a source matrix's type, block and row length alone.
    pub fn target_of(&self, id: TensorId, ty: WType, block: usize, cols: usize) -> (WType, usize) {
        match self.type_for(id) {
            None => (ty, block),
            Some(t) if !cols.is_multiple_of(t.block_for(self.block)) => (WType::F16, 1),
            Some(t) => (t, t.block_for(self.block)),
        }
    }

    pub fn is_identity(&self) -> bool {
        self.default.is_none() && self.policy.rules.is_empty()
    }

    /// A short label such as `q4_0/b32 attn-q8`.
    pub fn label(&self) -> String {
        let mut s = self
            .default
            .map_or("as-loaded".to_string(), |t| t.name().to_string());
        if self.default.is_some_and(WType::is_quantized) || !self.policy.rules.is_empty() {
            s.push_str(&format!("/b{}", self.block));
        }
        if !self.policy.spec.is_empty() {
            s.push(' ');
            s.push_str(&self.policy.spec);
        }
        s
    }
}

/// A tensor that could not take its requested type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    pub tensor: String,
    pub requested: WType,
    pub used: WType,
    pub reason: String,
}

/// A tensor re-stored (none where it stays as it is) and the fallback taken, if any.
type Restored = Result<(Option<QMatrix>, Option<Fallback>)>;

/// The matrix `id` re-stored as `cfg` asks (`None` when it already is), and the fallback if its rows do
/// not fit the block size.
pub fn restore(
    id: TensorId,
    m: &QMatrix,
    cfg: &WeightConfig,
) -> Result<(Option<QMatrix>, Option<Fallback>)> {
    let Some(mut ty) = cfg.type_for(id) else {
        return Ok((None, None));
    };
    let mut fallback = None;
    if !m.cols.is_multiple_of(ty.block_for(cfg.block)) {
        fallback = Some(Fallback {
            tensor: id.gguf_name(),
            requested: ty,
            used: WType::F16,
            reason: format!(
                "rows of {} values are not a whole number of {}-element blocks",
                m.cols,
                ty.block_for(cfg.block)
            ),
        });
        ty = WType::F16;
    }
    let block = ty.block_for(cfg.block);
    if m.ty == ty && m.block == block {
        return Ok((None, fallback));
    }
    let data = m.to_f32();
    check_finite(&id.gguf_name(), &data)?;
    Ok((
        Some(QMatrix::quantize(ty, cfg.block, m.rows, m.cols, &data)),
        fallback,
    ))
}

impl Model {
    /// Re-stores every matrix as `cfg` says, from its current values. A quantized type whose block does
    /// not divide a row falls back to f16 (recorded). A tied classifier is untied when the output and the
    /// embedding are asked for different types. In place; [`Model::with_weights`] leaves the model
    /// as it is (what benchmarks and the sweep use, trying several configurations on one load).
    pub fn apply_weights(&mut self, cfg: &WeightConfig) -> Result<Vec<Fallback>> {
        let unties = self.tied() && cfg.unties();
        let (restored, fallbacks) = self.restored(cfg, self.tied() && !unties)?;
        if unties {
            self.weights.untie();
        }
        for (id, q) in restored {
            if let Some(q) = q {
                *self.weights.matrix_mut(id) = q;
            }
        }
        Ok(fallbacks)
    }

    /// This model with `cfg` applied, leaving it as it is: the tensors `cfg` changes are made from
    /// it and only those it leaves are copied (a benchmark copied the whole model before applying
    /// each configuration, at 7B 13 GB of f16 a configuration).
    pub fn with_weights(&self, cfg: &WeightConfig) -> Result<(Model, Vec<Fallback>)> {
        let tied = self.tied() && !cfg.unties();
        let (restored, fallbacks) = self.restored(cfg, tied)?;
        let mut made: HashMap<TensorId, QMatrix> = restored
            .into_iter()
            .filter_map(|(id, q)| Some((id, q?)))
            .collect();
        let weights = Weights::build(&self.config, tied, |id| {
            Ok(match made.remove(&id) {
                Some(q) => Tensor::Matrix(q),
                None => self.weights.tensor(id),
            })
        })?;
        let m = Model {
            name: self.name.clone(),
            config: self.config.clone(),
            weights,
            tokenizer: self.tokenizer.clone(),
        };
        Ok((m, fallbacks))
    }

    /// Each matrix of the model as `cfg` has it (`tied`: whether the classifier stays the
    /// embedding): the new matrix, or none where it stays as it is; and the fallbacks taken.
    #[allow(clippy::type_complexity)]
    fn restored(
        &self,
        cfg: &WeightConfig,
        tied: bool,
    ) -> Result<(Vec<(TensorId, Option<QMatrix>)>, Vec<Fallback>)> {
        cfg.validate()?;
        let ids: Vec<TensorId> = (TensorId::all(&self.config, tied).into_iter())
            .filter(|id| id.class() != Class::Norm)
            .collect();
        let mut fallbacks = Vec::new();
        let mut out = Vec::with_capacity(ids.len());
        for (id, r) in ids.iter().zip(self.restore_all(&ids, cfg)) {
            let (q, fb) = r?;
            fallbacks.extend(fb);
            out.push((*id, q));
        }
        Ok((out, fallbacks))
    }

    /// [`restore`] for each of `ids`, in order, the tensors shared out over the machine's threads
    /// largest first (one in wasm): each tensor is quantized alone, so the result is the same on
    /// any number of threads. On one thread, a 7B model's copy and q4_0 took 94-103 s of each
    /// benchmark run on the 16-core H200 host.
    fn restore_all(&self, ids: &[TensorId], cfg: &WeightConfig) -> Vec<Restored> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.weights.matrix(ids[i]).n_bytes()));
        crate::par::map_indexed(&order, |i| {
            restore(ids[i], self.weights.matrix(ids[i]), cfg)
        })
    }

    /// Exact bytes of the weights as stored, by class and by tensor.
    pub fn accounting(&self) -> Accounting {
        Plan::of(self).accounting()
    }
}

impl Plan {
    /// Exact bytes of the weights this plan stores, by class and by tensor: what a backend holds,
    /// known before (or without) the model in memory.
    pub fn accounting(&self) -> Accounting {
        let c = &self.config;
        let mut acc = Accounting::default();
        let types: std::collections::HashMap<TensorId, (WType, usize)> = self
            .matrices
            .iter()
            .map(|&(id, ty, block)| (id, (ty, block)))
            .collect();
        for id in TensorId::all(c, !self.own_output) {
            let (rows, cols) = id.shape(c);
            let n = rows * cols;
            let (ty, block) = match types.get(&id) {
                Some(&t) => t,
                None => (WType::F32, 1),
            };
            let bytes = ty.stored_bytes(rows, cols, block);
            // Norms stay f32 in the f16 baseline too; matrices take 2 bytes per weight there.
            let f16_bytes = if id.class() == Class::Norm {
                n * 4
            } else {
                n * 2
            };
            let e = acc.by_class.entry(id.class()).or_default();
            e.bytes += bytes;
            e.weights += n;
            acc.total_bytes += bytes;
            acc.total_weights += n;
            acc.f16_bytes += f16_bytes;
            acc.tensors.push(TensorBytes {
                name: id.gguf_name(),
                ty,
                block,
                weights: n,
                bytes,
            });
        }
        acc.bits_per_weight = acc.total_bytes as f64 * 8.0 / acc.total_weights as f64;
        acc.reduction_vs_f16 = 1.0 - acc.total_bytes as f64 / acc.f16_bytes as f64;
        for v in acc.by_class.values_mut() {
            v.bits_per_weight = v.bytes as f64 * 8.0 / v.weights as f64;
        }
        acc
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassBytes {
    pub bytes: usize,
    pub weights: usize,
    pub bits_per_weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorBytes {
    pub name: String,
    pub ty: WType,
    pub block: usize,
    pub weights: usize,
    pub bytes: usize,
}

/// Weight memory as stored: every byte of codes, scales, mins and norms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    pub by_class: BTreeMap<Class, ClassBytes>,
    pub tensors: Vec<TensorBytes>,
    pub total_bytes: usize,
    pub total_weights: usize,
    pub bits_per_weight: f64,
    /// The same tensors with every matrix at f16 (norms f32), in bytes.
    pub f16_bytes: usize,
    /// `1 - total_bytes / f16_bytes`, from the byte counts above.
    pub reduction_vs_f16: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_presets_and_ranges() {
        let p = Policy::parse("attn-q8").unwrap();
        assert_eq!(p.type_for(TensorId::Wq(3)), Some(WType::Q8_0));
        assert_eq!(p.type_for(TensorId::Up(3)), Some(WType::Q4_0));
        assert_eq!(p.type_for(TensorId::TokEmbd), Some(WType::Q4_0));
        let p = Policy::parse("ffn=q4_0, ffn[0..2]=q8_0,embed=f16").unwrap();
        assert_eq!(p.type_for(TensorId::Down(1)), Some(WType::Q8_0));
        assert_eq!(p.type_for(TensorId::Down(2)), Some(WType::Q4_0));
        assert_eq!(p.type_for(TensorId::Wq(0)), None);
        assert_eq!(p.type_for(TensorId::TokEmbd), Some(WType::F16));
        // One role of some layers, as llama-quantize's mixes give attn_v and ffn_down more bits.
        let p = Policy::parse("all=q4_k,attn_v[1..3]=q6_k,ffn_down=q6_k").unwrap();
        assert_eq!(p.type_for(TensorId::Wv(1)), Some(WType::Q6_K));
        assert_eq!(p.type_for(TensorId::Wv(3)), Some(WType::Q4_K));
        assert_eq!(p.type_for(TensorId::Wk(1)), Some(WType::Q4_K));
        assert_eq!(p.type_for(TensorId::Down(0)), Some(WType::Q6_K));
        assert_eq!(p.type_for(TensorId::Up(0)), Some(WType::Q4_K));
        type Role = fn(usize) -> TensorId;
        let roles: [(&str, Role); 5] = [
            ("attn_q", TensorId::Wq),
            ("attn_k", TensorId::Wk),
            ("attn_output", TensorId::Wo),
            ("ffn_gate", TensorId::Gate),
            ("ffn_up", TensorId::Up),
        ];
        for (role, id) in roles {
            let p = Policy::parse(&format!("{role}=q8_0")).unwrap();
            let hits: Vec<_> = TensorId::all(&crate::Model::builtin().config, false)
                .into_iter()
                .filter(|&t| p.type_for(t).is_some())
                .collect();
            assert_eq!(hits, vec![id(0), id(1)], "{role}");
        }
        for bad in [
            "attn",
            "attn=q3",
            "mlp=q4_0",
            "ffn[2..1]=q4_0",
            "embed[0..1]=q8_0",
            "ffn[0..x]=f16",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn q4_0_is_4_5_bits_and_falls_back_on_ragged_rows() {
        let mut m = Model::builtin();
        let cfg = WeightConfig {
            default: Some(WType::Q4_0),
            ..Default::default()
        };
        assert!(m.apply_weights(&cfg).unwrap().is_empty());
        let a = m.accounting();
        let attn = &a.by_class[&Class::Attention];
        assert_eq!(attn.bits_per_weight, 4.5);
        assert_eq!(attn.bytes, attn.weights / 32 * 18);
        // A 40-wide matrix is not a whole number of 32-blocks.
        let mut m = Model::builtin();
        *m.weights.matrix_mut(TensorId::Down(0)) = QMatrix::from_f32(8, 40, vec![0.5; 320]);
        let fb = m.apply_weights(&cfg).unwrap();
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0].tensor, "blk.0.ffn_down.weight");
        assert_eq!(m.weights.matrix(TensorId::Down(0)).ty, WType::F16);
    }

    #[test]
    fn synthetic_with_equals_synthetic_then_apply() {
        let cfg = WeightConfig {
            default: Some(WType::Q4_0),
            block: 64,
            policy: Policy::parse("attn-q8").unwrap(),
        };
        let (direct, fb) = Model::synthetic_with(crate::Preset::Tiny, 5, &cfg).unwrap();
        let mut m = Model::synthetic(crate::Preset::Tiny, 5);
        assert_eq!(m.apply_weights(&cfg).unwrap(), fb);
        for id in TensorId::all(&m.config, false) {
            if id.class() == Class::Norm {
                assert_eq!(direct.weights.norm(id), m.weights.norm(id));
            } else {
                assert_eq!(direct.weights.matrix(id), m.weights.matrix(id), "{id:?}");
            }
        }
    }

    #[test]
    fn nan_weights_are_rejected_by_name() {
        let mut m = Model::builtin();
        let mut v = m.weights.matrix(TensorId::Wk(1)).to_f32();
        v[7] = f32::NAN;
        let (r, c) = (
            m.weights.matrix(TensorId::Wk(1)).rows,
            m.weights.matrix(TensorId::Wk(1)).cols,
        );
        *m.weights.matrix_mut(TensorId::Wk(1)) = QMatrix::from_f32(r, c, v);
        let cfg = WeightConfig {
            default: Some(WType::Q8_0),
            ..Default::default()
        };
        let e = m.apply_weights(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("blk.1.attn_k.weight") && e.contains("NaN"),
            "{e}"
        );
    }

    /// A synthetic model 192 wide: rows that do not hold a 256-element K-quant block fall back to f16.
    fn narrow_model() -> Model {
        let c = crate::Config {
            dim: 192,
            hidden_dim: 384,
            ..crate::Preset::Tiny.config()
        };
        Model::synthetic_config(c, 3)
    }

    /// q4_0 but where `policy` says otherwise.
    fn q4_0_but(policy: &str) -> WeightConfig {
        WeightConfig {
            default: Some(WType::Q4_0),
            policy: Policy::parse(policy).unwrap(),
            ..Default::default()
        }
    }

    /// Tensors quantized on many threads (`Model::apply_weights`) come out as each quantized alone
    /// on one: the same words, scales and types, tensor by tensor, in a mixed policy (q8_0
    /// attention, q4_0 elsewhere, a q6_K classifier, a q4_K embedding) with fallbacks.
    #[test]
    fn threads_quantize_as_one_thread_does() {
        let base = narrow_model();
        let cfg = q4_0_but("attn=q8_0,output=q6_k,embed=q4_k");
        let mut m = base.clone();
        let fallbacks = m.apply_weights(&cfg).unwrap();
        let mut alone = Vec::new();
        for id in TensorId::all(&base.config, base.tied()) {
            if id.class() == Class::Norm {
                continue;
            }
            let (q, fb) = restore(id, base.weights.matrix(id), &cfg).unwrap();
            alone.extend(fb);
            let want = q.unwrap_or_else(|| base.weights.matrix(id).clone());
            assert!(m.weights.matrix(id) == &want, "{id:?} differs");
        }
        assert_eq!(format!("{fallbacks:?}"), format!("{alone:?}"));
        assert!(!fallbacks.is_empty(), "no fallback exercised");
    }

    /// `with_weights` gives what copying the model and applying the configuration gives, tensor by
    /// tensor (norms included), and leaves the model as it was: a tied classifier kept, untied (the
    /// output asked for another type), and the fallbacks the same.
    #[test]
    fn with_weights_is_a_copy_with_the_configuration_applied() {
        let untied = narrow_model();
        // The same tensors with the classifier reading the embedding.
        let weights = Weights::build(&untied.config, true, |id| Ok(untied.weights.tensor(id)));
        let base = Model {
            weights: weights.unwrap(),
            ..untied
        };
        assert!(base.tied());
        let before = base.clone();
        for policy in ["attn=q8_0", "attn=q8_0,output=q6_k,embed=q4_k"] {
            let cfg = q4_0_but(policy);
            let mut want = base.clone();
            let want_fb = want.apply_weights(&cfg).unwrap();
            let (got, got_fb) = base.with_weights(&cfg).unwrap();
            assert_eq!(format!("{got_fb:?}"), format!("{want_fb:?}"), "{policy}");
            assert_eq!(got.tied(), want.tied(), "{policy}");
            assert_eq!(got.tied(), !cfg.unties(), "{policy}");
            for id in TensorId::all(&base.config, want.tied()) {
                let t = format!("{policy} {id:?}");
                assert!(
                    got.weights.tensor(id) == want.weights.tensor(id),
                    "{t} differs"
                );
            }
            for id in TensorId::all(&base.config, true) {
                assert!(
                    base.weights.tensor(id) == before.weights.tensor(id),
                    "{id:?} changed"
                );
            }
            assert_eq!(got.name, base.name);
        }
    }
}
