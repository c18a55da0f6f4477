//! Cutting a run of convolutions, poolings and elementwise ops into bands of output rows (spatial
//! sharding, as Gillis does), for nodes bound by their activations rather than their weights: a detector's
//! first convolutions at 800x608 need more than a function holds for their feature maps alone.
//!
//! A band of the run's output rows `[a, b)` needs, from each tensor of the run, the rows its consumers'
//! windows reach (the halo), computed backwards from the output ([`rows`]). Each shard receives the run's
//! input whole, keeps the rows its band needs, computes every node of the run on its rows (the padding
//! of a window at a band's edge replaced by the rows of its neighbour), and returns its band of the output;
//! the next function joins the bands with `Concat` on axis 2. The shard count is the smallest whose
//! largest band fits the limit.

use std::collections::HashMap;
use std::sync::Arc;

use super::memory::{MemoryModel, working_bytes};
use super::order::{Liveness, packed_activations};
use super::shard::{Join, Layout, ShardCost, ShardPlan, Strategy, ranges};
use crate::onnx::{Graph, NodeId, TensorId};

/// Unary elementwise operators a band computes row by row.
const ROWWISE_UNARY: &[&str] = &[
    "Abs", "BatchNormalization", "Cast", "Ceil", "Clip", "Dropout", "Elu", "Erf", "Exp", "Floor", "HardSigmoid",
    "HardSwish", "Identity", "LeakyRelu", "Log", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign",
    "Softplus", "Sqrt", "Tanh",
];

/// Binary elementwise operators a band computes row by row, when every operand is a tensor of the run of
/// the output's rows or a weight without rows.
const ROWWISE_BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Sum"];

/// The window of a convolution or pooling along the rows (axis 2): kernel, stride, dilation, padding
/// before the first row, and its padding along the columns (left, right), kept as they are by a band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Rows of the kernel.
    pub kernel: u64,
    /// Row stride.
    pub stride: u64,
    /// Row dilation.
    pub dilation: u64,
    /// Rows of padding above the first row.
    pub pad_top: u64,
    /// Columns of padding before the first column and after the last.
    pub pad_columns: (u64, u64),
}

impl Window {
    /// The input rows output rows `[o0, o1)` read, within an input of `height` rows.
    pub fn input_rows(&self, (o0, o1): (u64, u64), height: u64) -> (u64, u64) {
        let lo = (o0 * self.stride).saturating_sub(self.pad_top);
        let hi = ((o1 - 1) * self.stride + self.dilation * (self.kernel - 1) + 1).saturating_sub(self.pad_top).min(height);
        (lo, hi)
    }
}

/// The row window of a 2D convolution or pooling node, with its padding resolved (explicit `pads`, or
/// `auto_pad`), or `None` if the node is not one or has a form bands do not handle (an average in ceil
/// mode, a second output).
pub fn window(graph: &Graph, node: NodeId) -> Option<Window> {
    let n = &graph.nodes[node];
    let (&[x, ..], &[y]) = (n.inputs.as_slice(), n.outputs.as_slice()) else { return None };
    let (x, y) = (&graph.tensors[x], &graph.tensors[y]);
    if x.shape.len() != 4 || y.shape.len() != 4 {
        return None;
    }
    let kernel: [u64; 2] = match n.op_type.as_str() {
        "Conv" => {
            let w = &graph.tensors[n.operands.get(1).copied().flatten()?].shape;
            [*w.get(2)?, *w.get(3)?]
        }
        // in ceil mode an average would count the overhang of its last window differently from the padding a
        // band puts there; a maximum ignores both
        "MaxPool" | "AveragePool" if n.op_type == "MaxPool" || n.int_attribute("ceil_mode").unwrap_or(0) == 0 => match n.ints_attribute("kernel_shape")? {
            &[h, w] => [h as u64, w as u64],
            _ => return None,
        },
        _ => return None,
    };
    let attr = |name: &str, axis: usize| n.ints_attribute(name).and_then(|v| v.get(axis).copied()).unwrap_or(1).max(1) as u64;
    // the padding, from the rows and columns the output reaches: `pads`, or SAME split evenly (the odd one
    // below or after for SAME_UPPER, above or before for SAME_LOWER), or VALID
    let total = |axis: usize| ((y.shape[2 + axis] - 1) * attr("strides", axis) + attr("dilations", axis) * (kernel[axis] - 1) + 1).saturating_sub(x.shape[2 + axis]);
    let before = |axis: usize| match n.string_attribute("auto_pad") {
        Some("SAME_LOWER") => total(axis).div_ceil(2),
        _ => total(axis) / 2,
    };
    let (pad_top, pad_columns) = match n.ints_attribute("pads") {
        Some(&[top, left, _, right]) => (top.max(0) as u64, (left.max(0) as u64, right.max(0) as u64)),
        Some(_) => return None,
        None => (before(0), (before(1), total(1) - before(1))),
    };
    Some(Window { kernel: kernel[0], stride: attr("strides", 0), dilation: attr("dilations", 0), pad_top, pad_columns })
}

