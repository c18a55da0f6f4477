//! Operation counts per node: what the planner uses to balance compute between segments.
//!
//! Counts are estimates in the style of profilers' FLOP counters: a multiply-add is two operations,
//! element-wise operators cost one operation per output element (a few for transcendental ones), and data
//! movement (Reshape, Transpose, Concat...) one per element moved.

use tract_onnx::pb::NodeProto;

use super::graph::Tensor;

fn elements(t: &Tensor) -> u64 {
    t.shape.iter().product()
}

/// Estimated operations of one run of `node`, given its resolved input and output tensors.
pub fn flops(node: &NodeProto, inputs: &[&Tensor], outputs: &[&Tensor]) -> u64 {
    let out: u64 = outputs.iter().map(|t| elements(t)).sum();
    let first_in = inputs.first().map(|t| elements(t)).unwrap_or(0);
    match node.op_type.as_str() {
        "Conv" | "ConvInteger" | "QLinearConv" => {
            // weight is [M, C/group, k...]: each output element needs C/group * prod(k) multiply-adds
            let weight = inputs.get(if node.op_type == "QLinearConv" { 3 } else { 1 });
            let per_output: u64 = weight.map(|w| w.shape.iter().skip(1).product()).unwrap_or(1);
            2 * out * per_output
        }
        "ConvTranspose" => {
            let weight = inputs.get(1);
            let per_input: u64 = weight.map(|w| w.shape.iter().skip(1).product()).unwrap_or(1);
            2 * first_in * per_input
        }
        "MatMul" | "MatMulInteger" | "QLinearMatMul" | "Gemm" => {
            let a = inputs.first();
            let k = match (node.op_type.as_str(), a) {
                ("Gemm", Some(a)) if transposed_a(node) => a.shape.first().copied().unwrap_or(1),
                (_, Some(a)) => a.shape.last().copied().unwrap_or(1),
                _ => 1,
            };
            2 * out * k
        }
        "MaxPool" | "AveragePool" | "LpPool" => out * kernel_size(node),
        "GlobalAveragePool" | "GlobalMaxPool" | "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin"
        | "ReduceProd" | "ReduceL2" | "ReduceSumSquare" | "ArgMax" | "ArgMin" => first_in,
        "Softmax" | "LogSoftmax" => 5 * out,
        "LayerNormalization" | "BatchNormalization" | "InstanceNormalization" => 5 * out,
        "Exp" | "Log" | "Erf" | "Tanh" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "Gelu" | "Sqrt" | "Pow" => 4 * out,
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
        .map(|a| a.ints.iter().map(|&k| k.max(1) as u64).product())
        .unwrap_or(1)
}
