"""What the tiny family fixtures' scripts share (scripts/phi3-tiny.py, scripts/gemma-tiny.py):
the tokenizer keys copied from a GGUF, matrices rounded to float16, and the reference written as
transformers' logits for a prompt."""
import json

import gguf
import numpy as np
import torch
import transformers


def copy_tokenizer(w, tok_path):
    """Every tokenizer.* key of the GGUF at tok_path into writer w."""
    r = gguf.GGUFReader(tok_path)
    for f in r.fields.values():
        if f.name.startswith("tokenizer."):
            vt = f.types[0]
            if vt == gguf.GGUFValueType.ARRAY:
                w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1])
            else:
                w.add_key_value(f.name, f.contents(), vt)


def add_shape(w, ctx, dim, layers, hidden, heads, kv_heads):
    """The hyper-parameter keys every family writes, in the converter's order."""
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)


def f16(a):
    return a.astype(np.float16)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def prompt(seed, vocab, n):
    """BOS (1, stories260K's), then seeded random ids past the byte-fallback tokens."""
    g = torch.Generator().manual_seed(seed)
    return [1] + (259 + torch.randint(0, vocab - 259, (n - 1,), generator=g)).tolist()


def write_reference(path, model, prompt_ids, seed, **extra):
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0].double().numpy()
    ref = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        **extra,
        "prompt": prompt_ids,
        "logits": [[round(float(v), 6) for v in row] for row in logits],
    }
    with open(path, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
