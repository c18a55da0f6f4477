//! Operation counts per node: what the planner uses to balance compute between segments.
//!
//! Counts are estimates in the style of profilers' FLOP counters: a multiply-add is two operations,
//! element-wise operators cost one operation per output element (a few for transcendental ones), and data
//! movement (Reshape, Transpose, Concat...) one per element moved.

use tract_onnx::pb::NodeProto;

use super::graph::Tensor;

/// The most operations one node is counted at (10^15, hours of compute): a model of thousands of
/// nodes, each at the cap, still sums without overflow.
const MAX_FLOPS: u64 = 1 << 50;

fn product(dims: impl IntoIterator<Item = u64>) -> u64 {
    dims.into_iter().fold(1u64, u64::saturating_mul)
}

fn elements(t: &Tensor) -> u64 {
    product(t.shape.iter().copied())
}

/// Estimated operations of one run of `node`, given its resolved input and output tensors (at most
/// [`MAX_FLOPS`]).
pub fn flops(node: &NodeProto, inputs: &[&Tensor], outputs: &[&Tensor]) -> u64 {
    count(node, inputs, outputs).min(MAX_FLOPS)
}

fn count(node: &NodeProto, inputs: &[&Tensor], outputs: &[&Tensor]) -> u64 {
    let out: u64 = outputs.iter().map(|t| elements(t)).fold(0, u64::saturating_add);
    let first_in = inputs.first().map(|t| elements(t)).unwrap_or(0);
    match node.op_type.as_str() {
        "Conv" | "ConvInteger" | "QLinearConv" => {
            // weight is [M, C/group, k...]: each output element needs C/group * prod(k) multiply-adds
            let weight = inputs.get(if node.op_type == "QLinearConv" { 3 } else { 1 });
            let per_output = weight.map(|w| product(w.shape.iter().skip(1).copied())).unwrap_or(1);
            product([2, out, per_output])
        }
        "ConvTranspose" => {
            let weight = inputs.get(1);
            let per_input = weight.map(|w| product(w.shape.iter().skip(1).copied())).unwrap_or(1);
            product([2, first_in, per_input])
        }
        "MatMul" | "MatMulInteger" | "QLinearMatMul" | "Gemm" => {
            let a = inputs.first();
            let k = match (node.op_type.as_str(), a) {
                ("Gemm", Some(a)) if transposed_a(node) => a.shape.first().copied().unwrap_or(1),
                (_, Some(a)) => a.shape.last().copied().unwrap_or(1),
                _ => 1,
            };
            product([2, out, k])
        }
        "MaxPool" | "AveragePool" | "LpPool" => out.saturating_mul(kernel_size(node)),
        "GlobalAveragePool" | "GlobalMaxPool" | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin"
        | "ReduceProd" | "ReduceL2" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => first_in,
        "Softmax" | "LogSoftmax" => out.saturating_mul(5),
        "LayerNormalization" | "BatchNormalization" | "InstanceNormalization" => out.saturating_mul(5),
        "Exp" | "Log" | "Erf" | "Tanh" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "Gelu" | "Sqrt" | "Pow" => out.saturating_mul(4),
        _ => out,
    }
}

fn transposed_a(node: &NodeProto) -> bool {
    node.attribute.iter().any(|a| a.name == "transA" && a.i != 0)
}

fn kernel_size(node: &NodeProto) -> u64 {
    node.attribute
        .iter()
        .find(|a| a.name == "kernel_shape")
        .map(|a| product(a.ints.iter().map(|&k| k.max(1) as u64)))
        .unwrap_or(1)
}
