//! `plan.json`, as `verify`, `build`, `run`, `up` and `deploy` read it from a split's folder.

use std::path::Path;

use netless::plan::Plan;
use netless_fuzz::{Target, fuzz, mutate};

use super::corpus;
use crate::onnx_builder::{model, node, save, value, weight};

const DICTIONARY: &[&[u8]] = &[
    b"\"format\"", b"\"netless-plan\"", b"\"version\"", b"\"segments\"", b"\"index\"", b"\"file\"", b"\"inputs\"",
    b"\"outputs\"", b"\"shape\"", b"\"dtype\"", b"\"f32\"", b"\"i64\"", b"\"bool\"", b"\"../seg.onnx\"", b"\"/etc/passwd\"",
    b"\"boundaries\"", b"\"estimated_memory\"", b"18446744073709551615", b"-1", b"null",
];

/// A real plan of the current format: a small chain split in two.
fn seed(dir: &Path) -> Vec<u8> {
    let graph = netless::onnx::pb::GraphProto {
        name: "chain".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Relu", &["a"], &["b"]), node("Relu", &["b"], &["y"])],
        initializer: vec![weight("w", &[8, 8], 1)],
        input: vec![value("x", &[1, 8])],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    let path = save(dir, "chain.onnx", &model(graph));
    let out = dir.join("split");
    let ok = crate::common::netless(&["split", path.to_str().unwrap(), "--max-memory", "64MiB", "--segments", "2", "-o", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::read(out.join("plan.json")).unwrap()
}

#[test]
fn plan_files() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed(dir.path());
    let file = dir.path().join("fuzzed.json");
    let target = Target { name: "plan", corpus: corpus("plan"), seeds: vec![seed], dictionary: DICTIONARY, mutators: vec![&mutate::json] };
    let report = fuzz(target, |input| {
        std::fs::write(&file, input).unwrap();
        let plan = Plan::load(&file).map_err(|e| e.to_string())?;
        for spec in plan.model.inputs.iter().chain(&plan.model.outputs).chain(plan.segments.iter().flat_map(|s| s.inputs.iter().chain(&s.outputs))) {
            spec.bytes();
        }
        std::fs::write(&file, plan.to_json()).unwrap();
        let again = Plan::load(&file).expect("a written plan loads");
        assert_eq!(again.to_json(), plan.to_json(), "plans round-trip");
        Ok(())
    });
    assert!(report.executions > 100 && report.verdicts > 5, "{report:?}");
}
