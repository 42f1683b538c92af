//! What a configuration costs in accuracy and saves in memory: `compare` (forced decoding of the same
//! tokens under the f32 reference and a candidate) and `sweep` (a grid of candidates), all measured.

use crate::cpu::CpuDecoder;
use crate::error::{Error, Result};
use crate::eval;
use crate::kv::{KvConfig, KvType};
use crate::model::{Config, Model};
use crate::precision::{Fallback, Policy, WeightConfig};
use crate::quant::WType;
use crate::Decoder;
use serde::{Deserialize, Serialize};

/// Weights and KV cache: everything that makes a candidate differ from the reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub weights: WeightConfig,
    pub kv: KvConfig,
}

impl RunConfig {
    /// Parses `weights=q4_0,block=32,precision=attn-q8,kv=q8_0,kv-k=..,kv-v=..,kv-group=32,window=W,sinks=S`.
    /// Precision rules may follow `precision=` directly (`precision=attn=q8_0,ffn=q4_0`): any `CLASS=TYPE`
    /// item whose key is a tensor class belongs to the policy.
    pub fn parse(spec: &str) -> Result<RunConfig> {
        let mut cfg = RunConfig::default();
        let mut policy: Vec<String> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                Error::Invalid(format!("candidate item {item:?} is not KEY=VALUE"))
            })?;
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| Error::Invalid(format!("{k}={v}: not a whole number")))
            };
            match k {
                "weights" => cfg.weights.default = Some(WType::parse(v)?),
                "block" => cfg.weights.block = num(v)?,
                "precision" => policy.push(v.to_string()),
                "kv" => {
                    cfg.kv.k = KvType::parse(v)?;
                    cfg.kv.v = cfg.kv.k;
                }
                "kv-k" => cfg.kv.k = KvType::parse(v)?,
                "kv-v" => cfg.kv.v = KvType::parse(v)?,
                "kv-group" => cfg.kv.group = num(v)?,
                "window" => cfg.kv.window = Some(num(v)?),
                "ctx" => cfg.kv.ctx = Some(num(v)?),
                "sinks" => cfg.kv.sinks = num(v)?,
                c if crate::precision::Target::parse(c).is_some() || c.contains('[') => {
                    policy.push(item.to_string())
                }
                _ => {
                    return Err(Error::Invalid(format!(
                        "unknown candidate key {k:?} (expected weights, block, precision, kv, kv-k, kv-v, \
                         kv-group, window, sinks, ctx)"
                    )))
                }
            }
        }
        if !policy.is_empty() {
            cfg.weights.policy = Policy::parse(&policy.join(","))?;
        }
        cfg.weights.validate()?;
        Ok(cfg)
    }

    pub fn label(&self) -> String {
        format!("weights {} | kv {}", self.weights.label(), self.kv.label())
    }
}

/// A copy of `base` with the candidate's weights applied.
pub fn prepare(base: &Model, cfg: &RunConfig) -> Result<(Model, Vec<Fallback>)> {
    let (m, fb) = base.with_weights(&cfg.weights)?;
    cfg.kv.validate(&m.config)?;
    Ok((m, fb))
}

/// The reference's log-probabilities at every scored position, kept so many candidates compare
/// against one reference run.
pub struct Reference {
    /// Per scored position: the reference logits.
    logits: Vec<Vec<f32>>,
    targets: Vec<u32>,
    pub perplexity: eval::Perplexity,
}

impl Reference {
    /// Positions scored.
    pub fn tokens(&self) -> usize {
        self.targets.len()
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let lse = eval::log_sum_exp(logits);
    logits.iter().map(|&v| v as f64 - lse).collect()
}

impl Reference {
    pub async fn run(dec: &mut dyn Decoder, seqs: &[Vec<u32>]) -> Result<Reference> {
        let start = web_time::Instant::now();
        let (mut logits, mut targets) = (Vec::new(), Vec::new());
        let mut nll = 0.0;
        eval::forced(dec, seqs, |l, t| {
            nll += eval::nll(l, t);
            logits.push(l.to_vec());
            targets.push(t);
        })
        .await?;
        if targets.is_empty() {
            return Err(Error::Invalid("no tokens to score".into()));
        }
        let mean = nll / targets.len() as f64;
        let perplexity = eval::Perplexity {
            ppl: mean.exp(),
            mean_nll: mean,
            tokens_scored: targets.len(),
            sequences: seqs.len(),
            seconds: start.elapsed().as_secs_f64(),
            backend: dec.backend(),
        };
        Ok(Reference {
            logits,
            targets,
            perplexity,
        })
    }
}

impl Reference {
    /// The largest |logit| the reference produced, the scale tolerances are stated against.
    pub fn max_abs_logit(&self) -> f64 {
        self.logits
            .iter()
            .flatten()
            .fold(0.0f64, |m, &v| m.max(v.abs() as f64))
    }

