#!/usr/bin/env bash
# `nibble run` with headless Chromium on the H200's hardware WebGPU, the native wgpu host beside it in
# the same run, on the built-in model and the 1B shape at q4_0.
#
# The device has no Rust toolchain and no package registry, and one call carries at most 64 MiB, so the
# run is staged here and sent in parts; a machine keeps /tmp between calls while it is warm (30 s), so
# the calls go back to back:
#   here:   bash scripts/h200-chromium.sh stage
#   device: run(command="bash scripts/h200-chromium.sh recv 1", carry=[".device/c1"])
#           run(command="bash scripts/h200-chromium.sh recv 2", carry=[".device/c2"])
#           run(command="bash scripts/h200-chromium.sh run", carry=[".device/c3", ".device/gl"])
# `stage` builds the release binary with its web bundle beside it (`nibble build-web --copy-to`), and
# Chromium 148 with its library closure (../shared/peers/chromium/build-bundle.sh, ~5 minutes; its
# README says what the NVIDIA ICD needs). `run` writes results and summaries to $OUT.
# Knobs for `run`: REPS (default 3), TOKENS (decode tokens, default 32), MODELS (default "tiny 1b"),
# RUN_TIMEOUT (seconds per model, default 280: a call lasts 600 s at most).
set -uo pipefail
mode=${1:?stage, recv N or run}
case $mode in
stage)
  set -e
  peers=$(cd "$(dirname "$0")/../.." && pwd)/shared/peers
  bash "$peers/stage.sh" >/dev/null
  cargo build --release -p nibble
  rm -rf .device/c1 .device/c2 .device/c3 /tmp/nibble-stage && mkdir -p .device/c1 .device/c2 .device/c3
  # The binary and its bundle travel xz-compressed (28 MB to ~8): a call carries 64 MiB at most.
  mkdir -p /tmp/nibble-stage/bin
  target/release/nibble build-web --copy-to /tmp/nibble-stage/bin/nibble-web
  strip -o /tmp/nibble-stage/bin/nibble target/release/nibble
  tar -cJf .device/c3/bin.tar.xz -C /tmp/nibble-stage bin
  # build-bundle.sh ends by summing helper scripts it does not copy: copy them and sum here.
  [ -f .device/chromium/chrome-part-ac ] || OUT=.device/chromium bash "$peers/chromium/build-bundle.sh" || true
  [ -f .device/chromium/chrome-part-ac ] || { echo "no Chromium bundle in .device/chromium"; exit 1; }
  cp "$peers"/chromium/{unpack.sh,env.sh,probe.sh,probe.py,vkcheck.py} .device/chromium/
  (cd .device/chromium && sha256sum chrome-part-* unpack.sh env.sh PACKAGES.txt > SHA256SUMS)
  cp .device/chromium/chrome-part-aa .device/c1/
  cp .device/chromium/chrome-part-ab .device/c2/
  find .device/chromium -maxdepth 1 -type f ! -name 'chrome-part-a[ab]' -exec cp {} .device/c3/ \;
  du -sh .device/c1 .device/c2 .device/c3 .device/gl
  ;;
recv)
  mkdir -p /tmp/cparts && cp ".device/c$2"/chrome-part-* /tmp/cparts/ && ls -la /tmp/cparts
  ;;
run)
  . scripts/h200-env.sh
  out=${OUT:-/tmp/out} && mkdir -p "$out"
  mkdir -p /tmp/cparts && find .device/c3 -maxdepth 1 -type f ! -name bin.tar.xz -exec cp {} /tmp/cparts/ \;
  if [ ! -d /opt/chromium-portable ]; then
    missing=$(for p in aa ab ac; do [ -f /tmp/cparts/chrome-part-$p ] || echo $p; done)
    [ -z "$missing" ] || { echo "Chromium parts missing: $missing (send them with recv first)"; exit 3; }
    bash /tmp/cparts/unpack.sh /opt/chromium-portable | tail -1 || exit 3
  fi
  # Chromium takes VK_ICD_FILENAMES (VK_DRIVER_FILES overrides what Dawn sets); wgpu reads either.
  export VK_ICD_FILENAMES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  unset VK_DRIVER_FILES
  . /opt/chromium-portable/env.sh /opt/chromium-portable
  rm -rf /tmp/nb && mkdir -p /tmp/nb && tar -xJf .device/c3/bin.tar.xz -C /tmp/nb
  nb=/tmp/nb/bin/nibble
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
  cat > /tmp/nibble.toml <<TOML
[browsers.chrome]
binary = "$CHROME_BIN"
driver = "$CHROMEDRIVER_BIN"
gpu = true
TOML
  common=(--browsers chrome --config /tmp/nibble.toml --bundle /tmp/nb/bin/nibble-web --reps "${REPS:-3}" --decode-tokens "${TOKENS:-32}")
  for m in ${MODELS:-tiny 1b}; do
    case $m in
    tiny) args=(--scenarios latency,accuracy) ;;
    1b)
      [ -f /tmp/1b-q4_0.gguf ] || { $nb synth --preset llama-1b --type f16 --out /tmp/1b.gguf >/dev/null &&
        $nb quantize --model /tmp/1b.gguf --weights q4_0 --out /tmp/1b-q4_0.gguf --no-cache >/dev/null; }
      args=(--model /tmp/1b-q4_0.gguf --scenarios latency --prompts 128 --depths 0) ;;
    esac
    timeout "${RUN_TIMEOUT:-280}" $nb run "${common[@]}" "${args[@]}" --out /tmp/run-$m 2>&1 | grep -v "advisory" | tail -30
    cp /tmp/run-$m/results.json "$out/$m-results.json"
    cp /tmp/run-$m/summary.md "$out/$m-summary.md" 2>/dev/null
    tar -czf "$out/$m-logs.tar.gz" -C /tmp/run-$m logs 2>/dev/null
  done
  ;;
*) echo "unknown mode $mode: stage, recv N or run"; exit 2 ;;
esac
