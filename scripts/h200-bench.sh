#!/usr/bin/env bash
# nibble beside llama.cpp on the lent H200 machine, on the same shapes and weights, in one device call
# (a machine goes back 30 s after a call, taking every file with it).
# Run from the project root on the device, after `../shared/peers/stage.sh` and a release build copied to
# .device/bin/nibble here (the device has no Rust toolchain); carry .device/peers .device/gl .device/bin.
# Order: llama.cpp's Vulkan build starts in the background (niced); nibble writes each f16 file with
# `nibble synth` and benches it in $CONFIGS (quantized by nibble in memory); then llama-quantize makes a
# file of each type in $QUANTS from the same f16 files, nibble benches those files as loaded, and
# llama-bench runs on all of them.
# Knobs: SHAPES (default "1b 7b"), BANDWIDTH (GB/s for the roofline column; by default the card's by its
# name), CONFIGS (default f16,q4_0; "none": only the llama-quantize files),
# QUANTS (llama-quantize types, default "q4_0 Q4_K_M"), PEER_F16 (0: llama-bench skips the f16 files), VARIANT (a
# NIBBLE_MATVEC kernel benched again at q4_0, depth 0, to attribute a kernel change), EXTRA (variants as
# scripts/h200-ab.sh takes them: NIBBLE_X=y, several joined by "+", or bin:NAME for .device/ab/NAME; each
# benched at q4_0 in memory on the f16 file of each shape in EXTRA_SHAPES (default 7b), or with
# EXTRA_MODEL=TYPE on that shape's llama-quantize file of TYPE (one of QUANTS) as loaded; decode only,
# after llama.cpp; the device returns 8 files, so two variants at most beside two shapes).
# Results go to $OUT (the device tool brings them back).
set -uo pipefail
. scripts/h200-env.sh
nb=.device/bin/nibble
d=/tmp/nb && mkdir -p $d
out=${OUT:-/tmp/out} && mkdir -p "$out"
shapes=${SHAPES:-1b 7b}
quants=${QUANTS:-q4_0 Q4_K_M}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# The roofline column's peak: the lent card's memory bandwidth in GB/s (H100 SXM 3350, H200 4800).
bw=${BANDWIDTH:-4800}
grep -q H100 "$out/gpu.txt" && bw=${BANDWIDTH:-3350}
bench_args="--no-cache --prompts 512 --depths 0,1024 --decode-tokens 32 --reps 3 --warmup 1 --bandwidth $bw"
start=$(date +%s)
elapsed() { echo "elapsed $(( $(date +%s) - start )) s"; }
nice -n 19 bash .device/peers/on-device.sh > $d/peer-build.log 2>&1 &
build=$!
for m in $shapes; do
  [ -f $d/$m-f16.gguf ] || $nb synth --preset llama-$m --type f16 --out $d/$m-f16.gguf | tail -1
  [ "${CONFIGS:-}" = none ] || $nb bench --model $d/$m-f16.gguf --configs "${CONFIGS:-f16,q4_0}" $bench_args \
    --out "$out/nibble-$m" 2>&1 | grep -v "^  \|^by class\|^the same" | grep -v "^$\|decode: GPU-resident" | tail -24
  elapsed
done
wait $build
cat $d/peer-build.log
q=/opt/lcpp/build-vk/bin/llama-quantize
files=()
for m in $shapes; do
  [ "${PEER_F16:-1}" = 0 ] || files+=("$d/$m-f16.gguf")
  for t in $quants; do
    LD_LIBRARY_PATH=/opt/vk/usr/lib/x86_64-linux-gnu $q $d/$m-f16.gguf $d/$m-$t.gguf $t > /dev/null 2>&1
    files+=("$d/$m-$t.gguf")
    $nb bench --model $d/$m-$t.gguf --configs as-loaded $bench_args --out "$out/nibble-$m-$t" 2>&1 \
      | grep -v "^  \|^by class\|^the same" | grep -v "^$\|decode: GPU-resident" | tail -20
    elapsed
  done
done
bash .device/peers/on-device.sh "${files[@]}" 2>&1 | grep -v "^ggml_\|^load\|^llama_" | tee "$out/llama-bench.md"
elapsed
if [ -n "${VARIANT:-}" ]; then
  for m in $shapes; do
    NIBBLE_MATVEC=$VARIANT $nb bench --model $d/$m-f16.gguf --no-cache --configs q4_0 --prompts 512 \
      --depths 0 --decode-tokens 32 --reps 3 --warmup 1 --bandwidth $bw --out "$out/nibble-$m-$VARIANT" \
      2>&1 | tail -4
  done
fi
for v in ${EXTRA:-}; do
  for m in ${EXTRA_SHAPES:-7b}; do
    name=$m-$(echo "$v" | sed "s/^NIBBLE_//; s/+NIBBLE_/+/g; s/=/-/g" | tr "A-Z_:+" "a-z---")
    exe=$nb
    [ "${v#bin:}" != "$v" ] && exe=.device/ab/${v#bin:} && v=NIBBLE_BASE=1
    echo "== $name ($v)"
    file=$d/$m-f16.gguf cfg=q4_0
    [ -n "${EXTRA_MODEL:-}" ] && file=$d/$m-$EXTRA_MODEL.gguf cfg=as-loaded
    env ${v//+/ } $exe bench --model $file --no-cache --configs $cfg --prompts 16 --depths 0,1024 \
      --decode-tokens 32 --reps 3 --warmup 1 --out "$out/extra-$name" 2>&1 | grep "^| $cfg"
  done
done
elapsed
# The device returns at most 8 files: the tables are in the output above, the records are the JSON.
find "$out" -name bench.md -delete
