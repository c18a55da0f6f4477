//! Dequantizing an 8-bit weight while it is read from the blob.
//!
//! A model quantized for size keeps its weights as int8 and widens them to f32 in the graph:
//! `DequantizeLinear(q, scale, zero_point)`, or `Cast(q)` then `Mul` by the scales. Left to tract,
//! preparation computes every such f32 weight while the int8 ones are still held, and the heap keeps
//! both (minilm_int8: 151.6 MiB for 85 MiB of f32 weights). Here the skeleton is rewritten so that
//! the int8 tensor is read chunk by chunk straight into the f32 weight tract will use, and the
//! dequantizing nodes are gone: the segment holds the f32 weights once, as it would hold an f32
//! model's. The values are the ONNX definition's, `(q - zero_point) * scale` in f32.

use std::collections::{HashMap, HashSet};

use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{self, NodeProto};
use tract_onnx::prelude::{DatumType, Tensor};
use tract_onnx::tensor::load_tensor;

use crate::blob::{Skeleton, Weight};

/// How a weight's integers become its f32 values: `(q - zero_point) * scale`, both broadcast to its
/// shape.
pub struct Dequantize {
    /// f32 scales.
    pub scale: Tensor,
    /// f32 zero points, if any.
    pub zero_point: Option<Tensor>,
}

impl Dequantize {
    /// Reads `weight`'s 8-bit integers from the blob into a new f32 tensor of its shape and
    /// dequantizes it there.
    pub fn read(&self, weight: &Weight, shape: &[usize]) -> Result<Tensor, String> {
        let signed = match DataType::try_from(weight.data_type) {
            Ok(DataType::Int8) => true,
            Ok(DataType::Uint8) => false,
            _ => return Err(format!("initializer `{}`: only 8-bit weights are dequantized", weight.name)),
        };
        let mut tensor = Tensor::zero::<f32>(shape).map_err(|e| format!("{e:#}"))?;
        let mut view = tensor.to_plain_array_view_mut::<f32>().map_err(|e| format!("{e:#}"))?;
        let values = view.as_slice_mut().ok_or("a new tensor is contiguous")?;
        if values.len() as u64 != weight.len {
            return Err(format!(
                "initializer `{}`: {} bytes in the blob, {} expected from its dims",
                weight.name,
                weight.len,
                values.len()
            ));
        }
        weight.chunks(|at, bytes| {
            for (value, &b) in values[at..at + bytes.len()].iter_mut().zip(bytes) {
                *value = if signed { b as i8 as f32 } else { b as f32 };
            }
        })?;
        // The scales and zero points were checked to broadcast to the weight's shape (`at_read`).
        if let Some(zero_point) = &self.zero_point {
            view -= &zero_point.to_plain_array_view::<f32>().map_err(|e| format!("{e:#}"))?;
        }
        view *= &self.scale.to_plain_array_view::<f32>().map_err(|e| format!("{e:#}"))?;
        drop(view);
        Ok(tensor)
    }
}

/// Rewrites `skeleton` so that every large 8-bit weight widened by a dequantization that nothing
/// else reads is read as the dequantization's f32 result, and drops the nodes that computed it.
pub fn at_read(skeleton: &mut Skeleton) -> Result<(), String> {
    let Some(graph) = skeleton.proto.graph.as_mut() else { return Ok(()) };
    let mut found = Vec::new();
    {
        let readers = readers(graph);
        let stripped: HashMap<&str, &Weight> = skeleton.weights.iter().map(|w| (w.name.as_str(), w)).collect();
        let inline: HashMap<&str, &pb::TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let value = |name: &str| -> Option<Result<Tensor, String>> {
            let small = |t: i32| matches!(DataType::try_from(t), Ok(DataType::Float | DataType::Int8 | DataType::Uint8));
            if let Some(weight) = stripped.get(name) {
                return small(weight.data_type).then(|| read_f32(weight));
            }
            let proto = inline.get(name).filter(|t| small(t.data_type))?;
            Some(
                load_tensor(&FopenDataResolver, proto, None)
                    .and_then(|t| Ok(t.cast_to::<f32>()?.into_owned()))
                    .map_err(|e| format!("initializer `{name}`: {e:#}")),
            )
        };
        for (ix, node) in graph.node.iter().enumerate() {
            let Some(m) = Match::of(ix, &graph.node, &readers) else { continue };
            let Some(weight) = stripped.get(m.weight.as_str()) else { continue };
            if !matches!(DataType::try_from(weight.data_type), Ok(DataType::Int8 | DataType::Uint8)) {
                continue;
            }
            let Some(scale) = value(&m.scale) else { continue };
            let zero_point = match m.zero_point.as_deref().map(value) {
                Some(None) => continue,
                Some(Some(z)) => Some(z?),
                None => None,
            };
            let dims: Vec<usize> = weight.dims.iter().map(|&d| d as usize).collect();
            let per_axis = |t: Tensor| -> Result<Tensor, String> {
                let Some(axis) = m.axis.filter(|_| t.rank() == 1 && t.len() > 1) else { return Ok(t) };
                let axis = if axis < 0 { axis + dims.len() as i64 } else { axis };
                if !(0..dims.len() as i64).contains(&axis) {
                    return Err(format!("node `{}`: quantization axis {axis} out of range", node.name));
                }
                let mut shape = vec![1; dims.len()];
                shape[axis as usize] = t.len();
                t.into_shape(&shape).map_err(|e| format!("{e:#}"))
            };
            let dequantize = Dequantize { scale: per_axis(scale?)?, zero_point: zero_point.map(per_axis).transpose()? };
            let fits = |t: &Tensor| t.rank() <= dims.len() && t.shape().iter().rev().zip(dims.iter().rev()).all(|(&a, &b)| a == 1 || a == b);
            if fits(&dequantize.scale) && dequantize.zero_point.as_ref().is_none_or(fits) {
                found.push((m, dequantize));
            }
        }
    }
    let mut dropped = HashSet::new();
    let mut parameters = HashSet::new();
    for (m, dequantize) in found {
        let weight = skeleton.weights.iter_mut().find(|w| w.name == m.weight).expect("a stripped weight");
        let placeholder = graph.initializer.iter_mut().find(|t| t.name == m.weight).expect("its placeholder");
        placeholder.name.clone_from(&m.output);
        placeholder.data_type = DataType::Float as i32;
        weight.name = m.output;
        weight.dequantize = Some(dequantize);
        dropped.extend(m.nodes);
        parameters.extend([Some(m.scale), m.zero_point].into_iter().flatten());
    }
    let mut ix = 0..;
    graph.node.retain(|_| !dropped.contains(&ix.next().expect("unbounded")));
    let readers = readers(graph);
    parameters.retain(|p| readers.get(p).is_none() && !readers.outputs.contains(p));
    graph.initializer.retain(|t| !parameters.contains(&t.name));
    skeleton.weights.retain(|w| !parameters.contains(&w.name));
    Ok(())
}

