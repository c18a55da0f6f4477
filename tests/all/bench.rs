//! `netless bench` measures a model beside the reference engines: here the onnxruntime-web column.
//! With $NETLESS_ORT_WEB naming a folder where the npm package is installed (as .ci/run does), it must
//! run and reproduce native tract; without, the report must say why it did not run.

use prost::Message;

use crate::common;
use crate::onnx_builder::{model, node, value, weight};
use netless::onnx::pb::GraphProto;

#[test]
fn bench_runs_onnxruntime_web_beside_native_tract_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let graph = GraphProto {
        name: "mm".into(),
        node: vec![node("MatMul", &["x", "w"], &["p"]), node("Relu", &["p"], &["y"])],
        input: vec![value("x", &[3, 20])],
        output: vec![value("y", &[3, 9])],
        initializer: vec![weight("w", &[20, 9], 1)],
        ..Default::default()
    };
    let onnx = dir.path().join("mm.onnx");
    std::fs::write(&onnx, model(graph).encode_to_vec()).unwrap();
    let out = dir.path().join("out");
    let installed = std::env::var_os("NETLESS_ORT_WEB");
    let empty = dir.path().join("no-npm-packages");
    std::fs::create_dir(&empty).unwrap();
    let ort_web = installed.clone().map_or(empty, Into::into);
    let run = common::netless(&[
        "bench",
        onnx.to_str().unwrap(),
        "--segments",
        "1",
        "--runs",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--ort-web",
        ort_web.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "bench failed: {}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let web = &report["onnxruntime_web"];
    let markdown = String::from_utf8_lossy(&run.stdout);
    let row = markdown.lines().find(|l| l.starts_with("| onnxruntime-web (wasm)")).expect("an onnxruntime-web row");
    if installed.is_some() {
        assert!(web["unavailable"].is_null(), "onnxruntime-web did not run: {}", web["unavailable"]);
        assert_eq!(web["timing"]["runs"], 2, "{web}");
        let checks = web["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 1, "{web}");
        assert_eq!(checks[0]["passed"], true, "onnxruntime-web's output differs from native tract: {web}");
        assert!(row.contains("pass"), "{row}");
    } else {
        let why = web["unavailable"].as_str().expect("a reason");
        assert!(why.contains("onnxruntime-web") || why.contains("`node`"), "{why}");
        assert!(row.contains(&format!("n/a: {why}")), "{row}");
        assert!(web["timing"].is_null(), "{web}");
    }
}