    /// A compact file the browser fetches: `NREF`, version, positions, vocabulary, the targets as u32,
    /// the logits as f32 (all little-endian), then the perplexity as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let vocab = self.logits.first().map_or(0, Vec::len);
        let mut b = Vec::with_capacity(16 + self.targets.len() * (4 + 4 * vocab));
        b.extend_from_slice(b"NREF");
        for v in [1u32, self.targets.len() as u32, vocab as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for t in &self.targets {
            b.extend_from_slice(&t.to_le_bytes());
        }
        for l in &self.logits {
            b.extend_from_slice(bytemuck::cast_slice(l));
        }
        b.extend_from_slice(&serde_json::to_vec(&self.perplexity).unwrap_or_default());
        b
    }

    pub fn from_bytes(b: &[u8], file: &str) -> Result<Reference> {
        let bad = |field: &str, msg: String| Error::Format {
            file: file.into(),
            field: field.into(),
            msg,
        };
        if b.len() < 16 || &b[..4] != b"NREF" {
            return Err(bad("magic", "not a nibble reference file".into()));
        }
        let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as usize;
        if word(1) != 1 {
            return Err(bad("version", format!("{} (this build reads 1)", word(1))));
        }
        let (n, vocab) = (word(2), word(3));
        let body = n
            .checked_mul(4 + 4 * vocab)
            .filter(|&x| x <= b.len() - 16)
            .ok_or_else(|| {
                bad(
                    "logits",
                    format!(
                        "{n} positions of {vocab} logits do not fit in {} bytes",
                        b.len()
                    ),
                )
            })?;
        let targets = b[16..16 + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let logits = b[16 + 4 * n..16 + body]
            .chunks_exact(4 * vocab.max(1))
            .map(|row| {
                row.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            })
            .collect();
        let perplexity = serde_json::from_slice(&b[16 + body..])
            .map_err(|e| bad("perplexity", e.to_string()))?;
        Ok(Reference {
            logits,
            targets,
            perplexity,
        })
    }
}

/// How far a candidate's predictions are from the reference's on the same tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub tokens: usize,
    /// KL(reference || candidate) in nats, mean and 99th percentile over positions.
    pub mean_kl: f64,
    pub p99_kl: f64,
    /// Fraction of positions where both pick the same most likely token.
    pub top1_agreement: f64,
    /// Where they do not: the reference's margin between its pick and the candidate's (a pair of
    /// logits closer than the error a path may carry can legitimately swap). Absent in older results.
    #[serde(default)]
    pub top1_flip_margins: Vec<f64>,
    pub max_abs_dlogit: f64,
    pub ppl_reference: f64,
    pub ppl: f64,
    /// `ppl - ppl_reference`.
    pub delta_ppl: f64,
    pub backend: String,
}

/// Scores the same sequences with `cand` and measures its divergence from `reference`.
pub async fn compare(
    reference: &Reference,
    cand: &mut dyn Decoder,
    seqs: &[Vec<u32>],
) -> Result<Divergence> {
    let (mut kls, mut agree, mut max_d, mut nll) = (Vec::new(), 0usize, 0.0f64, 0.0f64);
    let mut flips = Vec::new();
    let mut i = 0;
    // Scored against a reference of other tokens or another vocabulary, the figures would mean
    // nothing: the first such position is the error.
    let mut mismatch: Option<String> = None;
    eval::forced(cand, seqs, |l, t| {
        let Some(r) = reference.logits.get(i) else {
            i += 1;
            return;
        };
        if mismatch.is_none() && (r.len() != l.len() || reference.targets[i] != t) {
            mismatch = Some(format!(
                "position {i}: the candidate scores token {t} over {} logits, the reference token {} \
                 over {}",
                l.len(),
                reference.targets[i],
                r.len()
            ));
        }
        let (rp, cp) = (log_softmax(r), log_softmax(l));
        kls.push(
            rp.iter()
                .zip(&cp)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>()
                .max(0.0),
        );
        let (ra, ca) = (eval::argmax(r) as usize, eval::argmax(l) as usize);
        if ra == ca {
            agree += 1;
        } else {
            // Another vocabulary (already an error above) has no margin to give.
            flips.push(r.get(ca).map_or(f64::INFINITY, |&c| (r[ra] - c) as f64));
        }
        for (a, b) in r.iter().zip(l) {
            max_d = max_d.max((a - b).abs() as f64);
        }
        nll -= cp.get(t as usize).copied().unwrap_or(f64::NAN);
        i += 1;
    })
    .await?;
    if let Some(m) = mismatch {
        return Err(Error::Invalid(format!(
            "the candidate does not score what the reference scored: {m}"
        )));
    }
    if i != reference.targets.len() {
        return Err(Error::Invalid(format!(
            "candidate scored {i} positions, reference {}",
            reference.targets.len()
        )));
    }
    let n = kls.len();
    let mut sorted = kls.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    let ppl = (nll / n as f64).exp();
    Ok(Divergence {
        tokens: n,
        mean_kl: kls.iter().sum::<f64>() / n as f64,
        p99_kl: p99,
        top1_agreement: agree as f64 / n as f64,
        top1_flip_margins: flips,
        max_abs_dlogit: max_d,
        ppl_reference: reference.perplexity.ppl,
        ppl,
        delta_ppl: ppl - reference.perplexity.ppl,
        backend: cand.backend(),
    })
}

/// One configuration of a sweep: what it stores and what it costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRow {
    pub config: String,
    pub weights: String,
    pub block: usize,
    pub precision: String,
    pub kv_k: KvType,
    pub kv_v: KvType,
    pub kv_group: usize,
    pub window: Option<usize>,
    pub sinks: usize,
    pub weight_bytes: usize,
    pub bits_per_weight: f64,
    pub reduction_vs_f16: f64,
    pub fallbacks: Vec<String>,
    pub kv_bytes_per_token: f64,
    pub kv_budget_bytes: usize,
    /// Tokens of context whose KV cache fits in the budget; `None` when a window bounds it below.
    pub context_in_budget: Option<usize>,
    /// Measured KV bytes held at the end of the longest sequence.
    pub kv_bytes_measured: usize,
    #[serde(flatten)]
    pub divergence: Divergence,
}

