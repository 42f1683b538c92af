//! One load path for every caller (the CLI, the page's `load`, the reload scenario): the model streams
//! through the component cache into a sink the backend chooses. The CPU computes from a [`Model`], so
//! its sink assembles one; a GPU uploads each tensor as it arrives and no host copy of the model is
//! ever whole.

use crate::cache::{self, LoadReport, Source, Store};
use crate::fast::{FastDecoder, FastOptions};
use crate::gpu::{Gpu, GpuDecoder, GpuSink, GpuWeights};
use crate::kv::KvConfig;
use crate::model::{Model, Plan};
use crate::precision::{Accounting, Fallback, WeightConfig};
use crate::tokenizer::Tokenizer;
use crate::{cpu, Backend, Decoder, Result};
use std::rc::Rc;

/// Where the loaded weights live.
pub enum Weights<'g> {
    /// A model in host memory, for the oracle or (with options) the fast CPU backend.
    Cpu(Box<Model>, Option<FastOptions>),
    Gpu(&'g Gpu, Rc<GpuWeights>),
}

/// A model loaded for a backend, with what the load measured.
pub struct Ready<'g> {
    pub weights: Weights<'g>,
    /// Shapes and each matrix's stored type: what the weights hold, without the weights.
    pub plan: Plan,
    pub tokenizer: Option<Tokenizer>,
    pub fallbacks: Vec<Fallback>,
    pub report: LoadReport,
}

impl<'g> Backend<'g> {
    /// Loads `src` with weights as `wc` says, through `store` when there is one, into this backend.
    pub async fn load(
        self,
        src: &mut dyn Source,
        wc: &WeightConfig,
        store: Option<&dyn Store>,
        progress: &mut dyn FnMut(String),
    ) -> Result<Ready<'g>> {
        match self {
            Backend::Cpu | Backend::Fast(_) => {
                let fast = match self {
                    Backend::Fast(o) => Some(o),
                    _ => None,
                };
                let l = cache::load(src, wc, store, progress).await?;
                Ok(Ready {
                    plan: Plan::of(&l.model),
                    tokenizer: l.model.tokenizer.clone(),
                    weights: Weights::Cpu(Box::new(l.model), fast),
                    fallbacks: l.fallbacks,
                    report: l.report,
                })
            }
            Backend::Gpu(g) => {
                let mut sink = GpuSink::new(g);
                let mut d = cache::load_into(src, wc, store, &mut sink, progress).await?;
                let (w, plan, staging) = sink.finish()?;
                d.report.largest_staging_bytes = Some(staging);
                Ok(Ready {
                    weights: Weights::Gpu(g, w),
                    plan,
                    tokenizer: d.tokenizer,
                    fallbacks: d.fallbacks,
                    report: d.report,
                })
            }
        }
    }
}

impl Ready<'_> {
    /// Whether [`Ready::decoder`] can run `kv` on these weights (the GPU kernels have shape limits).
    pub fn check(&self, kv: &KvConfig) -> Result<()> {
        match &self.weights {
            Weights::Cpu(..) => kv.validate(&self.plan.config),
            Weights::Gpu(..) => GpuDecoder::check(&self.plan.config, kv),
        }
    }

    /// A decoder on the loaded weights with a KV cache as `kv` says.
    pub fn decoder(&self, kv: KvConfig) -> Result<Box<dyn Decoder + '_>> {
        Ok(match &self.weights {
            Weights::Cpu(m, None) => Box::new(cpu::CpuDecoder::with_kv(m, kv)?),
            Weights::Cpu(m, Some(o)) => Box::new(FastDecoder::new(m, kv, *o)?),
            Weights::Gpu(g, w) => Box::new(GpuDecoder::with_weights(g, w.clone(), kv)?),
        })
    }

    /// The model in host memory, where the backend computes from one.
    pub fn model(&self) -> Option<&Model> {
        match &self.weights {
            Weights::Cpu(m, _) => Some(m),
            Weights::Gpu(..) => None,
        }
    }

    /// Exact bytes of the weights as stored.
    pub fn accounting(&self) -> Accounting {
        self.plan.accounting()
    }
}
