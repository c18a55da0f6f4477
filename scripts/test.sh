#!/usr/bin/env bash
# Runs every test: the Rust integration tests (real models, real components, real host) and the Python
# checks against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

bash scripts/build-components.sh
# Keeps the tests' compiled-code cache, which grows with every runtime build, within a size.
cargo build --locked --release -p netless
"$NETLESS_BIN" cache prune --dir "$(dirname "$NETLESS_RUNTIME_WASM")/netless-test-cache" --max-size 6GiB
# release, as the demo: the dependencies the binary was built with are reused (see docs/install.md)
cargo test --locked --release -p netless -p netless-oip -p netless-fuzz
python3 -m pytest -q tests/python
