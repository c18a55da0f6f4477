#!/usr/bin/env bash
# Installs what NetLess needs to build, demo and test; safe to run again (it skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
python3 scripts/fetch_models.py models
