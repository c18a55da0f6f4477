# Sourced by the scripts: where builds go (outside the clone, so every checkout and CI run reuses them).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/netless/target}"
# One profile for the demo, the tests and `cargo install` (release), so wasmtime and tract build once.
export NETLESS_BIN="$CARGO_TARGET_DIR/release/netless"
export NETLESS_MODELS="${NETLESS_MODELS:-$PWD/models}"
export NETLESS_RUNTIME_WASM="${NETLESS_RUNTIME_WASM:-$CARGO_TARGET_DIR/wasm32-wasip2/release/netless_segment.wasm}"
