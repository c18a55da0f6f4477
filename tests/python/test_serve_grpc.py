"""`netless up --grpc-listen`: OIP over gRPC (`inference.GRPCInferenceService`) checked with the real
Triton client (tritonclient[grpc]): health, metadata, inference with raw and typed contents equal to
native tract and onnxruntime, and bad requests getting INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED with the server serving on.

Needs NETLESS_BIN, NETLESS_RUNTIME_WASM and the demo model in NETLESS_MODELS (see scripts/env.sh).
"""
import re
import signal
import subprocess
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from test_serve_tritonclient import MODEL, NAME, NETLESS, SHAPE, built, close, reference  # noqa: F401 (fixture)


class GrpcServer:
    """A `netless up` process serving REST and gRPC on free loopback ports."""

    def __init__(self, target, *args):
        command = [NETLESS, "up", str(target), "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        lines = [self.process.stdout.readline(), self.process.stdout.readline()]
        match = re.search(r"gRPC on ([0-9.]+:\d+)", lines[1])
        assert match, f"no gRPC address in {lines!r}; stderr: {''.join(self.stderr)}"
        self.address = match.group(1)
        self.client = grpcclient.InferenceServerClient(url=self.address)

    def stop(self):
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def infer(client, x, model=NAME, dtype="FP32"):
    tensor = grpcclient.InferInput("x", list(x.shape), dtype)
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor])


def refused(call):
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value.status(), error.value.message()


def test_grpc_health_metadata_and_inference_match_native_tract_and_onnxruntime(built, tmp_path):
    server = GrpcServer(built)
    try:
        client = server.client
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(NAME) and client.is_model_ready(f"{NAME}-seg-1")
        server_metadata = client.get_server_metadata()
        assert server_metadata.name == "netless" and re.fullmatch(r"\d+\.\d+\.\d+", server_metadata.version), server_metadata
        metadata = client.get_model_metadata(NAME)
        assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [("x", "FP32", list(SHAPE))]
        output = metadata.outputs[0].name

        x = np.random.default_rng(5).uniform(0, 1, SHAPE).astype(np.float32)
        tract, onnxruntime = reference(built, x, tmp_path)
        got = infer(client, x).as_numpy(output)
        assert got.dtype == np.float32 and got.shape == tract.shape
        assert close(got, tract) and close(got, onnxruntime), f"{got} vs native tract {tract}"

        # typed contents (fp32_contents) instead of raw_input_contents, straight through the stub
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
        request = service_pb2.ModelInferRequest(model_name=NAME, id="typed-1")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=list(SHAPE))
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        response = stub.ModelInfer(request)
        assert response.id == "typed-1" and response.outputs[0].datatype == "FP32"
        typed = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(tuple(response.outputs[0].shape))
        assert close(typed, tract), f"typed contents: {typed} vs {tract}"
    finally:
        assert server.stop() == 0


def test_grpc_bad_requests_get_their_status_codes_and_the_server_serves_on(built):
    server = GrpcServer(built)
    try:
        client = server.client
        x = np.zeros(SHAPE, np.float32)
        status, message = refused(lambda: infer(client, x, model="nope"))
        assert status == "StatusCode.NOT_FOUND" and "unknown model `nope`" in message
        status, message = refused(lambda: infer(client, np.zeros((1, 3, 224, 225), np.float32)))
        assert status == "StatusCode.INVALID_ARGUMENT" and "`x`" in message, message
        status, message = refused(lambda: infer(client, x.astype(np.float64), dtype="FP64"))
        assert status == "StatusCode.INVALID_ARGUMENT" and "FP64" in message, message
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
        truncated = service_pb2.ModelInferRequest(model_name=NAME, raw_input_contents=[b"\0" * 12])
        truncated.inputs.add(name="x", datatype="FP32", shape=list(SHAPE))
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(truncated)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "12 bytes" in error.value.details()
        assert client.is_server_ready() and infer(client, x).as_numpy(client.get_model_metadata(NAME).outputs[0].name) is not None
    finally:
        assert server.stop() == 0

    small = GrpcServer(built, "--max-body-size", "400KiB")
    try:
        status, message = refused(lambda: infer(small.client, np.zeros(SHAPE, np.float32)))
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and "--max-body-size" in message, message
        assert small.client.is_server_ready()
    finally:
        assert small.stop() == 0

    hurried = GrpcServer(built, "--deadline", "1ms")
    try:
        status, message = refused(lambda: infer(hurried.client, np.zeros(SHAPE, np.float32)))
        assert status == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in message, message
        assert hurried.client.is_server_ready()
    finally:
        assert hurried.stop() == 0
