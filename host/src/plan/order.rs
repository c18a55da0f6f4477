//! Topological orders of the graph and the liveness facts of each: which tensors cross every cut point.
//!
//! A cut between positions `c-1` and `c` of an order splits the model into a prefix and a suffix. Every
//! tensor made in the prefix (or given as a model input) and read in the suffix (or returned as a model
//! output) crosses that cut; segments pass such tensors along, so the pipeline stays a chain. Different
//! orders give different crossing sets, so the planner tries several and keeps the best.

use crate::onnx::{ElemType, Graph, NodeId, TensorId};

/// The named topological orders the planner tries.
pub fn candidates(graph: &Graph) -> Vec<(&'static str, Vec<NodeId>)> {
    vec![
        ("file", kahn(graph, |_, _| 0)),
        ("depth-first", kahn(graph, |graph, ctx| ctx.most_recent_input(graph))),
        ("memory-greedy", kahn(graph, |graph, ctx| ctx.bytes_freed(graph))),
    ]
}

/// What a priority function sees of a ready node.
struct Ready<'a> {
    node: NodeId,
    position: &'a [Option<usize>],
    remaining_uses: &'a [usize],
}

impl Ready<'_> {
    /// Position of the latest-placed producer among its inputs: high for nodes continuing the current chain.
    fn most_recent_input(&self, graph: &Graph) -> i64 {
        graph.nodes[self.node]
            .inputs
            .iter()
            .filter_map(|&t| graph.tensors[t].producer)
            .filter_map(|p| self.position[p])
            .max()
            .map_or(-1, |p| p as i64)
    }

    /// Bytes of activations it frees (inputs it reads last) minus bytes it makes.
    fn bytes_freed(&self, graph: &Graph) -> i64 {
        let node = &graph.nodes[self.node];
        let freed: u64 = node
            .inputs
            .iter()
            .filter(|&&t| !graph.tensors[t].is_weight() && self.remaining_uses[t] == 1 && !graph.outputs.contains(&t))
            .map(|&t| graph.tensors[t].bytes())
            .sum();
        let made: u64 = node.outputs.iter().map(|&t| graph.tensors[t].bytes()).sum();
        freed as i64 - made as i64
    }
}

/// Kahn's algorithm; among ready nodes it takes the highest priority, then the earliest in the file.
fn kahn(graph: &Graph, priority: impl Fn(&Graph, &Ready) -> i64) -> Vec<NodeId> {
    let n = graph.nodes.len();
    let mut waiting: Vec<usize> = graph
        .nodes
        .iter()
        .map(|node| node.inputs.iter().filter(|&&t| graph.tensors[t].producer.is_some()).count())
        .collect();
    let mut remaining_uses: Vec<usize> = graph.tensors.iter().map(|t| t.consumers.len()).collect();
    let mut position = vec![None; n];
    let mut ready: Vec<NodeId> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while !ready.is_empty() {
        let (slot, _) = ready
            .iter()
            .enumerate()
            .map(|(slot, &node)| {
                let ctx = Ready { node, position: &position, remaining_uses: &remaining_uses };
                (slot, (priority(graph, &ctx), std::cmp::Reverse(node)))
            })
            .max_by_key(|(_, key)| *key)
            .expect("ready is not empty");
        let node = ready.swap_remove(slot);
        position[node] = Some(order.len());
        order.push(node);
        for &t in &graph.nodes[node].inputs {
            remaining_uses[t] = remaining_uses[t].saturating_sub(1);
        }
        for &t in &graph.nodes[node].outputs {
            for &consumer in &graph.tensors[t].consumers {
                waiting[consumer] -= 1;
                if waiting[consumer] == 0 {
                    ready.push(consumer);
                }
            }
        }
    }
    order
}

