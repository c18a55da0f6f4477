//! A model the runtime cannot prepare is refused by the first command that can know (`inspect`,
//! `plan`, `split`; `build` for a segment changed since), naming the node and why, with nothing
//! written. Also: closed pipes end commands quietly, and scalar inputs take `--input-shape NAME=`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use netless::onnx::pb::{GraphProto, ModelProto};

use crate::common::{failure, netless};
use crate::onnx_builder::{graph_attribute, int_attribute, ints_attribute, model, node, save, typed_value, value};

fn scalar_weight(name: &str, v: f32) -> netless::onnx::pb::TensorProto {
    netless::onnx::pb::TensorProto { name: name.into(), data_type: 1, float_data: vec![v], ..Default::default() }
}

/// `y = If(sum(x) > 0) then relu(x) [1,8] else mean(x, axis 1) [1,1]`: valid ONNX (onnxruntime runs
/// it), but tract needs both branches to give the same shape.
fn mismatched_if() -> ModelProto {
    let then_branch = GraphProto { name: "then".into(), node: vec![node("Relu", &["x"], &["r"])], output: vec![value("r", &[1, 8])], ..Default::default() };
    let mut mean = node("ReduceMean", &["x"], &["m"]);
    mean.attribute = vec![ints_attribute("axes", &[1])];
    let else_branch = GraphProto { name: "else".into(), node: vec![mean], output: vec![value("m", &[1, 1])], ..Default::default() };
    if_on_positive_sum("mismatched_if", then_branch, else_branch)
}

/// DepthToSpace with block size 2 over 3 channels: an operator tract knows, which it cannot type
/// for this shape (the depth must be a multiple of 4).
fn depth_to_space_of_three_channels() -> ModelProto {
    let mut d2s = node("DepthToSpace", &["x"], &["y"]);
    d2s.name = "d2s".into();
    d2s.attribute = vec![int_attribute("blocksize", 2)];
    model(GraphProto {
        name: "d2s".into(),
        node: vec![node("Relu", &["img"], &["x"]), d2s],
        input: vec![value("img", &[1, 3, 4, 4])],
        output: vec![typed_value("y", 1, None)],
        ..Default::default()
    })
}

/// `y = If(sum(x) > 0) then float(NonZero(x)) [2, n] else concat(x, x) [2, 8]`: the model's input
/// is concrete, the dynamic dimension `n` appears only inside the then branch.
fn dynamic_inside_a_branch() -> ModelProto {
    let mut cast = node("Cast", &["nz"], &["r"]);
    cast.name = "then_cast".into();
    cast.attribute = vec![int_attribute("to", 1)];
    let then_branch = GraphProto { name: "then".into(), node: vec![node("NonZero", &["x"], &["nz"]), cast], output: vec![typed_value("r", 1, None)], ..Default::default() };
    let mut concat = node("Concat", &["x", "x"], &["m"]);
    concat.attribute = vec![int_attribute("axis", 0)];
    let else_branch = GraphProto { name: "else".into(), node: vec![concat], output: vec![typed_value("m", 1, None)], ..Default::default() };
    if_on_positive_sum("dynamic_if", then_branch, else_branch)
}

/// `y = If(sum(x) > 0) then .. else ..` over an input `x` of shape [1, 8], the If node named `choose`.
fn if_on_positive_sum(name: &str, then_branch: GraphProto, else_branch: GraphProto) -> ModelProto {
    let mut sum = node("ReduceSum", &["x"], &["s"]);
    sum.attribute = vec![int_attribute("keepdims", 0)];
    let mut choose = node("If", &["c"], &["y"]);
    choose.name = "choose".into();
    choose.attribute = vec![graph_attribute("then_branch", then_branch), graph_attribute("else_branch", else_branch)];
    model(GraphProto {
        name: name.into(),
        node: vec![sum, node("Greater", &["s", "zero"], &["c"]), choose],
        initializer: vec![scalar_weight("zero", 0.0)],
        input: vec![value("x", &[1, 8])],
        output: vec![typed_value("y", 1, None)],
        ..Default::default()
    })
}

/// `inspect`, `plan` and `split` all refuse the model, naming the node (`node`) and saying `why`; `split`
/// writes nothing.
fn assert_refused(path: &Path, node: &str, why: &str) {
    let model = path.to_str().unwrap();
    let out = path.with_extension("out");
    for args in [vec!["inspect", model], vec!["plan", model, "--max-memory", "64MiB"], vec!["split", model, "--max-memory", "64MiB", "-o", out.to_str().unwrap()]] {
        let err = failure(&netless(&args));
        assert!(err.contains("cannot be prepared") && err.contains(node) && err.contains(why), "{}: {err}", args[0]);
    }
    assert!(!out.exists(), "split wrote {}", out.display());
}