/// Runs each configuration on `backend` against one f32 CPU reference.
pub async fn sweep(
    base: &Model,
    seqs: &[Vec<u32>],
    grid: &[RunConfig],
    kv_budget: usize,
    backend: crate::Backend<'_>,
    mut progress: impl FnMut(usize, &SweepRow),
) -> Result<Vec<SweepRow>> {
    let reference = Reference::run(&mut CpuDecoder::new(base), seqs).await?;
    let mut rows = Vec::with_capacity(grid.len());
    for (i, cfg) in grid.iter().enumerate() {
        let (m, fallbacks) = prepare(base, cfg)?;
        let acc = m.accounting();
        let mut dec = backend.decoder(&m, cfg.kv.clone())?;
        let divergence = compare(&reference, dec.as_mut(), seqs).await?;
        let c = &m.config;
        let row = SweepRow {
            config: cfg.label(),
            weights: cfg
                .weights
                .default
                .map_or("as-loaded".into(), |t| t.name().to_string()),
            block: cfg.weights.block,
            precision: cfg.weights.policy.spec.clone(),
            kv_k: cfg.kv.k,
            kv_v: cfg.kv.v,
            kv_group: cfg.kv.group,
            window: cfg.kv.window,
            sinks: cfg.kv.sinks,
            weight_bytes: acc.total_bytes,
            bits_per_weight: acc.bits_per_weight,
            reduction_vs_f16: acc.reduction_vs_f16,
            fallbacks: fallbacks.iter().map(|f| f.tensor.clone()).collect(),
            kv_bytes_per_token: cfg.kv.bytes_per_token(c),
            kv_budget_bytes: kv_budget,
            context_in_budget: cfg.kv.tokens_in_budget(c, kv_budget),
            kv_bytes_measured: dec.kv_bytes(),
            divergence,
        };
        progress(i, &row);
        rows.push(row);
    }
    Ok(rows)
}

