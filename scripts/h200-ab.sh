#!/usr/bin/env bash
# A/B of nibble settings on the lent H200 machine in one device call: the synthetic f16 file of each
# shape is written once, then `nibble bench` runs once per variant (an environment assignment such as
# NIBBLE_SHADER_CHECKS=on, several joined by "+" as NIBBLE_MATVEC=tiled+NIBBLE_FOLD_NORM=off, "base",
# or bin:NAME for the build .device/ab/NAME, to compare two commits),
# the variants alternating, ROUNDS times over.
# Carry .device/bin (a release build from here; or .device/ab with NB=.device/ab/NAME) and .device/gl
# (the Vulkan loader debs). Builds in .device/ab may come xz-compressed (NAME.xz: three stripped builds
# and the tracked tree pass the 64 MiB carry) and are unpacked here first; without .device/bin,
# .device/ab/main writes the files.
# Knobs: SHAPES (default "1b 7b"), VARIANTS (default "NIBBLE_SHADER_CHECKS=on NIBBLE_SHADER_CHECKS=off"),
# ROUNDS (default 2), CONFIGS (default q4_0), ARGS (bench arguments), TAG (a prefix for the result names,
# so that a second A/B in the same call does not overwrite the first's). Results go to $OUT.
set -uo pipefail
. scripts/h200-env.sh
for f in .device/ab/*.xz; do
  [ -e "$f" ] && [ ! -e "${f%.xz}" ] && xz -dc "$f" > "${f%.xz}" && chmod +x "${f%.xz}"
done
nb=${NB:-.device/bin/nibble}
[ -x "$nb" ] || nb=.device/ab/main
d=/tmp/nb && mkdir -p $d
out=${OUT:-/tmp/out} && mkdir -p "$out"
variants=${VARIANTS:-NIBBLE_SHADER_CHECKS=on NIBBLE_SHADER_CHECKS=off}
args=${ARGS:---prompts 512 --depths 0,1024 --decode-tokens 32 --reps 3 --warmup 1}
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
for m in ${SHAPES:-1b 7b}; do
  preset=llama-$m && [ "$m" = tiny ] && preset=tiny
  [ -f $d/$m-f16.gguf ] || $nb synth --preset $preset --type f16 --out $d/$m-f16.gguf | tail -1
  for r in $(seq "${ROUNDS:-2}"); do
    for v in $variants; do
      name=${TAG:+$TAG-}$m-$(echo "$v" | sed "s/^NIBBLE_//; s/+NIBBLE_/+/g; s/=/-/g" | tr "A-Z_:+" "a-z---")-r$r
      echo "== $name ($v) at $(( $(date +%s) - start )) s"
      exe=$nb
      [ "$v" = base ] && v=NIBBLE_BASE=1
      [ "${v#bin:}" != "$v" ] && exe=.device/ab/${v#bin:} && v=NIBBLE_BASE=1
      env ${v//+/ } $exe bench --model $d/$m-f16.gguf --cache-dir $d/cache --configs "${CONFIGS:-q4_0}" $args \
        --out "$out/$name" 2>&1 | grep --line-buffered "^| \|^model\|tuned" | grep --line-buffered -v "^| model\|^|---"
    done
  done
done
echo "done at $(( $(date +%s) - start )) s"
# The device returns few files: the tables are in the output above, the records are the JSON.
find "$out" -name bench.md -delete
