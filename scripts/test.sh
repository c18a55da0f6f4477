#!/usr/bin/env bash
# Runs every test: the Rust integration tests (real models, real components, real host) and the Python
# checks against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

bash scripts/build-components.sh
# Keeps the tests' compiled-code cache, which grows with every runtime build, within a size.
cargo build --locked -p netless
"$NETLESS_BIN" cache prune --dir "$(dirname "$NETLESS_RUNTIME_WASM")/netless-test-cache" --max-size 6GiB
# builds target/debug/netless too (the integration tests run it), which the Python checks then use
cargo test --locked -p netless -p netless-oip -p netless-fuzz
python3 -m pytest -q tests/python
