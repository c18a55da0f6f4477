//! The graph of one shard: the sharded node with its slice of the weights, the slice of its input it
//! reduces over (reduction and group cuts), or the masking that keeps a Gather shard to its rows.

use tract_onnx::pb::{self, AttributeProto, NodeProto, TensorProto};

use crate::onnx::{ElemType, Graph, OnnxModel, TensorId};
use crate::plan::shard::{ShardPlan, Strategy};
use crate::{Error, Result};

/// An integer attribute.
pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: pb::attribute_proto::AttributeType::Int as i32, i: value, ..Default::default() }
}

/// An integer-list attribute.
pub(super) fn ints_attribute(name: &str, values: Vec<i64>) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: pb::attribute_proto::AttributeType::Ints as i32, ints: values, ..Default::default() }
}

fn node(op: &str, name: String, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name,
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn tensor(name: String, dtype: ElemType, dims: Vec<i64>, raw_data: Vec<u8>) -> TensorProto {
    TensorProto { name, dims, data_type: dtype.onnx_code(), raw_data, ..Default::default() }
}

fn int_scalar(name: String, dtype: ElemType, value: i64) -> TensorProto {
    let raw = match dtype {
        ElemType::I32 => (value as i32).to_le_bytes().to_vec(),
        _ => value.to_le_bytes().to_vec(),
    };
    tensor(name, dtype, vec![], raw)
}

/// The weight `t` as an initializer ([`super::weight_initializer`]).
pub(super) fn weight_proto(model: &OnnxModel, graph: &Graph, t: TensorId) -> Result<TensorProto> {
    super::weight_initializer(model, graph, t).ok_or_else(|| unsupported(&graph.tensors[t], "is a Constant without a `value` tensor"))
}

fn unsupported(tensor: &crate::onnx::Tensor, reason: &str) -> Error {
    Error::Tensor { name: tensor.name.clone(), reason: format!("cannot be cut into shards: it {reason}") }
}

/// A weight's data as little-endian bytes.
fn raw_bytes(graph: &Graph, t: TensorId, proto: &TensorProto) -> Result<Vec<u8>> {
    let raw = proto.raw_data.clone();
    if raw.is_empty() {
        return Err(unsupported(&graph.tensors[t], &format!("stores {} outside raw_data", graph.tensors[t].dtype)));
    }
    if raw.len() as u64 != graph.tensors[t].bytes() {
        return Err(unsupported(&graph.tensors[t], "holds fewer values than its shape"));
    }
    Ok(raw)
}

/// Rows `[lo, hi)` of `axis` of a row-major array of `dims` with elements of `size` bytes.
fn slice_axis(data: &[u8], dims: &[u64], size: u64, axis: usize, lo: u64, hi: u64) -> Vec<u8> {
    let outer: u64 = dims[..axis].iter().product();
    let inner: u64 = dims[axis + 1..].iter().product::<u64>() * size;
    let rows = dims[axis];
    let mut out = Vec::with_capacity((outer * (hi - lo) * inner) as usize);
    for o in 0..outer {
        let base = o * rows * inner;
        out.extend_from_slice(&data[(base + lo * inner) as usize..(base + hi * inner) as usize]);
    }
    out
}

/// The units `[lo, hi)` of `extent` as element ranges of an axis of length `len`.
fn scale(len: u64, extent: u64, (lo, hi): (u64, u64)) -> (u64, u64) {
    let per = len / extent;
    (lo * per, hi * per)
}

fn default_opset(model: &OnnxModel) -> i64 {
    model.proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(1, |o| o.version)
}

/// The nodes and initializers of shard `j` of `plan`: it reads the node's inputs (joined if they came in
/// parts) and returns its part of the node's output.
pub fn shard_graph(model: &OnnxModel, graph: &Graph, plan: &ShardPlan, j: usize) -> Result<(Vec<NodeProto>, Vec<TensorProto>)> {
    let layout = &plan.layout;
    let source_node = &graph.nodes[plan.node];
    let mut shard = model.graph().node[source_node.proto_index].clone();
    shard.name = format!("{}.shard{j}", source_node.name);
    let range = plan.shards[j].range;
    let prefix = format!("netless.shard{j}");
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let rename = |node: &mut NodeProto, from: &str, to: &str| {
        for input in node.input.iter_mut().filter(|i| *i == from) {
            *input = to.to_string();
        }
    };
    for &(w, axis) in &layout.sliced {
        let tensor = &graph.tensors[w];
        let proto = weight_proto(model, graph, w)?;
        let data = raw_bytes(graph, w, &proto)?;
        let (lo, hi) = scale(tensor.shape[axis], layout.extent, range);
        let mut dims = tensor.shape.clone();
        dims[axis] = hi - lo;
        let mut sliced = slice_axis(&data, &tensor.shape, tensor.dtype.size(), axis, lo, hi);
        if layout.strategy == Strategy::Rows {
            // one row of zeros answers the indices outside this shard's rows
            sliced.resize(sliced.len() + (tensor.bytes() / tensor.shape[0]) as usize, 0);
            dims[0] += 1;
        }
        let name = format!("{}.shard{j}", tensor.name);
        rename(&mut shard, &tensor.name, &name);
        initializers.push(tensor_proto(name, tensor.dtype, &dims, sliced));
    }
    for &w in &layout.whole {
        initializers.push(weight_proto(model, graph, w)?);
    }
    for &w in &layout.first_only {
        let bias = &graph.tensors[w];
        if j == 0 {
            initializers.push(weight_proto(model, graph, w)?);
        } else {
            let name = format!("{prefix}.zero.{}", bias.name);
            rename(&mut shard, &bias.name, &name);
            initializers.push(tensor(name, bias.dtype, vec![], vec![0; bias.dtype.size() as usize]));
        }
    }
    let input = graph.tensors[layout.input].clone();
    if let Some(axis) = layout.input_axis {
        let (lo, hi) = scale(input.shape[axis], layout.extent, range);
        let sliced = format!("{prefix}.input");
        nodes.push(slice(model, &format!("{prefix}.slice"), (&input.name, &sliced), axis, (lo, hi), &mut initializers));
        rename(&mut shard, &input.name, &sliced);
    }
    if layout.strategy == Strategy::Groups {
        for attr in shard.attribute.iter_mut().filter(|a| a.name == "group") {
            attr.i = (range.1 - range.0) as i64;
        }
    }
    if layout.strategy == Strategy::Rows {
        let (lo, hi) = range;
        let dt = input.dtype;
        let n = |k: &str| format!("{prefix}.{k}");
        for (k, value) in [("zero", 0), ("rows", input_rows(graph, plan) as i64), ("lo", lo as i64), ("hi", hi as i64), ("fill", (hi - lo) as i64)] {
            initializers.push(int_scalar(n(k), dt, value));
        }
        let idx = input.name.as_str();
        nodes.push(node("Less", n("negative"), &[idx, &n("zero")], &n("negative"), vec![]));
        nodes.push(node("Add", n("wrapped"), &[idx, &n("rows")], &n("wrapped"), vec![]));
        nodes.push(node("Where", n("index"), &[&n("negative"), &n("wrapped"), idx], &n("index"), vec![]));
        nodes.push(node("Less", n("below"), &[&n("index"), &n("lo")], &n("below"), vec![]));
        nodes.push(node("Not", n("not_below"), &[&n("below")], &n("not_below"), vec![]));
        nodes.push(node("Less", n("under_hi"), &[&n("index"), &n("hi")], &n("under_hi"), vec![]));
        nodes.push(node("And", n("inside"), &[&n("not_below"), &n("under_hi")], &n("inside"), vec![]));
        nodes.push(node("Sub", n("local"), &[&n("index"), &n("lo")], &n("local"), vec![]));
        nodes.push(node("Where", n("row"), &[&n("inside"), &n("local"), &n("fill")], &n("row"), vec![]));
        rename(&mut shard, idx, &n("row"));
    }
    shard.output = vec![plan.partial_name(graph, layout.outputs[0], j)];
    nodes.push(shard);
    Ok((nodes, initializers))
}

/// A `Slice` node named `name` making `output` from elements `[lo, hi)` of `input`'s `axis`, in the form the
/// model's opset takes (inputs from opset 10, attributes before), its inputs added to `initializers`.
pub(super) fn slice(model: &OnnxModel, name: &str, (input, output): (&str, &str), axis: usize, (lo, hi): (u64, u64), initializers: &mut Vec<TensorProto>) -> NodeProto {
    if default_opset(model) >= 10 {
        let names = ["starts", "ends", "axes"].map(|k| format!("{name}.{k}"));
        for (n, value) in names.iter().zip([lo as i64, hi as i64, axis as i64]) {
            initializers.push(tensor(n.clone(), ElemType::I64, vec![1], value.to_le_bytes().to_vec()));
        }
        node("Slice", name.to_string(), &[input, &names[0], &names[1], &names[2]], output, vec![])
    } else {
        let attrs = vec![ints_attribute("starts", vec![lo as i64]), ints_attribute("ends", vec![hi as i64]), ints_attribute("axes", vec![axis as i64])];
        node("Slice", name.to_string(), &[input], output, attrs)
    }
}

fn input_rows(graph: &Graph, plan: &ShardPlan) -> u64 {
    graph.tensors[plan.layout.sliced[0].0].shape[0]
}

fn tensor_proto(name: String, dtype: ElemType, dims: &[u64], raw_data: Vec<u8>) -> TensorProto {
    tensor(name, dtype, dims.iter().map(|&d| d as i64).collect(), raw_data)
}