/// A dequantization of one weight: the nodes to drop and the tensor they make.
struct Match {
    weight: String,
    scale: String,
    zero_point: Option<String>,
    /// For `DequantizeLinear`, the axis of per-axis scales.
    axis: Option<i64>,
    output: String,
    /// Indices in `graph.node` of the nodes it replaces.
    nodes: Vec<usize>,
}

impl Match {
    /// `nodes[ix]` as the start of a dequantization of a weight that nothing else reads.
    fn of(ix: usize, nodes: &[NodeProto], readers: &Readers) -> Option<Match> {
        let node = &nodes[ix];
        let sole_reader = |t: &str| match readers.get(t).map(Vec::as_slice) {
            Some([only]) => Some(*only),
            _ => None,
        };
        let attr = |n: &NodeProto, name: &str| n.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        if !node.domain.is_empty() || node.output.len() != 1 || readers.outputs.contains(&node.output[0]) {
            return None;
        }
        let weight = node.input.first()?.clone();
        sole_reader(&weight)?;
        match node.op_type.as_str() {
            "DequantizeLinear" => {
                if attr(node, "block_size").unwrap_or(0) != 0
                    || attr(node, "output_dtype").is_some_and(|t| t != DataType::Float as i64)
                    || node.input.len() < 2
                {
                    return None;
                }
                Some(Match {
                    weight,
                    scale: node.input[1].clone(),
                    zero_point: node.input.get(2).filter(|z| !z.is_empty()).cloned(),
                    axis: Some(attr(node, "axis").unwrap_or(1)),
                    output: node.output[0].clone(),
                    nodes: vec![ix],
                })
            }
            "Cast" if attr(node, "to") == Some(DataType::Float as i64) => {
                let mul_ix = sole_reader(&node.output[0])?;
                let mul = &nodes[mul_ix];
                if mul.op_type != "Mul" || !mul.domain.is_empty() || mul.input.len() != 2 || mul.output.len() != 1 {
                    return None;
                }
                let scale = mul.input.iter().find(|i| **i != node.output[0])?.clone();
                if readers.outputs.contains(&mul.output[0]) {
                    return None;
                }
                Some(Match {
                    weight,
                    scale,
                    zero_point: None,
                    axis: None,
                    output: mul.output[0].clone(),
                    nodes: vec![ix, mul_ix],
                })
            }
            _ => None,
        }
    }
}

/// The nodes reading each tensor, and the graph's outputs.
struct Readers {
    by_tensor: HashMap<String, Vec<usize>>,
    outputs: HashSet<String>,
}

impl Readers {
    fn get(&self, tensor: &str) -> Option<&Vec<usize>> {
        self.by_tensor.get(tensor)
    }
}

fn readers(graph: &pb::GraphProto) -> Readers {
    let mut by_tensor: HashMap<String, Vec<usize>> = HashMap::new();
    for (ix, node) in graph.node.iter().enumerate() {
        let subgraph_reads = node.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs)).flat_map(|g| {
            g.node.iter().flat_map(|n| n.input.iter().cloned()).collect::<Vec<_>>()
        });
        for input in node.input.iter().cloned().chain(subgraph_reads) {
            let list = by_tensor.entry(input).or_default();
            if !list.contains(&ix) {
                list.push(ix);
            }
        }
    }
    Readers { by_tensor, outputs: graph.output.iter().map(|o| o.name.clone()).collect() }
}

/// A small stripped weight of f32 or 8-bit integers (scales, zero points) read as f32.
fn read_f32(weight: &Weight) -> Result<Tensor, String> {
    let dt: DatumType = DataType::try_from(weight.data_type)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|e| format!("{e:#}"))?;
    let shape: Vec<usize> = weight.dims.iter().map(|&d| d as usize).collect();
    // SAFETY: a plain numeric type, every byte overwritten from the blob before it is read.
    let mut tensor = unsafe { Tensor::uninitialized_dt(dt, &shape) }.map_err(|e| format!("{e:#}"))?;
    weight.read(tensor.as_bytes_mut())?;
    Ok(tensor.cast_to::<f32>().map_err(|e| format!("{e:#}"))?.into_owned())
}