/// Liveness of every activation along one order, and what crosses each cut point.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// The order.
    pub order: Vec<NodeId>,
    /// `crossing[c]`: tensors crossing the cut before position `c` (`0..=n`), in tensor order.
    pub crossing: Vec<Vec<TensorId>>,
    /// Bytes of `crossing[c]`.
    pub crossing_bytes: Vec<u64>,
    /// Whether a segment may end before position `c`: not when a tensor computed from weights alone
    /// would cross there (it would travel as an activation and be held on both sides).
    pub cut_allowed: Vec<bool>,
    /// Bytes of activations alive while position `t` runs: its inputs and outputs (except the input an
    /// op writes over, see [`written_over`]) and the packed copies of the operands its kernel reads
    /// ([`packed_activations`]).
    pub live_bytes: Vec<u64>,
    /// Weights read by the node at position `t`, and the tensors computed from weights alone that it reads
    /// when it is not itself computed from weights alone (see [`prepared_constants`]).
    pub weights: Vec<Vec<TensorId>>,
    /// Bytes of the largest weight the node at position `t` packs for its kernel (0 if it packs none):
    /// preparing it holds that weight twice for a moment.
    pub packed: Vec<u64>,
    /// Operations of the node at position `t`.
    pub flops: Vec<u64>,
}

impl Liveness {
    /// Computes liveness for a topological order of `graph`.
    pub fn new(graph: &Graph, order: Vec<NodeId>) -> Liveness {
        let n = order.len();
        let mut position = vec![0usize; graph.nodes.len()];
        for (pos, &node) in order.iter().enumerate() {
            position[node] = pos;
        }
        let mut crossing = vec![Vec::new(); n + 1];
        let mut crossing_bytes = vec![0u64; n + 1];
        let mut live_delta = vec![0i64; n + 1];
        let mut dies_at = vec![None; graph.tensors.len()];
        let prepared = prepared_constants(graph);
        for (id, tensor) in graph.tensors.iter().enumerate() {
            if tensor.is_weight() {
                continue;
            }
            // birth: the position after which the tensor exists (model inputs exist before position 0)
            let birth = tensor.producer.map(|p| position[p] as i64).unwrap_or(-1);
            let last_use = tensor.consumers.iter().map(|&c| position[c] as i64).max();
            let death = if graph.outputs.contains(&id) { n as i64 } else { last_use.unwrap_or(birth) };
            if death < 0 {
                continue;
            }
            dies_at[id] = Some(death as usize);
            for c in (birth + 1) as usize..=death as usize {
                crossing[c].push(id);
                crossing_bytes[c] += tensor.bytes();
            }
            let first = birth.max(0) as usize;
            let last = (death as usize).min(n.saturating_sub(1));
            if first <= last && !prepared[id] {
                live_delta[first] += tensor.bytes() as i64;
                live_delta[last + 1] -= tensor.bytes() as i64;
            }
        }
        let cut_allowed = crossing.iter().map(|tensors| !tensors.iter().any(|&t| prepared[t])).collect();
        let mut live_bytes = Vec::with_capacity(n);
        let mut live = 0i64;
        for delta in live_delta.iter().take(n) {
            live += delta;
            live_bytes.push(live as u64);
        }
        for (pos, &node) in order.iter().enumerate() {
            let dies_here = |t: TensorId| dies_at[t] == Some(pos) && !graph.outputs.contains(&t) && !prepared[t];
            if let Some(input) = written_over(graph, node).into_iter().find(|&t| dies_here(t)) {
                live_bytes[pos] -= graph.tensors[input].bytes();
            }
            let (packed, operands) = packed_activations(graph, node);
            if packed > 0 && !operands.iter().any(|&t| prepared[t]) {
                // packing holds the operands and their packed form; the kernel then holds the packed form
                // and the output, the operands gone if nothing reads them later
                let made: u64 = graph.nodes[node].outputs.iter().filter(|&&t| !prepared[t]).map(|&t| graph.tensors[t].bytes()).sum();
                let before = live_bytes[pos].saturating_sub(made);
                let freed: u64 = operands.iter().filter(|&&t| dies_here(t)).map(|&t| graph.tensors[t].bytes()).sum();
                live_bytes[pos] = (before + packed).max(before - freed + packed + made);
            }
        }
        let weights: Vec<Vec<TensorId>> = order
            .iter()
            .map(|&node| {
                let folded_here = graph.nodes[node].outputs.iter().all(|&t| prepared[t]);
                let held = |t: TensorId| {
                    (graph.tensors[t].is_weight() && !dequantized_at_read(graph, t)) || (prepared[t] && !folded_here)
                };
                graph.nodes[node].inputs.iter().copied().filter(|&t| held(t)).collect()
            })
            .collect();
        let packed = order
            .iter()
            .zip(&weights)
            .map(|(&node, held)| {
                let packs = packs_weights(&graph.nodes[node].op_type);
                held.iter().filter(|_| packs).map(|&t| graph.tensors[t].bytes()).max().unwrap_or(0)
            })
            .collect();
        let flops = order.iter().map(|&node| graph.nodes[node].flops).collect();
        Liveness { order, crossing, crossing_bytes, cut_allowed, live_bytes, weights, packed, flops }
    }
}

