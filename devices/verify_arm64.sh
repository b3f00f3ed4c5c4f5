#!/usr/bin/env bash
# CI step: verify bundles on emulated Raspberry Pi userlands (arm64, and armv7 for the
# 32-bit profile) against this x86 host. Measured here: ~45 s cold, ~6 s per bundle warm.
#
# Usage: devices/verify_arm64.sh [BUNDLE ...]
#   Without bundles it builds tiny fp32/int8/dynamic test bundles with TensorFlow
#   (tests/devices/devices_testbundle.py) and checks that
#     - int8 and fp32 run bit-exact / within 1e-5 on raspberry-pi-5 (arm64),
#     - int8 runs bit-exact on raspberry-pi-32bit (armv7, tflite-runtime 2.14),
#     - the dynamic-range bundle is refused for raspberry-pi-32bit (FULLY_CONNECTED v12).
# Environment: PYTHON (default .venv/bin/python), FUSELITE_CACHE_DIR (default
# ~/.cache/fuselite), OUT (folder for the JSON results; default a temp folder).
# Needs qemu-user-static and debootstrap; as root under CI=true it apt-installs them.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$HERE/.venv/bin/python}"
OUT="${OUT:-$(mktemp -d /tmp/fuselite-verify.XXXXXX)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-1200}"
mkdir -p "$OUT"

have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }
if ! have qemu-aarch64-static || ! have qemu-arm-static || ! have debootstrap; then
  if [[ "${CI:-}" == "true" && $EUID -eq 0 ]]; then
    timeout 600 apt-get install -y -qq qemu-user-static debootstrap >/dev/null
  else
    echo "verify_arm64.sh: install them with: apt-get install qemu-user-static debootstrap" >&2
    exit 2
  fi
fi

fuselite() { timeout "$STEP_TIMEOUT" "$PYTHON" -m fuselite.cli "$@"; }
start=$(date +%s)
if [[ $# -gt 0 ]]; then
  for bundle in "$@"; do
    fuselite devices verify raspberry-pi-5 --bundle "$bundle" --json "$OUT/$(basename "$bundle").json"
  done
else
  "$PYTHON" "$HERE/tests/devices/devices_testbundle.py" --out-dir "$OUT" fp32 int8 dynamic 2>/dev/null
  fuselite devices verify raspberry-pi-5 --bundle "$OUT/tiny-int8.tflite" --json "$OUT/pi5-int8.json"
  fuselite devices verify raspberry-pi-5 --bundle "$OUT/tiny-fp32.tflite" --json "$OUT/pi5-fp32.json"
  fuselite devices verify raspberry-pi-32bit --bundle "$OUT/tiny-int8.tflite" --json "$OUT/pi32-int8.json"
  if fuselite devices check raspberry-pi-32bit --bundle "$OUT/tiny-dynamic.tflite"; then
    echo "FAIL: the dynamic-range bundle should be refused for tflite-runtime 2.14" >&2
    exit 1
  fi
  echo "PASS: dynamic-range bundle refused for raspberry-pi-32bit, as predicted"
fi
echo "verify_arm64.sh: all passed in $(( $(date +%s) - start )) s; results in $OUT"
