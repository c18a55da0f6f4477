"""Reference Open Inference Protocol v2 (KServe/Triton REST) server for benchmarks.

Serves one ONNX model with onnxruntime (CPU) through KServe's own Python model
server (kserve.Model + kserve.ModelServer), so NetLess can be compared, in one
run, against a real, installable OIP v2 implementation: same routes
(/v2/health/ready, /v2/models/NAME, /v2/models/NAME/infer), JSON tensors and
the binary tensor extension (Inference-Header-Content-Length, binary_data_size,
binary_data / binary_data_output), exactly as KServe implements them.

Install (into a venv, never system Python; ~45 s from an empty pip cache, ~580 MB):
    python3 -m venv ~/.cache/netless/oip-ref-venv
    ~/.cache/netless/oip-ref-venv/bin/pip install -r scripts/oip-reference-requirements.txt
(the full pinned set; the top level is kserve==0.21.0 onnxruntime==1.32.0
numpy==2.4.6, plus tritonclient[http]==2.73.0 for client-side checks).

KServe quirks: a JSON infer request needs "Content-Type: application/json"
(without it the body is taken as binary and fails with 400 for lack of
Inference-Header-Content-Length); binary inputs are turned into Python lists
and back inside KServe, so binary requests cost about as much as JSON ones.

Usage:
    python scripts/oip_reference_server.py MODEL.onnx --name NAME --port PORT [--threads 1]
Prints "ready http://127.0.0.1:PORT" on stdout once it accepts requests;
SIGTERM/SIGINT stop it cleanly. Listens on 127.0.0.1 only; KServe's gRPC
server is disabled.
"""
import argparse
import logging
import sys
import threading
import time
import urllib.request

import numpy as np
import onnxruntime as ort
import uvicorn

# KServe hard-codes host="0.0.0.0" for its uvicorn server: force loopback.
_Config = uvicorn.Config


class _LoopbackConfig(_Config):
    def __init__(self, *a, **kw):
        kw["host"] = "127.0.0.1"
        super().__init__(*a, **kw)


uvicorn.Config = _LoopbackConfig

import kserve  # noqa: E402  (after the patch; it parses sys.argv leniently)
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402

ORT_TO_OIP = {"float": "FP32", "double": "FP64", "float16": "FP16",
              "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
              "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
              "uint64": "UINT64", "bool": "BOOL", "string": "BYTES"}


def _meta(args):
    return [{"name": a.name, "datatype": ORT_TO_OIP.get(a.type[7:-1], a.type),
             "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]


class OnnxModel(kserve.Model):
    def __init__(self, name, path, threads):
        super().__init__(name)
        self.path, self.threads = path, threads

    def load(self):
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def get_input_types(self):
        return _meta(self.sess.get_inputs())

    def get_output_types(self):
        return _meta(self.sess.get_outputs())

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        names = [o.name for o in self.sess.get_outputs()]
        outs = self.sess.run(None, feeds)
        infer_outputs = []
        for n, arr in zip(names, outs):
            arr = np.asarray(arr)
            o = InferOutput(name=n, shape=list(arr.shape),
                            datatype=ORT_TO_OIP.get(str(arr.dtype).replace("float32", "float")
                                                    .replace("float64", "double"), "FP32"))
            o.set_data_from_numpy(arr, binary_data=False)
            infer_outputs.append(o)
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=infer_outputs,
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)


def _announce(port):
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    print("ready " + url, flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.1)
    print("server did not become ready", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    a, _ = p.parse_known_args()
    model = OnnxModel(a.name, a.model, a.threads)
    model.load()
    threading.Thread(target=_announce, args=(a.port,), daemon=True).start()
    server = kserve.ModelServer(http_port=a.port, enable_grpc=False, workers=1)
    # KServe logs access lines to stdout; keep stdout for the "ready" line alone.
    for lg in [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout:
                h.setStream(sys.stderr)
    server.start([model])


if __name__ == "__main__":
    main()
