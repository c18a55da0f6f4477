"""The Spin app NetLess builds, run by the real Spin CLI (../shared/tools/spin, 4.1): the gateway on its
public route chaining the private segments by `*.spin.internal`; tritonclient's JSON and binary answers
equal to native tract and onnxruntime on the unsplit model; private segments out of reach; a wrong shape
refused with 400; `--variable` and `SPIN_VARIABLE_*` reaching the gateway (a stage served by a native
worker); `--max-instance-memory` below a segment's need failing fast and clearly; and the same app pulled
by `spin up --from` from the loopback registry that `netless push` sent it to (SpinKube's path).

Skips with a message when ../shared/tools/spin (or docker-registry, for the push test) is absent, and
fails instead when CI is set.
"""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from test_serve_tritonclient import MODEL, NAME, SHAPE, Server, close, infer, reference

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPIN = pathlib.Path(os.environ.get("NETLESS_SPIN", ROOT.parent / "shared" / "tools" / "spin"))
REGISTRY = pathlib.Path(os.environ.get("NETLESS_DOCKER_REGISTRY", "/usr/bin/docker-registry"))
NETLESS = os.environ.get("NETLESS_BIN", "netless")
# The first start compiles every component (tens of seconds per segment on 2 cores); later ones hit
# Spin's compilation cache.
START_TIMEOUT = 600


def need(path, how):
    if path.exists():
        return path
    message = f"missing {path}: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Spin:
    """A real `spin up` on a free loopback port, stopped with SIGINT as a user's Ctrl-C."""

    def __init__(self, source, *args, env=None):
        self.address = f"127.0.0.1:{free_port()}"
        command = [str(need(SPIN, "the real Spin CLI from ../shared/tools")), "up", "--from", str(source),
                   "--listen", self.address, *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=dict(os.environ, **(env or {})))
        self.output = []
        serving = threading.Event()

        def read():
            for line in self.process.stdout:
                self.output.append(line)
                if line.startswith("Serving http://"):
                    serving.set()
        threading.Thread(target=read, daemon=True).start()
        started = time.monotonic()
        while not serving.wait(0.5):
            if self.process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                self.stop()
                pytest.fail(f"spin up did not start serving: {''.join(self.output)}")
        self.url = f"http://{self.address}"
        self.client = httpclient.InferenceServerClient(url=self.address, network_timeout=120)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def post(url, body, timeout=120):
    """POSTs JSON; returns (status, decoded body)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The demo model split in two and built as a Spin app."""
    need(SPIN, "the real Spin CLI from ../shared/tools")
    if not MODEL.exists():
        pytest.skip(f"missing {MODEL}: run scripts/fetch_models.py")
    out = tmp_path_factory.mktemp("spin") / "split"
    subprocess.run([NETLESS, "split", str(MODEL), "--max-memory", "12MiB", "-o", str(out)], check=True, capture_output=True)
    subprocess.run([NETLESS, "build", str(out), "--spin"], check=True, capture_output=True)
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["segments"]) >= 2, "the test needs a real split"
    return out


def check_answers(client, out, tmp, seed):
    x = np.random.default_rng(seed).uniform(0, 1, SHAPE).astype(np.float32)
    tract, onnxruntime = reference(out, x, tmp)
    output = client.get_model_metadata(NAME)["outputs"][0]["name"]
    for binary in (False, True):
        got = infer(client, x, binary).as_numpy(output)
        assert got.shape == tract.shape and close(got, tract), f"binary={binary}: {got} vs native tract {tract}"
        assert close(got, onnxruntime), f"binary={binary}: {got} vs onnxruntime {onnxruntime}"