/// Whether tract packs the constant operands of `op` into a new buffer for its matrix kernel.
pub fn packs_weights(op: &str) -> bool {
    matches!(op, "Conv" | "ConvTranspose" | "ConvInteger" | "Gemm" | "MatMul" | "MatMulInteger" | "Einsum")
}

/// Which activations are computed from weights alone (a dequantized int8 weight: `Cast` then `Mul` by
/// its scales, or `DequantizeLinear`). tract folds such nodes into constants while it prepares a segment,
/// so the segment holds their results for its whole life, as it holds a weight: the nodes reading them
/// count them as weights, and they are not live activations.
pub fn prepared_constants(graph: &Graph) -> Vec<bool> {
    let mut prepared = vec![false; graph.tensors.len()];
    let mut pending: Vec<usize> = graph.nodes.iter().map(|n| n.inputs.len()).collect();
    let mut ready: Vec<NodeId> = Vec::new();
    for tensor in graph.tensors.iter().filter(|t| t.is_weight()) {
        for &c in &tensor.consumers {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(c);
            }
        }
    }
    while let Some(node) = ready.pop() {
        let node = &graph.nodes[node];
        if node.op_type.starts_with("Random") || ["Multinomial", "If", "Loop", "Scan"].contains(&node.op_type.as_str()) {
            continue;
        }
        for &t in &node.outputs {
            if graph.outputs.contains(&t) {
                continue;
            }
            prepared[t] = true;
            for &c in &graph.tensors[t].consumers {
                pending[c] -= 1;
                if pending[c] == 0 {
                    ready.push(c);
                }
            }
        }
    }
    prepared
}

/// Whether the runtime reads weight `t` straight into its dequantized f32 values, so that the 8-bit
/// tensor itself is never held (it is one of the initializers the runtime leaves in the blob, of 4 KiB or
/// more, that only one node reads): the node reading it is a `DequantizeLinear`, or a `Cast` whose
/// output only a `Mul` reads (`components/segment/src/dequantize.rs`).
fn dequantized_at_read(graph: &Graph, t: TensorId) -> bool {
    let tensor = &graph.tensors[t];
    let dequantizes = |&c: &NodeId| {
        let node = &graph.nodes[c];
        match node.op_type.as_str() {
            "DequantizeLinear" => node.operands.first() == Some(&Some(t)),
            "Cast" => node.outputs.iter().all(|&o| {
                matches!(graph.tensors[o].consumers.as_slice(), [m] if graph.nodes[*m].op_type == "Mul")
            }),
            _ => false,
        }
    };
    matches!(tensor.dtype, ElemType::I8 | ElemType::U8)
        && tensor.bytes() >= 4096
        && tensor.consumers.len() == 1
        && tensor.consumers.iter().all(dequantizes)
}

/// Elementwise operators of one activation input that tract computes in that input's buffer when
/// nothing reads it afterwards.
const IN_PLACE_OPS: &[&str] = &[
    "Abs", "Ceil", "Clip", "Cos", "Elu", "Erf", "Exp", "Floor", "HardSigmoid", "HardSwish", "LeakyRelu",
    "Log", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Sqrt", "Tanh",
    "Softmax", "BatchNormalization", "Dropout", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
];

