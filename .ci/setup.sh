#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for fuselite: system packages, a venv in
# .venv, and the package with its [train,pretrained,dev] extras.  Safe to run again: it
# installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests and demo use: ffmpeg (RTSP test stream), the real
# Fashion-MNIST files, headless Chromium (preview page test), qemu + debootstrap
# (arm64 verification), WordNet (the zero-shot bundle's broader words) and the
# openclipart PNGs (real pictures for the pretrained-backbone tests) and mosquitto (the
# real MQTT broker of the MQTT tests and benchmark).
SYSTEM_PACKAGES=(ffmpeg dataset-fashion-mnist chromium qemu-user-static debootstrap wordnet-base openclipart-png mosquitto)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: please install: sudo apt-get install ${missing[*]}" >&2
    fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e '.[train,pretrained,dev]'
echo "setup: ready (.venv)"