def test_real_spin_chains_private_segments_like_native_tract(app, tmp_path):
    spin = Spin(app / "spin.toml")
    try:
        client = spin.client
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        with urllib.request.urlopen(f"{spin.url}/.well-known/spin/health", timeout=30) as health:
            assert health.read() == b"OK", "the same health route as `netless up --spin`"
        assert status(f"{spin.url}/.well-known/spin/v2/health/ready") == 404, "Spin's prefix never reaches the app"
        assert client.get_model_metadata(NAME)["inputs"] == [{"name": "x", "datatype": "FP32", "shape": list(SHAPE)}]
        check_answers(client, app, tmp_path, 21)

        # Only the gateway is routed: a segment's OIP model is unknown from outside.
        assert not client.is_model_ready(f"{NAME}-seg-0")
        code, body = post(f"{spin.url}/v2/models/{NAME}-seg-0/infer", {"inputs": []})
        assert code == 404 and "unknown model" in body["error"], body

        code, body = post(f"{spin.url}/v2/models/{NAME}/infer",
                          {"inputs": [{"name": "x", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]})
        assert code == 400 and "input `x`: shape" in body["error"], body
        assert client.is_server_ready(), "Spin keeps serving after a bad request"
    finally:
        spin.stop()


def test_real_spin_variables_reach_the_gateway(app, tmp_path):
    """Stage 1 on a native worker (`netless up --only-segments 1`) by `--variable`, the outbound host
    allowed by `SPIN_VARIABLE_OUTBOUND_HOSTS`; stage 0 stays chained in process."""
    worker = Server(app, "--only-segments", "1")
    try:
        spin = Spin(app / "spin.toml", "--variable", f"stage1_urls=http://{worker.address}",
                    env={"SPIN_VARIABLE_OUTBOUND_HOSTS": "http://127.0.0.1:*"})
        try:
            check_answers(spin.client, app, tmp_path, 22)
        finally:
            spin.stop()
        assert worker.metric("nv_inference_request_success", f"{NAME}-seg-1") == 2, "both requests reached the worker"

        # Without the outbound host, Spin refuses the gateway's call to the worker: a clear 503, no hang.
        spin = Spin(app / "spin.toml", "--variable", f"stage1_urls=http://{worker.address}")
        try:
            x = np.zeros(SHAPE, np.float32).tolist()
            code, body = post(f"{spin.url}/v2/models/{NAME}/infer", {"inputs": [{"name": "x", "shape": list(SHAPE), "datatype": "FP32", "data": x}]})
            assert code == 503 and f"{NAME}-seg-1 is unavailable" in body["error"], body
        finally:
            spin.stop()
    finally:
        assert worker.stop() == 0


def test_real_spin_instance_memory_below_a_segments_need_fails_clearly(app):
    """Spin's `--max-instance-memory` is one limit for every instance, gateway included: 8 MiB leaves
    the gateway room for a binary request but is below what a prepared segment starts with."""
    spin = Spin(app / "spin.toml", "--max-instance-memory", str(8 << 20))
    try:
        x = np.zeros(SHAPE, np.float32)
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            infer(spin.client, x, True)
        assert time.monotonic() - started < 60, "a failed request must not hang"
        message = str(failed.value)
        # Spin fails the segment's instantiation either after reading the gateway's request (the
        # gateway gets an empty 500) or while the request is still being sent (a broken write: 503).
        answered = rf"^\[500\] {NAME}-seg-\d at http://seg\d\.spin\.internal answered 500: no message: its host failed it"
        broken = rf"^\[503\] {NAME}-seg-\d is unavailable: no replica answered \(http://seg\d\.spin\.internal: sending the request"
        assert re.search(answered, message) or re.search(broken, message), message
        assert "exceeds memory limits" in "".join(spin.output), "Spin's log names the memory limit"
        assert spin.client.is_server_ready(), "Spin keeps serving"
    finally:
        spin.stop()


@pytest.fixture
def registry(tmp_path):
    binary = need(REGISTRY, "apt-get install docker-registry (Debian's OCI registry)")
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
                      f"http:\n  addr: {address}\n  secret: netless-test\n")
    process = subprocess.Popen([str(binary), "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            pytest.fail(f"docker-registry did not answer on {address}")
        yield address
    finally:
        process.kill()
        process.wait()


def test_real_spin_runs_the_image_netless_pushed(app, registry, tmp_path):
    image = f"{registry}/netless/demo:v1"
    pushed = subprocess.run([NETLESS, "push", str(app), image, "--insecure", "--per-segment"], capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stderr
    cache = ["--cache-dir", str(tmp_path / "spin-cache")]

    spin = Spin(image, "--insecure", *cache)
    try:
        check_answers(spin.client, app, tmp_path, 23)
        assert not spin.client.is_model_ready(f"{NAME}-seg-1"), "segments stay private in the pulled app"
    finally:
        spin.stop()

    # A segment's own image, as one SpinApp runs it: its route is public.
    spin = Spin(f"{registry}/netless/demo-seg1:v1", "--insecure", *cache)
    try:
        assert spin.client.is_model_ready(f"{NAME}-seg-1")
        assert status(f"{spin.url}/v2/models/{NAME}/ready") == 404
    finally:
        spin.stop()


def test_real_spin_fans_out_to_the_shards_of_a_node_bigger_than_the_limit(tmp_path):
    """A MatMul whose weights (4 MiB) exceed what one function may hold under 8 MiB runs as parallel
    shards: the gateway calls them concurrently over service chaining and joins their columns; the
    answer equals onnxruntime on the unsplit model."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    need(SPIN, "the real Spin CLI from ../shared/tools")
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((64, 1 << 14)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"], name="wide"), helper.make_node("Relu", ["a"], ["y"], name="relu")],
        "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1 << 14])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "wide.onnx")
    out = tmp_path / "split"
    subprocess.run([NETLESS, "split", str(tmp_path / "wide.onnx"), "--max-memory", "8MiB", "-o", str(out)], check=True, capture_output=True)
    plan = json.loads((out / "plan.json").read_text())
    groups = [s for s in plan["stages"] if "group" in s]
    assert len(groups) == 1 and len(groups[0]["segments"]) >= 2, plan["stages"]
    subprocess.run([NETLESS, "build", str(out), "--spin"], check=True, capture_output=True)
    x = rng.uniform(-1, 1, (1, 64)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "wide.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    spin = Spin(out / "spin.toml")
    try:
        tensor = httpclient.InferInput("x", [1, 64], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        got = spin.client.infer("wide", [tensor]).as_numpy("y")
        assert got.shape == want.shape and close(got, want), (got, want)
    finally:
        spin.stop()
