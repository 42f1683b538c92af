"""The other side of nibble's GGUF interop tests, using llama.cpp's own `gguf` Python package.

  read FILE OUT.json   read a GGUF that nibble wrote; dump metadata and dequantized tensor checksums
  write OUT.gguf OUT.json
                       write a small llama GGUF (all supported tensor types) and dump its checksums
  quant IN.f32 OUTDIR  quantize raw f32 data with gguf's reference quantizers (Q4_0, Q4_1, Q8_0)
  dequant TYPE IN.bin OUT.f32
                       dequantize raw blocks of a ggml type (e.g. Q4_K) with gguf's reference code
  dequant-gguf FILE OUTDIR ROWS
                       dequantize the first ROWS rows of every tensor of a GGUF to OUTDIR/NAME.f32
  forward FILE IDS OUT.f32
                       logits of every position of the comma-separated token ids, computed in float64
                       by a plain numpy transcription of Hugging Face's Llama/Qwen2/Qwen3 modelling code
  chat FILE CASES.json OUT.json
                       render the GGUF's tokenizer.chat_template for each list of messages in CASES.json
                       with Jinja2 configured as Hugging Face transformers' apply_chat_template does
"""
import json
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def checksum(values):
    v = np.asarray(values, dtype=np.float64).ravel()
    return {"sum": float(v.sum()), "abs_sum": float(np.abs(v).sum()), "head": [float(x) for x in v[:8]]}


def field_value(f):
    types = f.types
    if types and types[0] == gguf.GGUFValueType.ARRAY:
        return {"array_len": len(f.data)}
    if types and types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def read(path, out):
    r = gguf.GGUFReader(path)
    meta = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field_value(f)
    tokens = r.fields.get("tokenizer.ggml.tokens")
    first_tokens = []
    if tokens is not None:
        first_tokens = [bytes(tokens.parts[i]).decode("utf-8") for i in tokens.data[:300]]
    tensors = {}
    for t in r.tensors:
        deq = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape], **checksum(deq)}
    json.dump({"metadata": meta, "tokens": first_tokens, "tensors": tensors}, open(out, "w"))


