"""Sends one OIP v2 inference request to a server and prints the answer.

    python3 scripts/oip_request.py http://127.0.0.1:8080 MODEL [NAME=FILE.npy ...]

Reads the model's metadata, fills every input not given as a .npy file with a deterministic pattern of
its datatype and shape, posts a JSON request (no client library needed) and prints each output.
"""
import json
import sys
import urllib.error
import urllib.request

import numpy as np

TYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
         "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def main(url, model, *given):
    files = dict(arg.split("=", 1) for arg in given)
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model}") as response:
            metadata = json.load(response)
    except urllib.error.HTTPError as error:
        sys.exit(f"error {error.code}: {json.load(error)['error']}")
    except urllib.error.URLError as error:
        sys.exit(f"cannot reach {url}: {error.reason}")
    inputs = []
    for spec in metadata["inputs"]:
        if spec["name"] in files:
            value = np.load(files[spec["name"]]).astype(TYPES[spec["datatype"]])
        else:
            count = int(np.prod(spec["shape"]))
            value = (np.arange(count) % 7 / 7).reshape(spec["shape"]).astype(TYPES[spec["datatype"]])
        inputs.append({"name": spec["name"], "shape": list(value.shape), "datatype": spec["datatype"],
                       "data": value.ravel().tolist()})
    body = json.dumps({"id": "demo", "inputs": inputs}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        sys.exit(f"error {error.code}: {json.load(error)['error']}")
    for output in answer["outputs"]:
        values = np.array(output["data"]).reshape(output["shape"])
        print(f"{output['name']} {output['datatype']} {output['shape']}: {np.array2string(values, precision=4)}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
