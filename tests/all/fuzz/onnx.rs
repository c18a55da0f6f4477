//! ONNX files, as `inspect`, `plan` and `split` read them: protobuf decoding, the sanity checks,
//! tract's analysis and the runtime's preparation of the whole model.

use std::path::Path;

use netless::onnx::pb::{GraphProto, ModelProto, NodeProto};
use netless::onnx::{Graph, OnnxModel};
use netless_fuzz::mutate::INTERESTING;
use netless_fuzz::{Rng, Target, fuzz};
use prost::Message;

use super::corpus;
use crate::onnx_builder::{graph_attribute, int_attribute, ints_attribute, model, node, typed_value, value, weight};

const OPS: &[&str] = &[
    "Relu", "Add", "Mul", "MatMul", "Gemm", "Conv", "MaxPool", "Reshape", "Transpose", "Concat", "Gather", "Softmax", "If",
    "Squeeze", "Unsqueeze", "Slice", "ReduceSum", "ReduceMean", "Cast", "Identity", "Flatten", "Split", "Greater", "Where",
];

const DICTIONARY: &[&[u8]] = &[b"Relu", b"MatMul", b"Conv", b"If", b"then_branch", b"kernel_shape", b"axes", b"\x08\x08", b"\x12\x00"];

fn seeds() -> Vec<ModelProto> {
    let chain = GraphProto {
        name: "chain".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Relu", &["a"], &["b"]), node("Add", &["b", "x"], &["y"])],
        initializer: vec![weight("w", &[8, 8], 1)],
        input: vec![value("x", &[1, 8])],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    let mut conv = node("Conv", &["img", "k", "kb"], &["c"]);
    conv.attribute = vec![ints_attribute("kernel_shape", &[3, 3]), ints_attribute("pads", &[1, 1, 1, 1]), ints_attribute("strides", &[1, 1])];
    let mut pool = node("MaxPool", &["c"], &["p"]);
    pool.attribute = vec![ints_attribute("kernel_shape", &[2, 2]), ints_attribute("strides", &[2, 2])];
    let mut flat = node("Flatten", &["p"], &["f"]);
    flat.attribute = vec![int_attribute("axis", 1)];
    let mut soft = node("Softmax", &["f"], &["prob"]);
    soft.attribute = vec![int_attribute("axis", -1)];
    let convnet = GraphProto {
        name: "convnet".into(),
        node: vec![conv, pool, flat, soft],
        initializer: vec![weight("k", &[2, 1, 3, 3], 2), weight("kb", &[2], 3)],
        input: vec![value("img", &[1, 1, 4, 4])],
        output: vec![value("prob", &[1, 8])],
        ..Default::default()
    };
    let then_branch = GraphProto { name: "then".into(), node: vec![node("Relu", &["a"], &["r"])], output: vec![value("r", &[1, 8])], ..Default::default() };
    let else_branch = GraphProto { name: "else".into(), node: vec![node("Add", &["a", "a"], &["s"])], output: vec![value("s", &[1, 8])], ..Default::default() };
    let mut if_node = node("If", &["cond"], &["b"]);
    if_node.attribute = vec![graph_attribute("then_branch", then_branch), graph_attribute("else_branch", else_branch)];
    let branchy = GraphProto {
        name: "branchy".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), if_node, node("Relu", &["b"], &["y"])],
        initializer: vec![weight("w", &[8, 8], 3)],
        input: vec![value("x", &[1, 8]), typed_value("cond", 9, Some(&[]))],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    vec![model(chain), model(convnet), model(branchy)]
}