def write(path, out):
    rng = np.random.default_rng(7)
    dim, hidden, layers, heads, kv_heads, vocab, ctx = 64, 128, 2, 4, 2, 300, 128
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("gguf-py-written")
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(dim // heads)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    # Every multi-character piece is reachable by pairwise merges, as in a real SentencePiece vocabulary.
    words = ["\u2581", "t", "h", "e", "c", "a", "d", "o", "g", "\u2581the", "\u2581cat", "\u2581t", "he", "\u2581c", "at", "\u2581a", "\u2581dog", "\u2581d", "og"]
    tokens += words
    tokens += [f"<pad{i}>" for i in range(vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words) + [5] * (vocab - 259 - len(words))
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))] + [-1e4] * (vocab - 259 - len(words))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    sums = {}

    def add(name, shape, qtype, scale):
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype in (T.F32, T.F16):
            arr = data.astype(np.float32 if qtype == T.F32 else np.float16)
            w.add_tensor(name, arr)
            deq = arr.astype(np.float32)
        else:
            q = gguf.quants.quantize(data, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
            deq = gguf.quants.dequantize(q, qtype)
        sums[name] = {"type": qtype.name, **checksum(deq)}

    kv = dim // heads * kv_heads
    add("token_embd.weight", (vocab, dim), T.Q8_0, 1.0)
    for l in range(layers):
        add(f"blk.{l}.attn_norm.weight", (dim,), T.F32, 1.0)
        add(f"blk.{l}.attn_q.weight", (dim, dim), T.Q4_0, dim ** -0.5)
        # Layer 1 also holds llama-quantize's fallbacks for rows no K-quant fits.
        add(f"blk.{l}.attn_k.weight", (kv, dim), T.Q5_0 if l else T.Q4_0, dim ** -0.5)
        add(f"blk.{l}.attn_v.weight", (kv, dim), T.Q4_1, dim ** -0.5)
        add(f"blk.{l}.attn_output.weight", (dim, dim), T.Q8_0, dim ** -0.5)
        add(f"blk.{l}.ffn_norm.weight", (dim,), T.F32, 1.0)
        add(f"blk.{l}.ffn_gate.weight", (hidden, dim), T.Q5_1 if l else T.Q4_1, dim ** -0.5)
        add(f"blk.{l}.ffn_up.weight", (hidden, dim), T.BF16 if l else T.F16, dim ** -0.5)
        add(f"blk.{l}.ffn_down.weight", (dim, hidden), T.Q4_0, hidden ** -0.5)
    add("output_norm.weight", (dim,), T.F32, 1.0)
    add("output.weight", (vocab, dim), T.F16, dim ** -0.5)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    json.dump({"tensors": sums, "vocab": vocab, "tokens": tokens}, open(out, "w"))


def quant(inp, outdir):
    data = np.fromfile(inp, dtype=np.float32).reshape(-1, 32)
    for qt in (T.Q4_0, T.Q4_1, T.Q8_0):
        gguf.quants.quantize(data, qt).tofile(f"{outdir}/{qt.name}.bin")


def dequant(qtype, inp, out):
    qt = T[qtype]
    block_bytes = gguf.GGML_QUANT_SIZES[qt][1]
    data = np.fromfile(inp, dtype=np.uint8).reshape(-1, block_bytes)
    gguf.quants.dequantize(data, qt).astype(np.float32).tofile(out)


def dequant_gguf(path, outdir, rows):
    for t in gguf.GGUFReader(path).tensors:
        data = t.data[: int(rows)] if t.data.ndim > 1 else t.data
        gguf.quants.dequantize(data, t.tensor_type).astype(np.float32).tofile(f"{outdir}/{t.name}.f32")


def forward(path, ids, out):
    # Hugging Face's LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM, written out in numpy.
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    md = lambda k, d=None: r.fields[f"{arch}.{k}"].parts[-1][0] if f"{arch}.{k}" in r.fields else d
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    dim, n_layers = int(md("embedding_length")), int(md("block_count"))
    nh = int(md("attention.head_count"))
    nkv = int(md("attention.head_count_kv", nh))
    hd = int(md("attention.key_length", dim // nh))
    eps, theta = float(md("attention.layer_norm_rms_epsilon")), float(md("rope.freq_base", 10000.0))
    neox = arch in ("qwen2", "qwen3")
    tok = [int(i) for i in ids.split(",")]
    T = len(tok)

    def rms(x, g):
        return g * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))

    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # (T, heads, hd)
        if neox:
            a, b = x[..., : hd // 2], x[..., hd // 2 :]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2], y[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return y

    x = w["token_embd.weight"][tok]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layers):
        p = lambda n: w[f"blk.{l}.{n}"]
        h = rms(x, p("attn_norm.weight"))
        q, k, v = (h @ p(f"attn_{n}.weight").T + w.get(f"blk.{l}.attn_{n}.bias", 0.0) for n in "qkv")
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        if f"blk.{l}.attn_q_norm.weight" in w:
            q, k = rms(q, p("attn_q_norm.weight")), rms(k, p("attn_k_norm.weight"))
        q, k = rope(q), rope(k)
        att = np.empty((T, nh, hd))
        for i in range(nh):
            j = i // (nh // nkv)
            s = q[:, i] @ k[:, j].T / np.sqrt(hd) + mask
            e = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, i] = (e / e.sum(axis=-1, keepdims=True)) @ v[:, j]
        x = x + att.reshape(T, nh * hd) @ p("attn_output.weight").T
        h = rms(x, p("ffn_norm.weight"))
        g = h @ p("ffn_gate.weight").T
        x = x + (g / (1 + np.exp(-g)) * (h @ p("ffn_up.weight").T)) @ p("ffn_down.weight").T
    x = rms(x, w["output_norm.weight"])
    out_w = w.get("output.weight", w["token_embd.weight"])
    (x @ out_w.T).astype(np.float32).tofile(out)


def chat(path, cases, out):
    # As transformers' _compile_jinja_template and apply_chat_template (no tools, no strftime_now).
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    r = gguf.GGUFReader(path)
    text = lambda key: bytes(r.fields[key].parts[-1]).decode()
    tokens = r.fields["tokenizer.ggml.tokens"]
    token = lambda i: bytes(tokens.parts[tokens.data[i]]).decode()
    scalar = lambda key: int(r.fields[key].parts[-1][0])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(text("tokenizer.chat_template"))
    bos, eos = token(scalar("tokenizer.ggml.bos_token_id")), token(scalar("tokenizer.ggml.eos_token_id"))
    rendered = [
        template.render(messages=m, tools=None, documents=None, add_generation_prompt=True, bos_token=bos, eos_token=eos)
        for m in json.load(open(cases))
    ]
    json.dump(rendered, open(out, "w"), ensure_ascii=False)


if __name__ == "__main__":
    cmd = sys.argv[1]
    cmds = {"read": read, "write": write, "quant": quant, "dequant": dequant, "dequant-gguf": dequant_gguf, "chat": chat, "forward": forward}
    cmds[cmd](*sys.argv[2:])
