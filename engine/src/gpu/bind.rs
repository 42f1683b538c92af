//! What each dispatch binds: the kernel a binding key runs on this decoder's weights, whether the
//! fused kernels apply, and the buffers (or ranges of them) behind every binding number, made into
//! bind groups on first use and cached.

use super::decoder::GpuDecoder;
use super::kernels::{max_splits, BindKey, Kernel, MatvecKernel};
use super::layout::kivi_ring;
use super::layout::{Chunk, GpuMatrix, View};
use crate::dtype::WType;
use crate::forward::Act;
use crate::model::TensorId;
use wgpu::util::DeviceExt;

type Entries = Vec<(u32, View)>;

impl GpuDecoder<'_> {
    /// The kernel `key` runs on this decoder's weights with the adapter's matvec choice.
    pub(super) fn kernel_of(&self, key: BindKey) -> Kernel {
        let half = self.gpu.half_math;
        key.kernel(self.gpu.matvec_kernel(), self.gpu.int8_long, half, |id| {
            let m = &self.w.mats[&id];
            (m.cols, m.ty, m.block)
        })
    }

    /// Whether a decode step runs SwiGLU's gate and up products as one kernel (`matvec4_glu_q4c`,
    /// `matvec4_glu_f16`, `matvec4_glu_q8`, `matvec4_glu_k`): both q4_0 (or both f16, q8_0, Q4_K,
    /// Q5_K) matrices of one shape and block in one binding each, whose products the chosen kernel
    /// would run in `matvec4_q4c` (`matvec4_f16`, `matvec4_q8`, `matvec4_q4k`, `matvec4_q5k`).
    pub(super) fn fuses_glu(&self, gate: TensorId, up: TensorId) -> bool {
        let (g, u) = (&self.w.mats[&gate], &self.w.mats[&up]);
        let apart = self.kernel_of(BindKey::Matvec(gate, 0, Act::Hb, Act::Xb, false));
        let fused = matches!(
            (g.ty, apart),
            (WType::Q4_0, Kernel::Matvec4Q4C | Kernel::Matvec4Q4I)
                | (WType::F16, Kernel::Matvec4F16)
                | (WType::Q8_0, Kernel::Matvec4Q8)
                | (WType::Q4_K | WType::Q5_K, Kernel::Matvec4KI)
                | (WType::Q4_K, Kernel::Matvec4Q4K)
                | (WType::Q5_K, Kernel::Matvec4Q5K)
        ) || (g.ty == WType::Q6_K && self.k_vec4());
        self.rows == 1
            && fused
            && (u.ty, u.block, u.cols) == (g.ty, g.block, g.cols)
            && g.chunks.len() == 1
            && u.chunks.len() == 1
            && g.chunks[0].rows == u.chunks[0].rows
    }

    /// Whether the chosen kernels read K-quants 128 bits at a time (`matvec4_q4k`): then Q6_K, which
    /// alone keeps the 32-bit kernel, is fused too.
    fn k_vec4(&self) -> bool {
        !matches!(
            self.gpu.matvec_kernel(),
            MatvecKernel::Tiled32 | MatvecKernel::Row
        )
    }

    /// Whether a decode step runs `layer`'s Q, K and V products as one kernel (`matvec4_qkv_q4c`,
    /// `matvec4_qkv_f16`, `matvec4_qkv_q8`, `matvec4_qkv_k`): their weights share buffers
    /// (`QkvLayout`), and the chosen kernel would run Q in one of the vec4 kernels these extend (or
    /// reads K-quants so, for Q6_K).
    pub(super) fn fuses_qkv(&self, layer: usize) -> bool {
        let q = BindKey::Matvec(TensorId::Wq(layer), 0, Act::Q, Act::Xb, false);
        let q6k = self.w.mats[&TensorId::Wq(layer)].ty == WType::Q6_K && self.k_vec4();
        self.rows == 1
            && self.w.qkv.contains_key(&layer)
            && (q6k
                || matches!(
                    self.kernel_of(q),
                    Kernel::Matvec4Q4C
                        | Kernel::Matvec4Q4I
                        | Kernel::Matvec4F16
                        | Kernel::Matvec4Q8
                        | Kernel::Matvec4Q4K
                        | Kernel::Matvec4Q5K
                        | Kernel::Matvec4KI
                ))
    }

    /// Creates the bind group for `key` on first use.
    pub(super) fn ensure(&mut self, key: BindKey) {
        if self.binds.contains_key(&key) {
            return;
        }
        let entries = self.entries(key);
        let layout = self.pipes.get(self.kernel_of(key)).get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.binding(),
            })
            .collect();
        let bg = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
        self.binds.insert(key, bg);
    }

    /// The buffers `key` binds, by binding number (each shader's header lists them).
    fn entries(&self, key: BindKey) -> Entries {
        let mut e = self.kernel_entries(key);
        self.bind_norm(key, &mut e);
        e
    }

    fn kernel_entries(&self, key: BindKey) -> Entries {
        let c = &self.config;
        let norm_params = |n: usize| self.uniform(&[n as u32, c.norm_eps.to_bits(), 0, 0]);
        let act = |a: Act| View::whole(self.act(a).clone());
        match key {
            BindKey::Matvec(id, ci, out, x, acc) | BindKey::Matmul(id, ci, out, x, acc, _) => {
                let mut e = self.matrix_entries(id, ci, (acc, false), None);
                e.extend([(4, act(x)), (5, act(out))]);
                self.keep_read_bindings(key, &mut e);
                e
            }
            BindKey::LastRow(id, ci, out, x, rows) => {
                // Output row rows - 1 (MatParams.row0 that many matrix heights in), from x's row
                // rows - 1 bound alone (`GpuDecoder::classify_last_row` checked its alignment).
                let m = &self.w.mats[&id];
                let height: usize = m.chunks.iter().map(|c| c.rows).sum();
                let mut e = self.matrix_entries(id, ci, (false, false), None);
                e[0].1 =
                    self.mat_params(m, &m.chunks[ci], (false, false), false, (rows - 1) * height);
                let row = (m.cols * self.gpu.activations.bytes()) as u64;
                let buffer = self.act(x).clone();
                let offset = (rows as u64 - 1) * row;
                let x = View {
                    buffer,
                    offset,
                    size: row,
                };
                e.extend([(4, x), (5, act(out))]);
                self.keep_read_bindings(key, &mut e);
                e
            }
            BindKey::Glu(gate, up, out, x, gelu, norm) => {
                self.glu_entries((gate, up, gelu), act(out), act(x), norm)
            }
            BindKey::Qkv(..) => self.qkv_entries(key),
            BindKey::QuantX(x, cols, split) => self.quant_x_entries(act(x), cols, split),
            BindKey::Embed(out, ci) => {
                let mut e = self.matrix_entries(TensorId::TokEmbd, ci, (false, false), None);
                e.extend([(5, act(out)), (6, self.step_buf.clone().into())]);
                e
            }
            BindKey::HeadNorm(id, x) => vec![
                (0, norm_params(c.head_size())),
                (2, self.w.norms[&id].clone().into()),
                (3, act(x)),
            ],
            BindKey::Norm(id, out, x) => vec![
                (0, norm_params(c.dim)),
                (1, act(x)),
                (2, self.w.norms[&id].clone().into()),
                (3, act(out)),
            ],
            BindKey::RopeQk(local) => vec![
                (
                    0,
                    self.uniform(&[
                        c.q_dim() as u32,
                        c.head_size() as u32,
                        c.rope_neox() as u32,
                        c.kv_dim() as u32,
                    ]),
                ),
                (1, act(Act::Q)),
                (2, self.rope_of(local).clone().into()),
                (3, act(Act::K)),
            ],
            BindKey::AddBias(..)
            | BindKey::Add(..)
            | BindKey::Swiglu(..)
            | BindKey::Geglu(..)
            | BindKey::Scale(..)
            | BindKey::Softcap(..) => self.elementwise_entries(key),
            BindKey::KvStore(l) => vec![
                (0, self.attn_params()),
                (1, act(Act::K)),
                (2, act(Act::V)),
                (3, self.kcache[l].clone().into()),
                (4, self.vcache[l].clone().into()),
                // A local layer's slots are its steps' (its ring).
                (5, self.steps_of(c.is_local(l)).clone().into()),
            ],
            BindKey::KiviFlush(l) => vec![
                (0, self.attn_params()),
                (3, self.kcache[l].clone().into()),
                (5, self.step_buf.clone().into()),
            ],
            BindKey::Attention(..)
            | BindKey::AttnStaged(..)
            | BindKey::AttnSplit(..)
            | BindKey::AttnCombine(..) => self.attention_entries(key),
            BindKey::Argmax => vec![
                (0, self.uniform(&[c.vocab_size as u32, 0, 0, 0])),
                (1, act(Act::Logits)),
                (2, self.argmax_buf.clone().into()),
                (3, self.step_buf.clone().into()),
            ],
        }
    }

    /// quant_x8's bindings: MatParams with the row length and a kind whose order of bytes the GEMMs
    /// take, x, the steps (the pass's rows) and xq.
    fn quant_x_entries(&self, x: View, cols: usize, split: bool) -> Entries {
        let kind = if split { WType::Q4_0 } else { WType::Q4_K };
        let params = [0, cols as u32, 32, kind.code(), 0, 0, 0, 0, 0, 0, 0, 0];
        vec![
            (0, self.uniform(&params)),
            (4, x),
            (6, self.step_buf.clone().into()),
            (7, self.xq.clone().into()),
        ]
    }

    /// The element-wise kernels' bindings (elementwise.wgsl): the row length (and scale's factor),
    /// the activation updated, and what it takes.
    fn elementwise_entries(&self, key: BindKey) -> Entries {
        let c = &self.config;
        let act = |a: Act| View::whole(self.act(a).clone());
        let params = |a: Act, s: u32| (0, self.uniform(&[a.len(c) as u32, s, 0, 0]));
        match key {
            BindKey::AddBias(a, b) => vec![
                params(a, 0),
                (1, act(a)),
                (3, self.w.norms[&b].clone().into()),
            ],
            BindKey::Add(a, b) | BindKey::Swiglu(a, b) | BindKey::Geglu(a, b) => {
                vec![params(a, 0), (1, act(a)), (2, act(b))]
            }
            BindKey::Scale(a, s) | BindKey::Softcap(a, s) => vec![params(a, s), (1, act(a))],
            _ => unreachable!("not an element-wise key: {key:?}"),
        }
    }

    /// The attention kernels' bindings: params and steps, the query and the layer's caches, and the
    /// scratch and output each one uses.
    fn attention_entries(&self, key: BindKey) -> Entries {
        let act = |a: Act| View::whole(self.act(a).clone());
        let local = match key {
            BindKey::Attention(l, _) | BindKey::AttnStaged(l, _) | BindKey::AttnSplit(l, _) => {
                self.config.is_local(l)
            }
            BindKey::AttnCombine(_, local) => local,
            _ => false,
        };
        let mut e: Entries = vec![
            (0, self.attn_params()),
            (6, self.steps_of(local).clone().into()),
        ];
        let layer = |l: usize| -> Entries {
            vec![
                (1, act(Act::Q)),
                (2, self.kcache[l].clone().into()),
                (3, self.vcache[l].clone().into()),
            ]
        };
        match key {
            BindKey::Attention(l, out) => {
                e.extend(layer(l));
                e.extend([(4, self.att.clone().into()), (5, act(out))]);
            }
            // The same caches as vec4<u32> (8, 9), for 128-bit loads.
            BindKey::AttnStaged(l, out) => e.extend([
                (1, act(Act::Q)),
                (5, act(out)),
                (8, self.kcache[l].clone().into()),
                (9, self.vcache[l].clone().into()),
            ]),
            BindKey::AttnSplit(l, out) => {
                e.extend(layer(l));
                e.extend([(5, act(out)), (7, self.parts.clone().into())]);
            }
            BindKey::AttnCombine(out, _) => {
                e.extend([(5, act(out)), (7, self.parts.clone().into())])
            }
            _ => {}
        }
        e
    }

    /// Trims a matrix kernel's bindings to those its entry point reads (layouts derive from the
    /// shader): only the batched kernel reads the steps (its row count); f32, f16 and K-quant kernels
    /// read no scales or mins, q8_0 no mins.
    fn keep_read_bindings(&self, key: BindKey, e: &mut Entries) {
        if matches!(key, BindKey::Matmul(..)) {
            e.push((6, self.step_buf.clone().into()));
        }
        let kernel = self.kernel_of(key);
        match kernel {
            Kernel::Matvec4F32
            | Kernel::Matvec4F16
            | Kernel::Matvec4Q4K
            | Kernel::Matvec4Q5K
            | Kernel::Matvec4KI
            | Kernel::Matvec4KIL
            | Kernel::MatmulKI
            | Kernel::MatmulH
            | Kernel::MatmulH128
            | Kernel::MatvecK
            | Kernel::MatvecKRow => e.retain(|(i, _)| *i != 2 && *i != 3),
            Kernel::Matvec4Q8
            | Kernel::Matvec4Q4I
            | Kernel::Matvec4Q4IL
            | Kernel::MatmulQ4I
            | Kernel::MatmulQ8I => e.retain(|(i, _)| *i != 3),
            Kernel::Matvec4Q6KI | Kernel::Matvec4Q6KIL => {
                e.retain(|(i, _)| *i != 3);
                words_at_2(e);
            }
            _ => {}
        }
        // The integer GEMMs read x as quant_x8 left it.
        if kernel.reads_xq() {
            e.retain(|(i, _)| *i != 4);
            e.push((7, self.xq.clone().into()));
        }
    }

    /// Binding 12 of the kernels that fold a norm in (matvec4_norm.wgsl, matvec4_int8.wgsl): the
    /// RMSNorm weights, or where none is, x again (a read-only binding the kernel then never reads).
    fn bind_norm(&self, key: BindKey, e: &mut Entries) {
        let (norm, x) = match key {
            BindKey::Glu(.., x, _, norm) | BindKey::Qkv(_, x, _, _, norm) => (norm, x),
            BindKey::Matvec(_, _, _, x, _) | BindKey::LastRow(_, _, _, x, _) => (None, x),
            _ => return,
        };
        let x = View::whole(self.act(x).clone());
        match norm {
            Some(id) => e.push((12, self.w.norms[&id].clone().into())),
            None if self.kernel_of(key).binds_norm() => e.push((12, x)),
            None => {}
        }
    }

    /// The gate matrix as any q4_0 product binds it (no mins), x, the output, the up matrix's codes
    /// and scales.
    fn glu_entries(
        &self,
        (gate, up, gelu): (TensorId, TensorId, bool),
        out: View,
        x: View,
        norm: Option<TensorId>,
    ) -> Entries {
        let mut e = self.matrix_entries(gate, 0, (false, gelu), norm);
        e.retain(|(i, _)| *i != 3);
        let upc = &self.w.mats[&up].chunks[0];
        e.extend([
            (4, x),
            (5, out),
            (7, upc.words.clone()),
            (8, upc.scales.clone()),
        ]);
        // f16 and K-quant rows carry their own scales (none, or in each super-block); Q6_K's
        // gate is read a word at a time through binding 2 (matvec4_glu_q6k).
        match self.w.mats[&gate].ty {
            WType::F16 | WType::Q4_K | WType::Q5_K => e.retain(|(i, _)| *i != 2 && *i != 8),
            WType::Q6_K => {
                e.retain(|(i, _)| *i != 8);
                words_at_2(&mut e);
            }
            _ => {}
        }
        e
    }

    /// A layer's shared Q, K and V codes and scales, the section offsets, x, the three outputs and the
    /// RoPE table (matvec4_qkv_q4c; the K-quant kernel reads its codes at binding 2 too).
    fn qkv_entries(&self, key: BindKey) -> Entries {
        let BindKey::Qkv(l, x, rope, direct, norm) = key else {
            unreachable!("Q/K/V entries for {key:?}")
        };
        let x = View::whole(self.act(x).clone());
        let q = &self.w.qkv[&l];
        let lay = &q.layout;
        let c = &self.config;
        let ty = self.w.mats[&TensorId::Wq(l)].ty;
        let vec4s = matches!(
            ty,
            WType::F16 | WType::Q8_0 | WType::Q4_K | WType::Q5_K | WType::Q6_K
        );
        // Offsets in the units the kernel reads codes in: vec4s for f16, q8_0 and K-quants, words for
        // q4_0.
        let word = |b: u64| (b / 4) as u32;
        let unit = |b: u64| (b / if vec4s { 16 } else { 4 }) as u32;
        let v_ty = self.w.mats[&TensorId::Wv(l)].ty;
        let params = self.uniform(&[
            lay.rows[0] as u32,
            lay.rows[1] as u32,
            c.dim as u32,
            self.w.mats[&TensorId::Wq(l)].block as u32,
            unit(lay.words[1].0),
            unit(lay.words[2].0),
            word(lay.scales[1].0),
            word(lay.scales[2].0),
            rope as u32,
            c.head_size() as u32,
            norm.is_some() as u32,
            c.norm_eps.to_bits(),
            direct as u32,
            self.slot_at() as u32,
            v_ty.code(),
            ty.code(),
        ]);
        let act = |a: Act| View::whole(self.act(a).clone());
        let (k, v) = match direct {
            true => (self.kcache[l].clone().into(), self.vcache[l].clone().into()),
            false => (act(Act::K), act(Act::V)),
        };
        let mut e = vec![
            (0, params),
            (1, q.words.clone().into()),
            (2, q.scales.clone().into()),
            (4, x),
            (5, act(Act::Q)),
            (9, k),
            (10, v),
            (11, self.rope_buf.clone().into()),
        ];
        match ty {
            WType::F16 => e.retain(|(i, _)| *i != 2),
            // The codes again as 32-bit words, for a Q6_K V (matvec4_kquant.wgsl).
            WType::Q4_K | WType::Q5_K | WType::Q6_K => e[2].1 = q.words.clone().into(),
            _ => {}
        }
        e
    }

    /// Bindings 0-3 of a matrix kernel: parameters (`flags`: accumulate, GELU gate) and one chunk's
    /// codes, scales and mins.
    fn matrix_entries(
        &self,
        id: TensorId,
        ci: usize,
        flags: (bool, bool),
        norm: Option<TensorId>,
    ) -> Entries {
        let m = &self.w.mats[&id];
        let ch = &m.chunks[ci];
        vec![
            (0, self.mat_params(m, ch, flags, norm.is_some(), 0)),
            (1, ch.words.clone()),
            (2, ch.scales.clone()),
            (3, ch.mins.clone()),
        ]
    }

    fn uniform(&self, words: &[u32]) -> View {
        let b = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::cast_slice(words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        View::whole(b)
    }

    /// A matrix kernel's MatParams; its output rows start `out0` rows into the output.
    fn mat_params(
        &self,
        m: &GpuMatrix,
        ch: &Chunk,
        (accumulate, gelu): (bool, bool),
        norm: bool,
        out0: usize,
    ) -> View {
        self.uniform(&[
            ch.rows as u32,
            m.cols as u32,
            m.block as u32,
            m.ty.code(),
            accumulate as u32,
            (out0 + ch.row0) as u32,
            m.chunks.iter().map(|c| c.rows).sum::<usize>() as u32,
            norm as u32,
            self.config.norm_eps.to_bits(),
            gelu as u32,
            0,
            0,
        ])
    }

    fn attn_params(&self) -> View {
        let c = &self.config;
        self.uniform(&[
            c.n_heads as u32,
            c.n_kv_heads as u32,
            c.head_size() as u32,
            c.kv_dim() as u32,
            self.cap as u32,
            self.kv.k.key_code(),
            self.kv.v.value_code(),
            self.kv.group as u32,
            kivi_ring(&self.kv, c) as u32,
            self.kv.sinks as u32,
            max_splits(self.cap) as u32,
            c.attn_softcap.unwrap_or(0.0).to_bits(),
        ])
    }
}

/// Moves a Q6_K matrix's words from binding 1 to binding 2 (`codes32`, read a word at a time by
/// matvec4_kquant.wgsl's and matvec4_kint8.wgsl's Q6_K parts), in place of the scales it has none of.
fn words_at_2(e: &mut Entries) {
    let words = e.iter().find(|(i, _)| *i == 1).map(|(_, w)| w.clone());
    e.retain(|(i, _)| *i != 1 && *i != 2);
    e.extend(words.map(|w| (2, w)));
}
