//! Evaluation on top of any [`Decoder`]: perplexity by the stated protocol, and generation with greedy,
//! temperature and top-p sampling.

use crate::cpu::softmax;
use crate::tokenizer::Tokenizer;
use crate::{Decoder, Error, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use web_time::Instant;

/// Splits a text on lines holding `<|endoftext|>` and trims each story; empty stories are dropped.
pub fn split_stories(text: &str) -> Vec<String> {
    let mut stories = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.contains("<|endoftext|>") {
            stories.push(std::mem::take(&mut cur));
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    stories.push(cur);
    stories
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `[BOS] + encode(story)` per story, truncated to the context length.
pub fn story_tokens(tok: &Tokenizer, text: &str, seq_len: usize) -> Result<Vec<Vec<u32>>> {
    split_stories(text)
        .iter()
        .map(|s| {
            let mut t = tok.encode(s, true, false)?;
            t.truncate(seq_len);
            Ok(t)
        })
        .collect()
}

/// log(sum(exp(logits))) in f64, with the maximum subtracted first.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

/// Negative log-likelihood of `target` under `logits`: logsumexp(logits) - logits[target], in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub mean_nll: f64,
    pub tokens_scored: usize,
    pub sequences: usize,
    /// Wall time of the scoring, measured.
    pub seconds: f64,
    pub backend: String,
}

/// Positions at the end of each sequence that forced decoding runs as decode steps; the rest is
/// scored as a prompt runs ([`Decoder::score`]: batched passes on the GPU), so a comparison meets
/// both paths.
pub const DECODE_TAIL: usize = 16;

/// Runs forced decoding over every sequence, calling `f(logits, target)` at each scored position.
pub async fn forced(
    dec: &mut dyn Decoder,
    seqs: &[Vec<u32>],
    mut f: impl FnMut(&[f32], u32),
) -> Result<()> {
    // Scored in chunks, so a long text never holds more than a chunk's logits.
    const CHUNK: usize = 128;
    let v = dec.config().vocab_size;
    for seq in seqs {
        dec.reset();
        let n = seq.len().saturating_sub(1);
        let batched = n.saturating_sub(DECODE_TAIL);
        for p0 in (0..batched).step_by(CHUNK) {
            let p1 = (p0 + CHUNK).min(batched);
            let logits = dec.score(&seq[p0..p1], p0).await?;
            for (i, row) in logits.chunks_exact(v).enumerate() {
                f(row, seq[p0 + i + 1]);
            }
        }
        for pos in batched..n {
            f(dec.step(seq[pos], pos).await?, seq[pos + 1]);
        }
    }
    Ok(())
}

/// Scores every position after BOS of every sequence; PPL = exp(mean NLL over all scored tokens).
pub async fn perplexity(dec: &mut dyn Decoder, sequences: &[Vec<u32>]) -> Result<Perplexity> {
    let start = Instant::now();
    let (mut sum, mut n) = (0.0f64, 0usize);
    forced(dec, sequences, |logits, t| {
        sum += nll(logits, t);
        n += 1;
    })
    .await?;
    if n == 0 {
        return Err(Error::Invalid(
            "no tokens to score: the text has no story longer than one token".into(),
        ));
    }
    let mean = sum / n as f64;
    Ok(Perplexity {
        ppl: mean.exp(),
        mean_nll: mean,
        tokens_scored: n,
        sequences: sequences.len(),
        seconds: start.elapsed().as_secs_f64(),
        backend: dec.backend(),
    })
}

/// Picks the next token: argmax at temperature 0, else top-p sampling from softmax(logits / T).
pub struct Sampler {
    pub temperature: f32,
    pub top_p: f32,
    rng: rand_chacha::ChaCha8Rng,
    probs: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Sampler {
            temperature,
            top_p,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            probs: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut p: Vec<f32> = logits.iter().map(|l| l / self.temperature).collect();
        softmax(&mut p);
        let r: f32 = self.rng.gen();
        if self.top_p <= 0.0 || self.top_p >= 1.0 {
            let mut cdf = 0.0;
            for (i, &v) in p.iter().enumerate() {
                cdf += v;
                if r < cdf {
                    return i as u32;
                }
            }
            return (p.len() - 1) as u32;
        }
        // Nucleus: the smallest set of most likely tokens whose mass exceeds top_p.
        self.probs.clear();
        self.probs
            .extend(p.iter().enumerate().map(|(i, &v)| (v, i as u32)));
        self.probs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut mass = 0.0;
        let mut last = self.probs.len() - 1;
        for (i, (v, _)) in self.probs.iter().enumerate() {
            mass += v;
            if mass > self.top_p {
                last = i;
                break;
            }
        }
        let target = r * mass;
        let mut cdf = 0.0;
        for &(v, id) in &self.probs[..=last] {
            cdf += v;
            if target < cdf {
                return id;
            }
        }
        self.probs[last].1
    }
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// The prompt and the generated tokens, decoded.
    pub text: String,
    /// The generated tokens alone, decoded (a chat's reply).
    #[serde(default)]
    pub reply: String,
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    /// Measured: time to process the prompt and produce the first new token.
    pub ttft_ms: f64,
    /// Measured: mean time per generated token after the first.
    pub decode_ms_per_token: Option<f64>,
    pub backend: String,
}

async fn next_token(
    dec: &mut dyn Decoder,
    sampler: &mut Sampler,
    greedy: bool,
    t: u32,
    pos: usize,
) -> Result<u32> {
    if greedy {
        dec.step_argmax(t, pos).await
    } else {
        Ok(sampler.sample(dec.step(t, pos).await?))
    }
}

/// Feeds `[BOS] + encode(prompt)`, then generates up to `n` tokens, stopping at BOS, EOS or the context end.
pub async fn generate(
    dec: &mut dyn Decoder,
    tok: &Tokenizer,
    prompt: &str,
    n: usize,
    sampler: &mut Sampler,
) -> Result<Generation> {
    let ids = tok.encode(prompt, true, false)?;
    generate_ids(dec, tok, &ids, n, sampler, &[tok.bos, tok.eos]).await
}

/// A chat: `messages` in the vocabulary's chat format, then the assistant's reply, up to `n` tokens or
/// the end of its turn.
pub async fn chat(
    dec: &mut dyn Decoder,
    tok: &Tokenizer,
    messages: &[crate::tokenizer::chat::Message],
    n: usize,
    sampler: &mut Sampler,
) -> Result<Generation> {
    let ids = tok.encode_chat(messages)?;
    let mut stop = tok.end_of_turn();
    stop.push(tok.bos);
    generate_ids(dec, tok, &ids, n, sampler, &stop).await
}

/// Generates after `prompt_ids` until `n` tokens, a token of `stop` (not kept) or the context's end.
pub async fn generate_ids(
    dec: &mut dyn Decoder,
    tok: &Tokenizer,
    prompt_ids: &[u32],
    n: usize,
    sampler: &mut Sampler,
    stop: &[u32],
) -> Result<Generation> {
    dec.reset();
    let seq_len = dec.context_limit();
    if prompt_ids.is_empty() || prompt_ids.len() >= seq_len {
        return Err(Error::Invalid(format!(
            "the prompt is {} tokens, but the model's context is {seq_len} (and a prompt needs one)",
            prompt_ids.len()
        )));
    }
    let start = Instant::now();
    let greedy = sampler.temperature <= 0.0;
    let mut next = if greedy {
        dec.prefill_argmax(prompt_ids, 0).await?
    } else {
        sampler.sample(dec.prefill(prompt_ids, 0).await?)
    };
    let ttft = start.elapsed().as_secs_f64() * 1e3;
    let decode_start = Instant::now();
    let mut out = Vec::new();
    let mut pos = prompt_ids.len();
    while out.len() < n && !stop.contains(&next) {
        out.push(next);
        if out.len() == n || pos >= seq_len {
            break;
        }
        next = next_token(dec, sampler, greedy, next, pos).await?;
        pos += 1;
    }
    let steps = out.len().saturating_sub(1);
    let decode_ms = (steps > 0).then(|| decode_start.elapsed().as_secs_f64() * 1e3 / steps as f64);
    let mut all = prompt_ids.to_vec();
    all.extend(&out);
    // BOS is not text.
    let from = (all.first() == Some(&tok.bos)) as usize;
    Ok(Generation {
        text: tok.decode(&all[from..]),
        reply: tok.decode(&out),
        prompt_tokens: prompt_ids.len(),
        tokens: out,
        ttft_ms: ttft,
        decode_ms_per_token: decode_ms,
        backend: dec.backend(),
    })
}
