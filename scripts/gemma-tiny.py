#!/usr/bin/env python3
"""Writes testdata/gemma3-tiny.* and testdata/gemma2-tiny.*: tiny random-weight Gemma 3 (text) and
Gemma 2 models laid out as llama.cpp's converter lays them out (tensor names from gguf-py's own map,
every norm weight stored as 1 + w, the `gemma3.*` / `gemma2.*` keys), and Hugging Face transformers'
logits for each, the references engine/tests/gemma.rs holds nibble to.

Usage: scripts/gemma-tiny.py TOKENIZER_GGUF [OUT_DIR]  (as scripts/phi3-tiny.py)
Matrices are drawn in float32 and rounded to float16, stored as F16; norms are F32. Gemma 3: layers
0 and 2 attend windows of 8 positions with RoPE base 10000, layers 1 and 3 everything with base 1e6
scaled linearly by 8. Gemma 2: the same windows at one base (10000), no Q/K norms, and scores and
logits soft-capped at 2 and 5 (its real 50 and 30 would leave a tiny model's values untouched).
The 32-token prompt is longer than the window, so both kinds of layer show.
"""
import math
import os
import sys

import numpy as np
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM
from transformers.models.gemma3 import Gemma3TextConfig
import gguf

from tiny_fixture import add_shape, copy_tokenizer, f16, finish, prompt, write_reference

SEED = 20261206
ATTN_CAP, FINAL_CAP = 2.0, 5.0
VOCAB, DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD = 512, 64, 128, 4, 4, 2, 32
WINDOW, PERIOD, CTX, N = 8, 2, 256, 32
THETA, THETA_SWA, FACTOR = 1e6, 10000.0, 8.0


def config(gen):
    common = dict(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD,
        query_pre_attn_scalar=HEAD, max_position_embeddings=CTX, rms_norm_eps=1e-6,
        sliding_window=WINDOW, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    if gen == 2:
        return Gemma2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": THETA_SWA},
                            attn_logit_softcapping=ATTN_CAP, final_logit_softcapping=FINAL_CAP)
    return Gemma3TextConfig(
        **common, sliding_window_pattern=PERIOD,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": FACTOR, "rope_theta": THETA},
            "sliding_attention": {"rope_type": "default", "rope_theta": THETA_SWA},
        },
        final_logit_softcapping=None, attn_logit_softcapping=None,
    )


def build(gen):
    cfg = config(gen)
    cfg._attn_implementation = "eager"
    assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2, cfg.layer_types
    model = (Gemma2ForCausalLM if gen == 2 else Gemma3ForCausalLM)(cfg).float().eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                # Gemma multiplies by 1 + w: factors in 0.6..1.4.
                p.copy_(-0.4 + 0.8 * torch.rand(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 0.45).half().float())
            else:
                w = torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(p.shape[1])
                p.copy_(w.half().float())
    return model


def write_gguf(path, tok_path, model, gen):
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    arch = gguf.MODEL_ARCH.GEMMA2 if gen == 2 else gguf.MODEL_ARCH.GEMMA3
    names = gguf.get_tensor_name_map(arch, LAYERS)
    w = gguf.GGUFWriter(path, f"gemma{gen}")
    w.add_name(f"tiny-random-gemma{gen}")
    add_shape(w, CTX, DIM, LAYERS, HIDDEN, HEADS, KV_HEADS)
    w.add_key_length(HEAD)
    w.add_value_length(HEAD)
    w.add_rope_dimension_count(HEAD)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(WINDOW)
    if gen == 2:
        w.add_rope_freq_base(THETA_SWA)
        w.add_attn_logit_softcapping(ATTN_CAP)
        w.add_final_logit_softcapping(FINAL_CAP)
    else:
        w.add_rope_freq_base(THETA)
        w.add_rope_freq_base_swa(THETA_SWA)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(FACTOR)
        w.add_sliding_window_pattern(PERIOD)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    copy_tokenizer(w, tok_path)
    for hf, a in sd.items():
        if hf == "lm_head.weight":
            continue  # tied
        name = names.get_name(hf.removesuffix(".weight"))
        assert name is not None, hf
        if hf.endswith("norm.weight"):
            w.add_tensor(name + ".weight", (a + np.float32(1.0)).astype(np.float32))
        else:
            w.add_tensor(name + ".weight", f16(a))
    finish(w)


def main():
    tok_path = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "testdata"
    for gen in (3, 2):
        torch.manual_seed(SEED)
        model = build(gen)
        write_gguf(os.path.join(out, f"gemma{gen}-tiny.gguf"), tok_path, model, gen)
        write_reference(
            os.path.join(out, f"gemma{gen}-tiny.json"), model, prompt(SEED + 1, VOCAB, N), SEED,
            generator="scripts/gemma-tiny.py",
        )

if __name__ == "__main__":
    main()