/// Whether a band can compute `node` on its rows alone (given the rows its windows reach).
fn rowwise(graph: &Graph, node: NodeId) -> bool {
    let n = &graph.nodes[node];
    let [output] = n.outputs[..] else { return false };
    let out = &graph.tensors[output];
    if out.shape.len() != 4 {
        return false;
    }
    let activations: Vec<&crate::onnx::Tensor> = n.inputs.iter().map(|&t| &graph.tensors[t]).filter(|t| !t.is_weight()).collect();
    let same_rows = |t: &&crate::onnx::Tensor| t.shape.len() == 4 && t.shape[2] == out.shape[2];
    let op = n.op_type.as_str();
    match op {
        "Conv" | "MaxPool" | "AveragePool" => window(graph, node).is_some() && activations.len() == 1,
        "Concat" => matches!(n.int_attribute("axis"), Some(1 | -3)) && activations.iter().all(same_rows),
        _ if ROWWISE_UNARY.contains(&op) => activations.len() == 1 && activations.iter().all(same_rows),
        _ if ROWWISE_BINARY.contains(&op) => {
            let weights_without_rows = n.inputs.iter().map(|&t| &graph.tensors[t]).filter(|t| t.is_weight()).all(|w| {
                // a weight broadcast against 4D rows: its axis 2 (counted from the right) is 1 or absent
                w.shape.len() < 2 || w.shape[w.shape.len() - 2] == 1
            });
            !activations.is_empty() && activations.iter().all(same_rows) && weights_without_rows
        }
        _ => false,
    }
}

/// A run of the order as one band group: its nodes, its one activation input and its outputs (the tensors
/// it makes that are read after it), all of the same rows.
struct Run {
    nodes: Vec<NodeId>,
    input: TensorId,
    outputs: Vec<TensorId>,
}

impl Run {
    /// Rows of its outputs.
    fn height(&self, graph: &Graph) -> u64 {
        graph.tensors[self.outputs[0]].shape[2]
    }
}

/// The run `[start, end)` of `live`'s order, if bands can compute it: every node row by row, one
/// activation tensor entering (4D), the tensors leaving all of the same rows (at least two), and both ends
/// allowed cuts.
fn run(graph: &Graph, live: &Liveness, start: usize, end: usize) -> Option<Run> {
    let nodes = live.order[start..end].to_vec();
    if !(live.cut_allowed[start] && (end == live.order.len() || live.cut_allowed[end])) {
        return None;
    }
    if !nodes.iter().all(|&n| rowwise(graph, n)) {
        return None;
    }
    let members: std::collections::HashSet<NodeId> = nodes.iter().copied().collect();
    let inside = |t: TensorId| graph.tensors[t].producer.is_some_and(|p| members.contains(&p));
    let mut inputs: Vec<TensorId> = nodes.iter().flat_map(|&n| graph.nodes[n].inputs.iter().copied()).filter(|&t| !graph.tensors[t].is_weight() && !inside(t)).collect();
    inputs.sort_unstable();
    inputs.dedup();
    let outputs: Vec<TensorId> = nodes
        .iter()
        .flat_map(|&n| graph.nodes[n].outputs.iter().copied())
        .filter(|&t| graph.outputs.contains(&t) || graph.tensors[t].consumers.iter().any(|c| !members.contains(c)))
        .collect();
    let rows = outputs.first().map(|&t| graph.tensors[t].shape[2])?;
    match inputs[..] {
        [input] if graph.tensors[input].shape.len() == 4 && rows >= 2 && outputs.iter().all(|&t| graph.tensors[t].shape[2] == rows) => {
            Some(Run { nodes, input, outputs })
        }
        _ => None,
    }
}

/// The rows `[lo, hi)` of every activation of `run_nodes` (its input included) that rows `band` of its
/// `outputs` need.
pub fn rows(graph: &Graph, run_nodes: &[NodeId], outputs: &[TensorId], band: (u64, u64)) -> HashMap<TensorId, (u64, u64)> {
    let mut need: HashMap<TensorId, (u64, u64)> = outputs.iter().map(|&t| (t, band)).collect();
    for &node in run_nodes.iter().rev() {
        let n = &graph.nodes[node];
        let Some(&out) = need.get(&n.outputs[0]) else { continue };
        for &t in n.inputs.iter().filter(|&&t| !graph.tensors[t].is_weight()) {
            let wanted = match window(graph, node) {
                Some(w) => w.input_rows(out, graph.tensors[t].shape[2]),
                None => out,
            };
            need.entry(t).and_modify(|(lo, hi)| (*lo, *hi) = ((*lo).min(wanted.0), (*hi).max(wanted.1))).or_insert(wanted);
        }
    }
    need
}

