#!/usr/bin/env python3
"""Writes testdata/pre-tokenizers.json: llama.cpp's token ids for the family fixtures'
vocabularies under each `tokenizer.ggml.pre` name nibble takes beyond the fixtures' own
(engine/src/tokenizer/bpe.rs, PRE_NAMES), so that engine/tests/families.rs can hold nibble's
pre-tokenizers to llama.cpp's, the authority on what those names mean.

Usage: scripts/pre-tokenizers.py LLAMA_TOKENIZE [FAMILIES_DIR]
  LLAMA_TOKENIZE: llama.cpp's tools/tokenize binary (built from ../shared/peers' source, CPU only:
  cmake -B build -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_APP=OFF, then
  cmake --build build --target llama-tokenize).
  FAMILIES_DIR: default ../shared/models/families. Needs the `gguf` package (.ci/run installs it).
Each fixture file is copied with gguf's gguf_new_metadata --pre-tokenizer NAME, and every text is
tokenized as the fixtures' own llama.cpp ids were: -f FILE --ids --no-bos --no-escape --log-disable.
"""
import json
import os
import subprocess
import sys
import tempfile

FIXTURES = {"llama3-tiny": "llama3-tiny-Q4_K_M.gguf", "qwen2-tiny": "qwen2-tiny-Q4_K_M.gguf"}
# (fixture, pre name): every name in PRE_NAMES not a fixture's own, on a vocabulary of its
# family, and the other pre-tokenizers on one vocabulary each.
RUNS = [
    ("llama3-tiny", "llama3"),
    ("llama3-tiny", "llama-v3"),
    ("llama3-tiny", "falcon3"),
    ("llama3-tiny", "smollm"),
    ("llama3-tiny", "gpt-2"),
    ("qwen2-tiny", "deepseek-r1-qwen"),
    ("qwen2-tiny", "smollm"),
]
# Beside the fixtures' own texts: digits in every arrangement (where pre-tokenizers differ most).
EXTRA = [
    "Call 555-0123 at 10:30, or 1234567890.",
    "v2.0.1 (2024-12-04) costs $1,299.99",
    "x1y22z333w4444",
    "\u0661\u0662\u0663 \u0664\u0665\u0666 and \u00b2\u00b3 \u00bd \u216b",
    "  42  ",
    "1\n2\n\n3",
]


def main():
    tool = sys.argv[1]
    fam = sys.argv[2] if len(sys.argv) > 2 else "../shared/models/families"
    out = {
        "generator": "scripts/pre-tokenizers.py",
        # The source ../shared/peers holds (its build reports no commit).
        "llama_cpp": "b10573-14, commit 3f545beccee69d9975f466ec7e45fd9aacd8ba90, CPU build",
        "command": "llama-tokenize -m FILE -f TEXT --ids --no-bos --no-escape --log-disable",
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fixture, pre in RUNS:
            src = os.path.join(fam, fixture, FIXTURES[fixture])
            own = json.load(open(os.path.join(fam, fixture, "tokens.json")))
            texts = [c["text"] for c in own["cases"]]
            gguf = os.path.join(tmp, f"{fixture}-{pre}.gguf")
            subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata",
                            "--pre-tokenizer", pre, "--force", src, gguf],
                           check=True, capture_output=True)
            cases = []
            for text in texts + EXTRA:
                path = os.path.join(tmp, "text.txt")
                with open(path, "wb") as f:
                    f.write(text.encode("utf-8"))
                r = subprocess.run([tool, "-m", gguf, "-f", path, "--ids", "--no-bos",
                                    "--no-escape", "--log-disable"],
                                   capture_output=True, text=True, check=True)
                cases.append({"text": text, "ids": json.loads(r.stdout.strip().splitlines()[-1])})
            out["runs"].append({"fixture": fixture, "file": FIXTURES[fixture], "pre": pre,
                                "cases": cases})
            print(f"{fixture} {pre}: {len(cases)} texts", file=sys.stderr)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
