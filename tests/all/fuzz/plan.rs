//! `plan.json`, as `verify`, `build`, `run`, `up` and `deploy` read it from a split's folder: chains and
//! DAGs with shard groups (format 2).

use std::path::Path;

use netless::plan::Plan;
use netless_fuzz::{Target, fuzz, mutate};

use super::corpus;
use crate::onnx_builder::{model, node, save, value, weight};

const DICTIONARY: &[&[u8]] = &[
    b"\"format\"", b"\"netless-plan\"", b"\"version\"", b"\"segments\"", b"\"index\"", b"\"file\"", b"\"inputs\"",
    b"\"outputs\"", b"\"shape\"", b"\"dtype\"", b"\"f32\"", b"\"i64\"", b"\"bool\"", b"\"../seg.onnx\"", b"\"/etc/passwd\"",
    b"\"boundaries\"", b"\"estimated_memory\"", b"18446744073709551615", b"-1", b"null",
    b"\"stages\"", b"\"stage\"", b"\"group\"", b"\"shard\"", b"\"joins\"", b"\"partials\"", b"\"after_stage\"",
    b"\"after_segment\"", b"\"op\"", b"\"concat\"", b"\"sum\"", b"\"axis\"", b"\"range\"", b"\"strategy\"", b"\"rows\"",
];

/// Real plans of the current format: a small chain split in two, and a MatMul too big for the limit cut
/// into a group of shards joined by the function after it.
fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let chain = netless::onnx::pb::GraphProto {
        name: "chain".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Relu", &["a"], &["b"]), node("Relu", &["b"], &["y"])],
        initializer: vec![weight("w", &[8, 8], 1)],
        input: vec![value("x", &[1, 8])],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    let wide = netless::onnx::pb::GraphProto {
        name: "wide".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Relu", &["a"], &["y"])],
        initializer: vec![weight("w", &[64, 1 << 14], 1)],
        input: vec![value("x", &[1, 64])],
        output: vec![value("y", &[1, 1 << 14])],
        ..Default::default()
    };
    [(chain, &["--max-memory", "64MiB", "--segments", "2"][..]), (wide, &["--max-memory", "8MiB"])]
        .into_iter()
        .map(|(graph, args)| {
            let name = graph.name.clone();
            let path = save(dir, &format!("{name}.onnx"), &model(graph));
            let out = dir.join(&name);
            let mut command = vec!["split", path.to_str().unwrap(), "-o", out.to_str().unwrap()];
            command.extend_from_slice(args);
            let ok = crate::common::netless(&command);
            assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
            std::fs::read(out.join("plan.json")).unwrap()
        })
        .collect()
}

#[test]
fn plan_files() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = seeds(dir.path());
    assert!(String::from_utf8_lossy(&seeds[1]).contains("\"group\""), "the second seed has a shard group");
    let file = dir.path().join("fuzzed.json");
    let target = Target { name: "plan", corpus: corpus("plan"), seeds, dictionary: DICTIONARY, mutators: vec![&mutate::json] };
    let report = fuzz(target, |input| {
        std::fs::write(&file, input).unwrap();
        let plan = Plan::load(&file).map_err(|e| e.to_string())?;
        for spec in plan.model.inputs.iter().chain(&plan.model.outputs).chain(plan.segments.iter().flat_map(|s| s.inputs.iter().chain(&s.outputs))) {
            spec.bytes();
        }
        for seg in &plan.segments {
            seg.describe(&plan);
        }
        let _ = plan.require_composable();
        std::fs::write(&file, plan.to_json()).unwrap();
        let again = Plan::load(&file).expect("a written plan loads");
        assert_eq!(again.to_json(), plan.to_json(), "plans round-trip");
        Ok(())
    });
    assert!(report.executions > 100 && report.verdicts > 5, "{report:?}");
}
