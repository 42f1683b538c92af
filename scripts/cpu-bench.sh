#!/usr/bin/env bash
# The fast CPU backend beside llama.cpp's CPU backend, on the same GGUF files, on this machine.
# Runs alternate (nibble, llama.cpp, nibble, ...) so a noisy neighbour hits both alike.
#   LLAMA_BENCH=/path/to/llama-bench (built with -DGGML_NATIVE=ON, CPU only) bash scripts/cpu-bench.sh
# Knobs: OUT (reports/cpu-bench), THREADS (2), ROUNDS (2), REPS (5), MODELS ("1b-q4_0 1b-f16 stories260K").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary}"
OUT=${OUT:-reports/cpu-bench}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
REPS=${REPS:-5}
MODELS=${MODELS:-"1b-q4_0 1b-f16 stories260K"}
nibble=target/release/nibble
[ -x "$nibble" ] || cargo build --release -p nibble
m="$OUT/models"
mkdir -p "$m"
[ -f "$m/1b-f16.gguf" ] || "$nibble" synth --preset llama-1b --out "$m/1b-f16.gguf"
[ -f "$m/1b-q4_0.gguf" ] || "$nibble" quantize --no-cache --model "$m/1b-f16.gguf" --weights q4_0 --out "$m/1b-q4_0.gguf"
[ -f "$m/stories260K.gguf" ] || "$nibble" convert --model testdata/stories260K.bin --tokenizer testdata/tok512.bin --out "$m/stories260K.gguf"
{
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)')"
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Flags" | sed 's/Flags:.*avx512_vnni.*/Flags: ... avx2 avx512f avx512_vnni .../'
  echo "llama-bench: $LLAMA_BENCH"
} > "$OUT/machine.txt"
for r in $(seq "$ROUNDS"); do
  for name in $MODELS; do
    "$nibble" bench --no-cache --model "$m/$name.gguf" --backend cpu --threads "$THREADS" --configs as-loaded \
      --reps "$REPS" --prompts 64 --depths 0 --decode-tokens 16 --out "$OUT/nibble-$name-r$r" > /dev/null
    "$LLAMA_BENCH" -m "$m/$name.gguf" -t "$THREADS" -p 64 -n 16 -r "$REPS" -o md > "$OUT/llama-$name-r$r.md" 2> /dev/null
    echo "round $r $name:"
    grep -E "pp64|tg16" "$OUT/nibble-$name-r$r/bench.md" | sed 's/^/  nibble /'
    grep -E "pp64|tg16" "$OUT/llama-$name-r$r.md" | sed 's/^/  llama.cpp /'
  done
done