#[test]
fn if_branches_with_different_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(&save(dir.path(), "mismatched_if.onnx", &mismatched_if()), "(inside `choose`)", "the branches of If `choose` give outputs of different shapes");
}

#[test]
fn an_operator_tract_cannot_type_for_these_shapes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(&save(dir.path(), "d2s.onnx", &depth_to_space_of_three_channels()), "node `d2s`", "multiple of (blocksize * bloksize)");
}

#[test]
fn a_dynamic_dimension_inside_a_subgraph_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(&save(dir.path(), "dynamic_if.onnx", &dynamic_inside_a_branch()), "node `then_cast` (inside `choose`)", "got 2,");
}

/// `y = MaxPool(img [1,1,4,4])` with the given kernel, strides 1 and `auto_pad`, named `pool`; inside
/// the then branch of If `choose` (whose else branch is the same pool) when `branched`.
fn pool(kernel: &[i64], auto_pad: &str, branched: bool) -> ModelProto {
    let mut pool = node("MaxPool", &["img"], &["p"]);
    pool.name = "pool".into();
    pool.attribute = vec![ints_attribute("kernel_shape", kernel), ints_attribute("strides", &[1, 1])];
    pool.attribute.push(netless::onnx::pb::AttributeProto { name: "auto_pad".into(), s: auto_pad.as_bytes().to_vec(), r#type: 3, ..Default::default() });
    let mut graph = GraphProto { name: "pool".into(), input: vec![value("img", &[1, 1, 4, 4])], output: vec![typed_value("y", 1, None)], ..Default::default() };
    if branched {
        let mut other = pool.clone();
        other.name = "other_pool".into();
        other.output = vec!["m".into()];
        let then_branch = GraphProto { name: "then".into(), node: vec![pool], output: vec![typed_value("p", 1, None)], ..Default::default() };
        let else_branch = GraphProto { name: "else".into(), node: vec![other], output: vec![typed_value("m", 1, None)], ..Default::default() };
        let mut choose = node("If", &["c"], &["y"]);
        choose.name = "choose".into();
        choose.attribute = vec![graph_attribute("then_branch", then_branch), graph_attribute("else_branch", else_branch)];
        graph.node = vec![choose];
        graph.input.push(typed_value("c", 9, Some(&[])));
    } else {
        pool.output = vec!["y".into()];
        graph.node = vec![pool];
    }
    model(graph)
}

/// A pooling window wider than its input is invalid ONNX, and tract enumerates every window position
/// before checking (a kernel of 2^31 kept it busy for hours, found by the `onnx` fuzz target): it is
/// refused at once, in the graph and inside a branch, and a window of over 2^24 positions already
/// when the file is read (tract would list them while folding constants). A window only automatic padding can fit
/// (3x3 on a 1x1 map) is fine.
#[test]
fn a_window_wider_than_its_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wide = pool(&[1 << 20, 2], "NOTSET", false);
    assert_refused(&save(dir.path(), "wide.onnx", &wide), "node `pool`", "its window spans 1048576 on spatial axis 0 (kernel 1048576, dilation 1), more than its input's 4 with its padding 0 + 0");
    let huge = save(dir.path(), "huge.onnx", &pool(&[(1 << 31) - 1, 2], "NOTSET", true));
    let err = failure(&netless(&["inspect", huge.to_str().unwrap()]));
    assert!(err.contains("node `pool` (MaxPool) has kernel_shape [2147483647, 2]: a window needs dimensions above 0 and at most 16777216 positions"), "{err}");
    assert_refused(&save(dir.path(), "branch.onnx", &pool(&[5, 4], "VALID", true)), "node `pool` (inside `choose`)", "spans 5 on spatial axis 0");
    assert_refused(&save(dir.path(), "same.onnx", &pool(&[2, 10], "SAME_UPPER", false)), "node `pool`", "spans 10 on spatial axis 1");
    let fits = save(dir.path(), "fits.onnx", &pool(&[4, 4], "VALID", true));
    assert!(netless(&["inspect", fits.to_str().unwrap()]).status.success(), "a window as wide as its input is fine");
    let same = save(dir.path(), "same_fits.onnx", &pool(&[3, 9], "SAME_UPPER", false));
    assert!(netless(&["inspect", same.to_str().unwrap()]).status.success(), "a window padding can fit is fine");
}

/// A Transpose whose `perm` repeats an axis kept tract's typing busy for minutes (found by the `onnx`
/// fuzz target): it is refused when the file is read, naming the node; a true permutation is fine.
#[test]
fn a_transpose_perm_that_is_not_a_permutation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let transpose = |perm: &[i64]| {
        let mut t = node("Transpose", &["x"], &["y"]);
        t.attribute = vec![ints_attribute("perm", perm)];
        model(GraphProto { name: "t".into(), node: vec![t], input: vec![value("x", &[1, 3, 4, 5])], output: vec![value("y", &[1, 5, 3, 4])], ..Default::default() })
    };
    for (file, perm) in [("repeats.onnx", [0, 3, 0, 2]), ("outside.onnx", [0, 3, 1, 4])] {
        let err = failure(&netless(&["inspect", save(dir.path(), file, &transpose(&perm)).to_str().unwrap()]));
        assert!(err.contains(&format!("node `y` (Transpose) has perm {perm:?}: it must list every axis from 0 to 3 once")), "{err}");
    }
    let fine = save(dir.path(), "fine.onnx", &transpose(&[0, 3, 1, 2]));
    assert!(netless(&["inspect", fine.to_str().unwrap()]).status.success(), "a permutation is fine");
}

