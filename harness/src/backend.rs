//! `--backend`: which backend a command runs on (the GPU, the fast CPU backend or the oracle), and
//! the fallback to the CPU where the GPU cannot take a model or a KV configuration.

use crate::args::{gpu_env_options, ModelArgs};
use crate::native::{load_for, QuantArgs};
use anyhow::{bail, Result};
use clap::Args;
use nibble_engine::fast::dot::Isa;
use nibble_engine::fast::FastOptions;
use nibble_engine::gpu::{Activations, Gpu, GpuOptions};
use nibble_engine::kv::KvConfig;
use nibble_engine::load::Ready;
use nibble_engine::measure::RunConfig;
use nibble_engine::model::Model;
use nibble_engine::{Backend, Decoder};

/// `--backend`: which backend runs the model.
#[derive(Args, Clone, Default)]
pub struct BackendArgs {
    /// gpu, cpu (the fast CPU backend) or oracle (the f32 reference). Default: gpu where a WebGPU
    /// adapter exists, otherwise cpu (the output says which ran).
    #[arg(long)]
    backend: Option<String>,
    /// GPU activations, f16 or f32. Default: f16 where the adapter has shader-f16, else f32.
    #[arg(long)]
    act: Option<String>,
    /// CPU threads. Default: every core.
    #[arg(long)]
    threads: Option<usize>,
    /// CPU instruction set: scalar, avx2, avx512-vnni, simd128. Default: the best this machine has.
    #[arg(long)]
    isa: Option<String>,
}

/// An opened backend: the GPU when one was asked for or found, else the CPU (fast, or the oracle).
pub struct OpenBackend {
    gpu: Option<Gpu>,
    /// The fast CPU backend's options; `None` with no GPU is the oracle.
    fast: Option<FastOptions>,
    /// The user asked for this backend by name, so nothing falls back.
    forced: bool,
}

impl BackendArgs {
    /// The CPU oracle, whatever the machine has.
    pub fn oracle() -> Self {
        BackendArgs {
            backend: Some("oracle".into()),
            ..Default::default()
        }
    }

    fn fast_options(&self) -> Result<FastOptions> {
        let mut o = FastOptions::default();
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads 0: at least one thread runs");
            }
            o.threads = t;
        }
        if let Some(name) = &self.isa {
            let names: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
            o.isa = Isa::parse(name)
                .ok_or_else(|| anyhow::anyhow!("--isa {name:?}: expected one of {names:?}"))?;
            if !o.isa.available() {
                bail!("--isa {name}: this machine does not have it");
            }
        }
        Ok(o)
    }

    pub fn open(&self) -> Result<OpenBackend> {
        self.open_with(false)
    }

    /// [`BackendArgs::open`], asking the GPU for timestamps inside passes where `profile`.
    pub fn open_with(&self, profile: bool) -> Result<OpenBackend> {
        let opts = GpuOptions {
            act: self.act.as_deref().map(Activations::parse).transpose()?,
            profile,
            ..gpu_env_options()?
        };
        let gpu_only = opts.act.is_some();
        let cpu_only = self.threads.is_some() || self.isa.is_some();
        let fast = self.fast_options()?;
        let b = self.backend.as_deref();
        if gpu_only && matches!(b, Some("cpu" | "oracle")) {
            bail!("--act applies to the GPU backend");
        }
        if cpu_only && matches!(b, Some("gpu" | "oracle")) {
            bail!("--threads and --isa apply to the fast CPU backend (--backend cpu)");
        }
        let cpu = |forced| OpenBackend {
            gpu: None,
            fast: Some(fast),
            forced,
        };
        match b {
            Some("cpu") => Ok(cpu(true)),
            Some("oracle") => Ok(OpenBackend {
                gpu: None,
                fast: None,
                forced: true,
            }),
            Some("gpu") => Ok(OpenBackend {
                gpu: Some(Gpu::open_blocking(opts)?),
                fast: None,
                forced: true,
            }),
            None if cpu_only => Ok(cpu(false)),
            None => match Gpu::open_blocking(opts) {
                Ok(g) => Ok(OpenBackend {
                    gpu: Some(g),
                    fast: Some(fast),
                    forced: false,
                }),
                Err(e) => {
                    eprintln!("backend: cpu ({e})");
                    Ok(cpu(false))
                }
            },
            Some(other) => bail!("--backend {other:?}: expected gpu, cpu or oracle"),
        }
    }
}

impl OpenBackend {
    /// A decoder on the opened backend. When the backend was chosen automatically and the GPU cannot run
    /// this configuration, the CPU runs it instead and stderr says why.
    pub fn decoder<'a>(&'a self, m: &'a Model, kv: KvConfig) -> Result<Box<dyn Decoder + 'a>> {
        match self.backend().decoder(m, kv.clone()) {
            Err(e) if !self.forced && self.gpu.is_some() => {
                eprintln!("backend: cpu for {} ({e})", kv.label());
                Ok(self.cpu().decoder(m, kv)?)
            }
            r => Ok(r?),
        }
    }

    /// Loads for this backend ([`load_for`]). When the backend was chosen automatically and the GPU
    /// cannot take this model or its KV configuration, the CPU loads it instead and stderr says why.
    pub fn load(&self, a: &ModelArgs, q: &QuantArgs) -> Result<(Ready<'_>, RunConfig)> {
        let tried = load_for(a, q, self.backend())
            .and_then(|(r, cfg)| r.check(&cfg.kv).map(|()| (r, cfg)).map_err(Into::into));
        match tried {
            Err(e) if !self.forced && self.gpu.is_some() => {
                eprintln!("backend: cpu ({e:#})");
                load_for(a, q, self.cpu())
            }
            r => r,
        }
    }

    pub fn backend(&self) -> Backend<'_> {
        match &self.gpu {
            Some(g) => Backend::Gpu(g),
            None => self.cpu(),
        }
    }

    /// The CPU backend this run falls back to, or runs on without a GPU.
    fn cpu(&self) -> Backend<'static> {
        self.fast.map_or(Backend::Cpu, Backend::Fast)
    }

    pub fn adapter(&self) -> Option<&nibble_engine::gpu::AdapterReport> {
        self.gpu.as_ref().map(|g| &g.report)
    }

    /// Why kernels cannot be timed on this backend, or None where they can.
    pub fn no_profile(&self) -> Option<String> {
        match &self.gpu {
            Some(g) if g.timestamps => None,
            Some(g) => Some(format!(
                "{} has no timestamps inside compute passes",
                g.report.name
            )),
            None => Some("the CPU backends dispatch no GPU kernels".into()),
        }
    }

    /// The decode kernels and row sums chosen, on a GPU, and why.
    pub fn kernels(&self) -> Option<String> {
        self.gpu.as_ref().map(|g| g.kernel_note())
    }

    /// wgpu's shader safety code kept, on a GPU.
    pub fn shader_checks(&self) -> Option<String> {
        self.gpu
            .as_ref()
            .map(|g| g.shader_checks.name().to_string())
    }

    /// Activation type: the GPU's; the fast CPU backend's 8-bit blocks against quantized weights
    /// (f32 against f16 and f32 weights); the oracle's f32.
    pub fn activations(&self) -> &'static str {
        match (&self.gpu, self.fast) {
            (Some(g), _) => g.activations.name(),
            (None, Some(_)) => "q8",
            (None, None) => "f32",
        }
    }
}