/// A change to one field of a decoded model: an operator, attribute, input name, dimension,
/// element type, weight, node or operator-set version.
fn mutate_model(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut proto = ModelProto::decode(input).ok()?;
    let number = |rng: &mut Rng| *rng.pick(INTERESTING);
    match rng.below(9) {
        0 => proto.opset_import.first_mut()?.version = *rng.pick(&[1, 6, 7, 9, 11, 13, 17, 18, 21, 99]),
        1 => proto.ir_version = number(rng),
        _ => {
            let graph = pick_graph(proto.graph.as_mut()?, rng);
            match rng.below(7) {
                0 if !graph.node.is_empty() => {
                    let i = rng.below(graph.node.len());
                    graph.node[i].op_type = rng.pick(OPS).to_string();
                }
                1 => {
                    let attribute = pick_node(graph, rng)?.attribute.iter_mut().filter(|a| a.g.is_none()).nth(0)?;
                    match attribute.ints.is_empty() {
                        true => attribute.i = number(rng),
                        false => {
                            let i = rng.below(attribute.ints.len());
                            attribute.ints[i] = number(rng);
                        }
                    }
                }
                2 => {
                    let names: Vec<String> = graph.node.iter().flat_map(|n| n.output.clone()).chain(graph.input.iter().map(|i| i.name.clone())).chain(["".into(), "nowhere".into()]).collect();
                    let name = rng.pick(&names).clone();
                    let node = pick_node(graph, rng)?;
                    let i = rng.below(node.input.len().max(1));
                    match node.input.get_mut(i) {
                        Some(slot) => *slot = name,
                        None => node.input.push(name),
                    }
                }
                3 if !graph.initializer.is_empty() => {
                    let i = rng.below(graph.initializer.len());
                    let init = &mut graph.initializer[i];
                    match rng.below(4) {
                        0 if !init.dims.is_empty() => {
                            let d = rng.below(init.dims.len());
                            init.dims[d] = number(rng);
                        }
                        1 => init.data_type = rng.below(18) as i32,
                        2 => {
                            let keep = rng.below(init.float_data.len() + 1);
                            init.float_data.truncate(keep);
                        }
                        _ => init.dims.push(*rng.pick(&[1, 2, 0])),
                    }
                }
                4 => {
                    let values: Vec<_> = graph.input.iter_mut().chain(graph.output.iter_mut()).collect();
                    let n = values.len();
                    let info = values.into_iter().nth(rng.below(n.max(1)))?;
                    let Some(netless::onnx::pb::type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) else { return None };
                    match (rng.below(3), t.shape.as_mut()) {
                        (0, _) => t.elem_type = rng.below(18) as i32,
                        (1, Some(shape)) if !shape.dim.is_empty() => {
                            let d = rng.below(shape.dim.len());
                            shape.dim[d].value = Some(match rng.chance(3) {
                                true => netless::onnx::pb::tensor_shape_proto::dimension::Value::DimParam("n".into()),
                                false => netless::onnx::pb::tensor_shape_proto::dimension::Value::DimValue(number(rng)),
                            });
                        }
                        _ => t.shape = None,
                    }
                }
                5 if graph.node.len() > 1 => {
                    graph.node.remove(rng.below(graph.node.len()));
                }
                _ => {
                    let copy = pick_node(graph, rng)?.clone();
                    let at = rng.below(graph.node.len() + 1);
                    graph.node.insert(at, copy);
                }
            }
        }
    }
    Some(proto.encode_to_vec())
}

/// The graph, or now and then one of its subgraphs.
fn pick_graph<'a>(graph: &'a mut GraphProto, rng: &mut Rng) -> &'a mut GraphProto {
    let has_subgraph = graph.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some()));
    if !has_subgraph || rng.chance(2) {
        return graph;
    }
    let subgraphs: Vec<&mut GraphProto> = graph.node.iter_mut().flat_map(|n| n.attribute.iter_mut().filter_map(|a| a.g.as_mut())).collect();
    let n = subgraphs.len();
    subgraphs.into_iter().nth(rng.below(n)).expect("one exists")
}

fn pick_node<'a>(graph: &'a mut GraphProto, rng: &mut Rng) -> Option<&'a mut NodeProto> {
    let n = graph.node.len();
    (n > 0).then(|| &mut graph.node[rng.below(n)])
}

/// ONNX files through loading and tract's whole analysis and preparation.
#[test]
fn onnx_models() {
    let mut seeds: Vec<Vec<u8>> = seeds().iter().map(Message::encode_to_vec).collect();
    if let Some(small) = crate::common::model("mtcnn_pnet.onnx") {
        seeds.push(std::fs::read(small).unwrap());
    }
    let target = Target { name: "onnx", corpus: corpus("onnx"), seeds, dictionary: DICTIONARY, mutators: vec![&mutate_model] };
    let report = fuzz(target, |input| {
        let model = OnnxModel::from_bytes(Path::new("fuzzed.onnx"), input).map_err(|e| e.to_string())?;
        let graph = Graph::analyse(&model, &Vec::new()).map_err(|e| e.to_string())?;
        for node in &graph.nodes {
            assert!(node.inputs.iter().chain(&node.outputs).all(|&t| t < graph.tensors.len()), "node `{}` names tensors that exist", node.name);
        }
        assert!(graph.outputs.iter().all(|&t| t < graph.tensors.len()));
        Ok(())
    });
    assert!(report.executions > 20 && report.verdicts > 3, "{report:?}");
}
