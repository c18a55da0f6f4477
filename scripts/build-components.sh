#!/usr/bin/env bash
# Builds the guest components (wasm32-wasip2, release, simd128 from .cargo/config.toml), once per change:
# the generic segment runtime, the pair composer, the capability probe the sandbox tests run, and the
# Spin app's HTTP segment and gateway components.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --locked --release --target wasm32-wasip2 \
  -p netless-segment -p netless-composer -p netless-capability-probe -p netless-http-segment -p netless-gateway