/// The default grid: weight types × block sizes × policies with an f32 cache, then every KV type with
/// f32 weights, a sliding window, and two combined configurations.
pub fn default_grid(window: usize, c: &Config) -> Vec<RunConfig> {
    let mut grid = Vec::new();
    let w = |ty: Option<WType>,
             block: usize,
             policy: &str,
             k: KvType,
             v: KvType,
             window: Option<usize>| RunConfig {
        weights: WeightConfig {
            default: ty,
            block,
            policy: Policy::parse(policy).expect("built-in policy"),
        },
        kv: KvConfig {
            k,
            v,
            group: 32,
            window,
            sinks: if window.is_some() { 4 } else { 0 },
            ctx: None,
        },
    };
    let f32 = KvType::F32;
    grid.push(w(Some(WType::F16), 32, "", f32, f32, None));
    for ty in [WType::Q8_0, WType::Q4_0, WType::Q4_1] {
        for block in crate::precision::BLOCK_SIZES {
            grid.push(w(Some(ty), block, "", f32, f32, None));
        }
    }
    grid.push(w(Some(WType::Q4_0), 32, "attn-q8", f32, f32, None));
    for kv in [KvType::F16, KvType::Q8_0, KvType::Q4_0, KvType::Kivi4] {
        grid.push(w(None, 32, "", kv, kv, None));
    }
    // A model whose layers attend windows of their own takes no KV window (`KvConfig::validate`).
    if c.swa.is_none() {
        grid.push(w(None, 32, "", KvType::F16, KvType::F16, Some(window)));
    }
    grid.push(w(
        Some(WType::Q4_0),
        32,
        "",
        KvType::Q8_0,
        KvType::Q8_0,
        None,
    ));
    grid.push(w(
        Some(WType::Q4_0),
        32,
        "attn-q8",
        KvType::Kivi4,
        KvType::Kivi4,
        None,
    ));
    grid
}

/// Parses sizes such as `64MiB`, `1.5GB`, `4096`.
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{s:?} is not a size (e.g. 64MiB)")))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return Err(Error::Invalid(format!("{s:?}: unknown unit {unit:?}"))),
    };
    Ok((n * mult) as usize)
}

/// "weights=q4_0" → "q4_0"; the empty spec is the model as loaded.
pub fn label(spec: &str) -> String {
    let s = spec.trim();
    if s.is_empty() {
        return "as-loaded".into();
    }
    s.strip_prefix("weights=")
        .filter(|r| !r.contains(','))
        .or_else(|| s.strip_prefix("precision="))
        .unwrap_or(s)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_strings() {
        let c = RunConfig::parse("weights=q4_0,block=64,kv=q8_0").unwrap();
        assert_eq!(c.weights.default, Some(WType::Q4_0));
        assert_eq!(c.weights.block, 64);
        assert_eq!((c.kv.k, c.kv.v), (KvType::Q8_0, KvType::Q8_0));
        let c =
            RunConfig::parse("precision=attn=q8_0,ffn=q4_0,kv-k=kivi4,kv-v=q4_0,window=64,sinks=4")
                .unwrap();
        assert_eq!(c.weights.policy.rules.len(), 2);
        assert_eq!(
            (c.kv.k, c.kv.v, c.kv.window),
            (KvType::Kivi4, KvType::Q4_0, Some(64))
        );
        // A role's rule after the policy's first, as a Q4_K_M-like mix is written.
        let c = RunConfig::parse("precision=all=q4_k,attn_v[0..1]=q6_k,ffn_down=q6_k").unwrap();
        assert_eq!(c.weights.policy.rules.len(), 3);
        assert_eq!(
            c.weights.type_for(crate::model::TensorId::Wv(0)),
            Some(WType::Q6_K)
        );
        assert!(RunConfig::parse("weights=q4_0,block=48").is_err());
        assert!(RunConfig::parse("colour=blue").is_err());
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5 KiB").unwrap(), 1536);
    }
}