/// The facts of the band of output rows `band`: it holds the run's input whole until it has kept its
/// rows, then every tensor of the run on the rows it needs, one at a time as liveness along the run says;
/// its estimate counts the `joined` bytes of partial outputs of a group just before it that it joins first,
/// as [`super::dag`] does.
fn band_cost(graph: &Graph, run: &Run, band: (u64, u64), weights: (u64, u64), joined: u64, memory: &MemoryModel) -> ShardCost {
    let need = rows(graph, &run.nodes, &run.outputs, band);
    let part = |t: TensorId| {
        let tensor = &graph.tensors[t];
        let (lo, hi) = need.get(&t).copied().unwrap_or((0, tensor.shape[2]));
        tensor.bytes() / tensor.shape[2] * (hi - lo)
    };
    let position: HashMap<NodeId, usize> = run.nodes.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let last_use = |t: TensorId| match run.outputs.contains(&t) {
        true => run.nodes.len(),
        false => graph.tensors[t].consumers.iter().filter_map(|c| position.get(c).copied()).max().unwrap_or(0),
    };
    // bytes held along the run: each tensor from the node making it to the last node reading it
    let mut freed_after = vec![0u64; run.nodes.len() + 1];
    freed_after[last_use(run.input).min(run.nodes.len())] += part(run.input);
    let input = graph.tensors[run.input].bytes();
    let (mut live, mut peak) = (part(run.input), input + part(run.input));
    for (i, &node) in run.nodes.iter().enumerate() {
        for &t in &graph.nodes[node].outputs {
            live += part(t);
            freed_after[last_use(t).min(run.nodes.len())] += part(t);
        }
        let (packed, operands) = packed_activations(graph, node);
        let whole: u64 = operands.iter().map(|&o| graph.tensors[o].bytes()).sum::<u64>().max(1);
        let scaled: u64 = operands.iter().map(|&t| part(t) * packed / whole).sum();
        peak = peak.max(live + scaled);
        live -= freed_after[i];
    }
    let output: u64 = run.outputs.iter().map(|&t| part(t)).sum();
    let peak = working_bytes(peak, [input], run.outputs.iter().map(|&t| part(t)));
    let flops: u64 = run.nodes.iter().map(|&n| {
        let out = graph.nodes[n].outputs[0];
        graph.nodes[n].flops / graph.tensors[out].shape[2].max(1) * need.get(&out).map_or(0, |(lo, hi)| hi - lo)
    }).sum();
    ShardCost {
        range: band,
        flops,
        weight_bytes: weights.0,
        largest_weight_bytes: weights.1,
        peak_activation_bytes: peak,
        io_bytes: input + output,
        memory: memory.estimate(weights.0, weights.1, peak + joined),
    }
}

/// The run's shards when cut into `count` bands.
fn cut(graph: &Graph, run: &Run, count: u64, weights: (u64, u64), joined: u64, memory: &MemoryModel) -> Vec<ShardCost> {
    ranges(run.height(graph), count).into_iter().map(|band| band_cost(graph, run, band, weights, joined, memory)).collect()
}

/// The largest band's estimate when the run is cut into `count` bands: the first, a middle or the last
/// band (the bands differ by one row at most, and only the edges lack a halo on one side).
fn largest(graph: &Graph, run: &Run, count: u64, weights: (u64, u64), joined: u64, memory: &MemoryModel) -> u64 {
    let all = ranges(run.height(graph), count);
    [0, all.len() / 2, all.len() - 1].into_iter().map(|j| band_cost(graph, run, all[j], weights, joined, memory).memory).max().unwrap_or(0)
}

/// The weights a run holds, and the largest its kernels pack.
fn run_weights(graph: &Graph, live: &Liveness, start: usize, end: usize) -> (u64, u64, Vec<TensorId>) {
    let mut held: Vec<TensorId> = live.weights[start..end].iter().flatten().copied().collect();
    held.sort_unstable();
    held.dedup();
    let bytes = held.iter().map(|&w| graph.tensors[w].bytes()).sum();
    let largest = live.packed[start..end].iter().copied().max().unwrap_or(0);
    (bytes, largest, held)
}

