#!/usr/bin/env python3
"""Writes testdata/phi3-tiny.gguf and testdata/phi3-tiny.json: a tiny random-weight Phi-3 laid out
as llama.cpp's converter lays out Phi-3 files (Q, K and V in one `attn_qkv`, gate and up in one
`ffn_up`, LongRoPE's factors as `rope_factors_short` / `rope_factors_long`, the attention factor as
`phi3.rope.scaling.attn_factor`), and Hugging Face transformers' logits for it, the reference
engine/tests/phi3.rs holds nibble to.

Usage: scripts/phi3-tiny.py TOKENIZER_GGUF [OUT_DIR]
  TOKENIZER_GGUF: a GGUF whose tokenizer.* keys are copied (stories260K's 512-token vocabulary:
  `nibble convert --model testdata/stories260K.bin --tokenizer testdata/tok512.bin --out F`).
  OUT_DIR: default testdata. Needs torch, transformers and gguf (PyPI).
Matrices are drawn in float32 and rounded to float16, stored as F16, so the file and the float32
transformers model hold the same values; norms and factors are F32.
"""
import math
import os
import sys

import numpy as np
import torch
from transformers import Phi3Config, Phi3ForCausalLM
import gguf

from tiny_fixture import add_shape, copy_tokenizer, f16, finish, prompt, write_reference

SEED = 20261205
VOCAB, DIM, HIDDEN, LAYERS, HEADS, KV_HEADS = 512, 64, 128, 2, 4, 2
ORIG_CTX, CTX = 32, 256  # LongRoPE: factor 8, so the attention factor is sqrt(1 + ln 8 / ln 32)
HS = DIM // HEADS


def build():
    g = torch.Generator().manual_seed(SEED)
    short = (1.0 + torch.rand(HS // 2, generator=g) * 2.0).tolist()
    long = (2.0 + torch.rand(HS // 2, generator=g) * 6.0).tolist()
    cfg = Phi3Config(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CTX,
        original_max_position_embeddings=ORIG_CTX, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": short,
                         "long_factor": long, "original_max_position_embeddings": ORIG_CTX},
        bos_token_id=1, eos_token_id=2, pad_token_id=0, sliding_window=None,
    )
    cfg._attn_implementation = "eager"
    model = Phi3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_((torch.randn(p.shape, generator=g) * 0.45).half().float())
            else:
                gain = 7.0 if "lm_head" in name else 1.5
                w = torch.randn(p.shape, generator=g) * gain / math.sqrt(p.shape[1])
                p.copy_(w.half().float())
    return cfg, model, short, long


def write_gguf(path, tok_path, model, short, long):
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(path, "phi3")
    # Not "phi3": llama.cpp sets token attributes by that name, on tokens this vocabulary lacks.
    w.add_name("tiny-random-longrope")
    add_shape(w, CTX, DIM, LAYERS, HIDDEN, HEADS, KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HS)
    w.add_rope_freq_base(10000.0)
    w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(CTX / ORIG_CTX) / math.log(ORIG_CTX)))
    w.add_rope_scaling_orig_ctx_len(ORIG_CTX)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    copy_tokenizer(w, tok_path)
    w.add_tensor("token_embd.weight", f16(sd["model.embed_tokens.weight"]))
    w.add_tensor("rope_factors_long.weight", np.array(long, dtype=np.float32))
    w.add_tensor("rope_factors_short.weight", np.array(short, dtype=np.float32))
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        w.add_tensor(f"blk.{l}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{l}.attn_qkv.weight", f16(sd[p + "self_attn.qkv_proj.weight"]))
        w.add_tensor(f"blk.{l}.attn_output.weight", f16(sd[p + "self_attn.o_proj.weight"]))
        w.add_tensor(f"blk.{l}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{l}.ffn_up.weight", f16(sd[p + "mlp.gate_up_proj.weight"]))
        w.add_tensor(f"blk.{l}.ffn_down.weight", f16(sd[p + "mlp.down_proj.weight"]))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", f16(sd["lm_head.weight"]))
    finish(w)


def main():
    tok_path = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else "testdata"
    torch.manual_seed(SEED)
    cfg, model, short, long = build()
    write_gguf(os.path.join(out, "phi3-tiny.gguf"), tok_path, model, short, long)
    # ORIG_CTX positions, all on the short factors.
    write_reference(
        os.path.join(out, "phi3-tiny.json"), model, prompt(SEED + 1, VOCAB, ORIG_CTX), SEED,
        generator="scripts/phi3-tiny.py",
        attn_factor=math.sqrt(1 + math.log(CTX / ORIG_CTX) / math.log(ORIG_CTX)),
    )

if __name__ == "__main__":
    main()