/// Binary operators tract computes in the buffer of an operand of the output's shape (the other one
/// broadcast, or a residual the matrix kernel adds as it stores), when nothing reads that operand
/// afterwards.
const IN_PLACE_BINARY_OPS: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"];

/// The activations `node` may write its output over (when nothing reads them afterwards): the input of
/// a unary in-place op of the same size, or the operands of a binary one with the output's shape and type.
fn written_over(graph: &Graph, node: NodeId) -> Vec<TensorId> {
    let node = &graph.nodes[node];
    let [output] = node.outputs[..] else { return vec![] };
    let output = &graph.tensors[output];
    let activations = node.inputs.iter().copied().filter(|&t| !graph.tensors[t].is_weight());
    let op = node.op_type.as_str();
    if IN_PLACE_OPS.contains(&op) {
        let inputs: Vec<TensorId> = activations.collect();
        return match inputs[..] {
            [input] if graph.tensors[input].bytes() == output.bytes() => vec![input],
            _ => vec![],
        };
    }
    // an operand read twice (`Add(x, x)`) is shared during the call, so tract computes into a new buffer
    if IN_PLACE_BINARY_OPS.contains(&op) && node.inputs.len() == node.operands.iter().flatten().count() {
        return activations.filter(|&t| graph.tensors[t].shape == output.shape && graph.tensors[t].dtype == output.dtype).collect();
    }
    vec![]
}

/// Bytes of the buffers tract packs a node's activation operands into before its matrix kernel reads
/// them, and those operands: the operand of a matrix product (each, when both are activations); the
/// input of a 1x1 convolution; the padded input of a larger one, whose kernel reads patches straight from
/// it (none without padding); the whole im2col matrix of a convolution over a batch. A depthwise
/// convolution packs nothing.
pub fn packed_activations(graph: &Graph, node: NodeId) -> (u64, Vec<TensorId>) {
    let n = &graph.nodes[node];
    let activation = |slot: usize| n.operands.get(slot).copied().flatten().filter(|&t| !graph.tensors[t].is_weight());
    match n.op_type.as_str() {
        "MatMul" | "Gemm" | "Einsum" => {
            let operands: Vec<TensorId> = (0..2).filter_map(activation).collect();
            (operands.iter().map(|&t| graph.tensors[t].bytes()).sum(), operands)
        }
        "Conv" => {
            let (Some(x), Some(w), &[y]) = (activation(0), n.operands.get(1).copied().flatten(), n.outputs.as_slice()) else {
                return (0, vec![]);
            };
            let (x_t, w_t, y_t) = (&graph.tensors[x], &graph.tensors[w], &graph.tensors[y]);
            let spatial = x_t.shape.len().saturating_sub(2);
            if spatial == 0 || w_t.shape.len() != spatial + 2 || y_t.shape.len() != spatial + 2 {
                return (0, vec![]);
            }
            let group = n.int_attribute("group").unwrap_or(1).max(1) as u64;
            let channels = x_t.shape[1];
            if group > 1 && group == channels && w_t.shape[1] == 1 {
                return (0, vec![]);
            }
            let elem = x_t.dtype.size();
            let kernel: u64 = w_t.shape[2..].iter().product();
            let out: u64 = y_t.shape[2..].iter().product();
            let batch = y_t.shape[0];
            let packed = if kernel == 1 {
                batch * channels * out * elem
            } else if batch > 1 {
                batch * channels * kernel * out * elem
            } else {
                let attr = |name: &str, axis: usize| n.ints_attribute(name).and_then(|v| v.get(axis).copied()).unwrap_or(1).max(1) as u64;
                let padded: Vec<u64> = (0..spatial)
                    .map(|i| {
                        let reach = (y_t.shape[2 + i].saturating_sub(1)) * attr("strides", i) + (w_t.shape[2 + i] - 1) * attr("dilations", i) + 1;
                        x_t.shape[2 + i].max(reach)
                    })
                    .collect();
                match padded.iter().zip(&x_t.shape[2..]).any(|(p, x)| p > x) {
                    true => channels * padded.iter().product::<u64>() * elem,
                    false => 0,
                }
            };
            (packed, vec![x])
        }
        _ => (0, vec![]),
    }
}
