#!/usr/bin/env python3
"""Writes testdata/spm-special.json: llama.cpp's token ids for SentencePiece ("llama") vocabularies
with special tokens written in the text, so that engine/tests/tokenizer_spm.rs can hold nibble's
SentencePiece encoder to llama.cpp's: control, user-defined and unknown tokens split out of the
text first (longest first), a dummy-prefix space before each text fragment that follows a special
token where `tokenizer.ggml.add_space_prefix` is true (the default) and none where it is false
(Gemma's), and the whitespace after every special token stripped where `general.name` says Phi-3
(llama.cpp's rule for Phi-3 vocabularies).

Usage: scripts/spm-special.py LLAMA_TOKENIZE [BASE_GGUF]
  LLAMA_TOKENIZE: llama.cpp's tools/tokenize binary (see scripts/pre-tokenizers.py for the build).
  BASE_GGUF: default testdata/gemma3-tiny.gguf, whose vocabulary (stories260K's 512 tokens) has
  the REPLACED ids below turned into special tokens. Needs the `gguf` package.
Each variant is written as a metadata-only GGUF (llama-tokenize loads the vocabulary alone) and
every text is tokenized as: -f FILE --ids --no-bos --log-disable (special tokens parsed).
"""
import json
import os
import subprocess
import sys
import tempfile

import gguf

CONTROL, USER_DEFINED = 3, 4
# (id, text, type): ids at the end of stories260K's vocabulary, replaced.
REPLACED = [
    (498, "<s>", CONTROL),
    (499, "</s>", CONTROL),
    (500, "<|endoftext|>", CONTROL),
    (501, "<start_of_turn>", CONTROL),
    (502, "<end_of_turn>", CONTROL),
    (503, "<|user|>", CONTROL),
    (504, "<|assistant|>", CONTROL),
    (505, "<|end|>", CONTROL),
    (506, "<|system|>", USER_DEFINED),
    (507, "<mask>", USER_DEFINED),
    (508, "<start", USER_DEFINED),
    (509, "\n\n", USER_DEFINED),
]
# (label, general.name, tokenizer.ggml.add_space_prefix or None for absent)
VARIANTS = [
    ("default", "tiny-vocab", None),
    ("no-space-prefix", "tiny-vocab", False),
    ("phi3-rstrip", "phi3-tiny-vocab", None),
]
TEXTS = [
    "Once upon a time there was a cat.",
    "<start_of_turn>user\nHello there<end_of_turn>\n<start_of_turn>model\n",
    "<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n",
    "<|system|>  Be brief. <|end|>  \n<|user|>hi<|end|><|assistant|>",
    "<s>start</s> and <|endoftext|>next",
    "a<mask>b <mask> c<mask>",
    "<start_of_turn> the longer token wins over <start",
    "<start alone, <start_of_tur and <end_of_turn",
    "one\n\ntwo\n\n\nthree",
    "<unk> is unknown, <|user|><|user|> twice",
    "  leading spaces then <|end|>",
    "\u00e9t\u00e9 \u2014 caf\u00e9 <|end|>\u00e9",
    "<|end|>",
    " ",
]


def write_vocab(path, base, general_name, add_space_prefix):
    r = gguf.GGUFReader(base)
    f = lambda k: r.fields[k].contents()
    w = gguf.GGUFWriter(path, f("general.architecture"))
    for field in r.fields.values():
        k = field.name
        if k.startswith("GGUF.") or k.startswith("tokenizer.") or k in (
            "general.architecture", "general.name"):
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, field.contents(), vt, sub_type=field.types[-1])
        else:
            w.add_key_value(k, field.contents(), vt)
    w.add_name(general_name)
    tokens, types = list(f("tokenizer.ggml.tokens")), list(f("tokenizer.ggml.token_type"))
    for i, text, ty in REPLACED:
        tokens[i], types[i] = text, ty
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(list(f("tokenizer.ggml.scores")))
    w.add_token_types(types)
    w.add_bos_token_id(f("tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(f("tokenizer.ggml.eos_token_id"))
    w.add_unk_token_id(0)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tokenize(exe, model, text, tmp):
    p = os.path.join(tmp, "text.txt")
    with open(p, "w", encoding="utf-8") as fh:
        fh.write(text)
    out = subprocess.run([exe, "-m", model, "-f", p, "--ids", "--no-bos", "--log-disable"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    exe = sys.argv[1]
    base = sys.argv[2] if len(sys.argv) > 2 else "testdata/gemma3-tiny.gguf"
    ref = {"generator": "scripts/spm-special.py", "llama.cpp": "b10573-14",
           "base": os.path.basename(base), "replaced": REPLACED, "texts": TEXTS, "variants": []}
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, prefix in VARIANTS:
            path = os.path.join(tmp, f"{label}.gguf")
            write_vocab(path, base, name, prefix)
            ids = [tokenize(exe, path, t, tmp) for t in TEXTS]
            ref["variants"].append({"label": label, "general_name": name,
                                    "add_space_prefix": prefix, "ids": ids})
    with open("testdata/spm-special.json", "w") as fh:
        json.dump(ref, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