/// How many positions right before a node a band run through it may start at (besides the earliest).
const NEAR_STARTS: usize = 6;

/// The first positions a band run through `p` may have: the earliest, and the few right before `p`.
fn starts(earliest: usize, p: usize) -> impl Iterator<Item = usize> {
    std::iter::once(earliest).chain(p.saturating_sub(NEAR_STARTS).max(earliest + 1)..=p)
}

/// A run of the order that bands can compute under a limit: positions `[start, end)` in `count` bands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BandRun {
    /// First position.
    pub start: usize,
    /// One past the last.
    pub end: usize,
    /// The fewest bands whose largest fits the limit.
    pub count: u64,
    /// Bytes of the run's outputs, which the function after it joins.
    pub output_bytes: u64,
}

/// The runs through position `p` of `live`'s order that fit `limit` in bands, the fewest bands first, then
/// the longest: runs starting at `p`, a few positions before it, or as early as bands allow (not before `from`, where a
/// group just before leaves `joined` bytes of partial outputs to join) and ending anywhere after it. Empty
/// if no run through `p` fits, even in bands of one row.
pub fn band_runs(graph: &Graph, live: &Liveness, p: usize, (from, joined): (usize, u64), memory: &MemoryModel, limit: u64) -> Vec<BandRun> {
    let Some(earliest) = (from..=p).rev().take_while(|&s| rowwise(graph, live.order[s])).last() else { return vec![] };
    let mut found = Vec::new();
    for start in starts(earliest, p) {
        let joined = if start == from { joined } else { 0 };
        for end in p + 1..=live.order.len() {
            if !rowwise(graph, live.order[end - 1]) {
                break;
            }
            let Some(run) = run(graph, live, start, end) else { continue };
            let (w, largest_weight, _) = run_weights(graph, live, start, end);
            let rows = run.height(graph);
            let fits = |count: u64| largest(graph, &run, count, (w, largest_weight), joined, memory) <= limit;
            if !fits(rows) {
                continue;
            }
            // the largest band shrinks as the count grows: binary search for the smallest count that fits
            let (mut lo, mut hi) = (2u64, rows);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) { hi = mid } else { lo = mid + 1 }
            }
            // the search samples three bands; with strides, another band may reach a row more
            let every_band_fits = |count: u64| cut(graph, &run, count, (w, largest_weight), joined, memory).iter().all(|b| b.memory <= limit);
            let Some(count) = (lo..=rows).find(|&c| every_band_fits(c)) else { continue };
            let output_bytes = run.outputs.iter().map(|&t| graph.tensors[t].bytes()).sum();
            found.push(BandRun { start, end, count, output_bytes });
        }
    }
    found.sort_by_key(|r| (r.count, std::cmp::Reverse(r.end - r.start)));
    found
}

/// The cut of `band` (found by [`band_runs`] with the same `from` and `joined`).
pub fn band_plan(graph: &Graph, live: &Liveness, band: BandRun, (from, joined): (usize, u64), memory: &MemoryModel, unsharded_memory: u64) -> Arc<ShardPlan> {
    let BandRun { start, end, count, .. } = band;
    let run = run(graph, live, start, end).expect("a run found by band_runs");
    let (w, largest_weight, held) = run_weights(graph, live, start, end);
    let joined = if start == from { joined } else { 0 };
    let shards = cut(graph, &run, count, (w, largest_weight), joined, memory);
    let layout = Layout {
        strategy: Strategy::Bands,
        extent: run.height(graph),
        sliced: vec![],
        first_only: vec![],
        whole: held,
        input: run.input,
        input_axis: None,
        outputs: run.outputs,
        join: Join::Concat { axis: 2 },
    };
    Arc::new(ShardPlan { node: run.nodes[0], layout, shards, unsharded_memory, run: run.nodes })
}

/// The smallest largest-band estimate any run through position `p` reaches (bands of one row), or `None`
/// if no run through it can be cut into bands.
pub fn finest(graph: &Graph, live: &Liveness, p: usize, memory: &MemoryModel) -> Option<u64> {
    let earliest = (0..=p).rev().take_while(|&s| rowwise(graph, live.order[s])).last()?;
    let mut finest: Option<u64> = None;
    for start in starts(earliest, p) {
        for end in p + 1..=live.order.len() {
            if !rowwise(graph, live.order[end - 1]) {
                break;
            }
            let Some(run) = run(graph, live, start, end) else { continue };
            let (w, largest_weight, _) = run_weights(graph, live, start, end);
            let need = largest(graph, &run, run.height(graph), (w, largest_weight), 0, memory);
            finest = Some(finest.map_or(need, |f| f.min(need)));
        }
    }
    finest
}