/// A split whose segment was replaced (plan updated to match) by one the runtime cannot prepare:
/// `build` refuses it before making any component.
#[test]
fn build_refuses_a_segment_that_cannot_be_prepared() {
    let Some(runtime) = crate::common::runtime_wasm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = model(GraphProto {
        name: "chain".into(),
        node: vec![node("Relu", &["x"], &["a"]), node("Relu", &["a"], &["y"])],
        input: vec![value("x", &[1, 8])],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    });
    let path = save(dir.path(), "chain.onnx", &good);
    let out = dir.path().join("out");
    assert!(netless(&["split", path.to_str().unwrap(), "--max-memory", "64MiB", "-o", out.to_str().unwrap()]).status.success());
    let bad = prost::Message::encode_to_vec(&mismatched_if());
    let mut plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    std::fs::write(out.join("seg-00.onnx"), &bad).unwrap();
    plan["segments"][0]["sha256"] = netless::onnx::load::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bad)).into();
    plan["segments"][0]["inputs"] = serde_json::json!([{ "name": "x", "dtype": "f32", "shape": [1, 8] }]);
    std::fs::write(out.join("plan.json"), plan.to_string()).unwrap();
    let err = failure(&netless(&["build", out.to_str().unwrap(), "--runtime", runtime.to_str().unwrap(), "--lazy"]));
    assert!(err.contains("segment 0") && err.contains("`choose`") && err.contains("cannot be prepared"), "{err}");
    assert!(!out.join("components").exists(), "no component was made");
}

/// `netless inspect MODEL | head -c 1` ends quietly: no panic, no message, success. open_nsfw's
/// table is larger than a pipe holds, so a write after the reader left fails.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let Some(path) = crate::common::model("open_nsfw.onnx") else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_netless")).args(["inspect", path.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.is_empty(), "{:?} {stderr}", output.status);
}

/// A rank-0 input is given as `NAME=` or `NAME=scalar`; a rank mismatch is still refused.
#[test]
fn scalar_input_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut graph = GraphProto {
        name: "scale".into(),
        node: vec![node("Mul", &["x", "k"], &["y"])],
        input: vec![value("x", &[1, 8]), typed_value("k", 1, None)],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    let path = save(dir.path(), "scale.onnx", &model(graph.clone()));
    let err = failure(&netless(&["plan", path.to_str().unwrap(), "--max-memory", "64MiB"]));
    assert!(err.contains("input `k`") && err.contains("--input-shape k="), "{err}");
    for given in ["k=", "k=scalar"] {
        let ok = netless(&["plan", path.to_str().unwrap(), "--max-memory", "64MiB", "--input-shape", given]);
        assert!(ok.status.success(), "{given}: {}", String::from_utf8_lossy(&ok.stderr));
    }
    graph.input[1] = typed_value("k", 1, Some(&[1]));
    let path = save(dir.path(), "scale1.onnx", &model(graph));
    let err = failure(&netless(&["plan", path.to_str().unwrap(), "--max-memory", "64MiB", "--input-shape", "k="]));
    assert!(err.contains("input `k`") && err.contains("does not fit the declared shape"), "{err}");
}
