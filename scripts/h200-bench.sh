#!/usr/bin/env bash
# nibble beside llama.cpp on the lent H200 machine, on the same shapes and f16 weights, in one device call
# (a machine goes back 30 s after a call, taking every file with it).
# Run from the project root on the device, after `../shared/peers/stage.sh` and a release build copied to
# .device/bin/nibble here (the device has no Rust toolchain); carry .device/peers .device/gl .device/bin.
# Order: llama.cpp's Vulkan build starts in the background (niced); nibble writes each f16 file with
# `nibble synth` and benches it (f16 and q4_0, quantized by nibble in memory); then llama-quantize makes
# q4_0 files from the same f16 files and llama-bench runs on all four. Optional: $VARIANT names a
# NIBBLE_MATVEC kernel (e.g. tiled32) benched again at q4_0, depth 0, to attribute a kernel change.
# Results go to $OUT (the device tool brings them back).
set -uo pipefail
for f in .device/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export XDG_RUNTIME_DIR=/tmp/xdg && mkdir -p $XDG_RUNTIME_DIR
nb=.device/bin/nibble
d=/tmp/nb && mkdir -p $d
out=${OUT:-/tmp/out} && mkdir -p "$out"
start=$(date +%s)
nice -n 19 bash .device/peers/on-device.sh > $d/peer-build.log 2>&1 &
build=$!
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
for m in 1b 7b; do
  [ -f $d/$m-f16.gguf ] || $nb synth --preset llama-$m --type f16 --out $d/$m-f16.gguf | tail -1
  $nb bench --model $d/$m-f16.gguf --no-cache --configs f16,q4_0 --prompts 512 --depths 0,1024 \
    --decode-tokens 32 --reps 3 --warmup 1 --bandwidth 4800 --out "$out/nibble-$m" 2>&1 \
    | grep -v "^  \|^by class\|^the same" | tail -16
  echo "elapsed $(( $(date +%s) - start )) s"
done
wait $build
cat $d/peer-build.log
q=/opt/lcpp/build-vk/bin/llama-quantize
for m in 1b 7b; do LD_LIBRARY_PATH=/opt/vk/usr/lib/x86_64-linux-gnu $q $d/$m-f16.gguf $d/$m-q4_0.gguf q4_0 > /dev/null 2>&1; done
echo "elapsed $(( $(date +%s) - start )) s"
bash .device/peers/on-device.sh $d/1b-f16.gguf $d/1b-q4_0.gguf $d/7b-f16.gguf $d/7b-q4_0.gguf \
  2>&1 | grep -v "^ggml_\|^load\|^llama_" | tee "$out/llama-bench.md"
echo "elapsed $(( $(date +%s) - start )) s"
if [ -n "${VARIANT:-}" ]; then
  for m in 1b 7b; do
    NIBBLE_MATVEC=$VARIANT $nb bench --model $d/$m-f16.gguf --no-cache --configs q4_0 --prompts 512 \
      --depths 0 --decode-tokens 32 --reps 3 --warmup 1 --bandwidth 4800 --out "$out/nibble-$m-$VARIANT" \
      2>&1 | tail -4
  done
fi
