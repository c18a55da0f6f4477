//! Cutting one node that does not fit a function into shards that run in parallel functions (fork-join,
//! as Gillis does): MatMul / Gemm with a constant weight by output columns (joined by Concat) or by the
//! reduction dimension (joined by Sum), Conv by output channels (grouped and depthwise Conv by groups),
//! Gather on a constant table by rows (each shard answers the indices in its range and zeros elsewhere,
//! joined by Sum). Nodes bound by their activations are cut with the run around them into bands of
//! output rows ([`super::bands`]).
//!
//! A node is cut along one dimension of `extent` units (columns, rows, channels, groups). A shard of `s`
//! units holds `s / extent` of the cut weights, reads the node's whole activation input (slicing it
//! inside when the cut runs along the reduction or the groups) and makes its part of the output. The
//! shard count is the smallest whose largest shard fits the limit.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::memory::MemoryModel;
use crate::onnx::{ElemType, Graph, NodeId, TensorId};

/// Along which dimension a node is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// MatMul / Gemm: output columns; the parts are concatenated on the last axis.
    Columns,
    /// MatMul / Gemm: the reduction dimension; the partial products are added.
    Reduction,
    /// Conv (one group): output channels; the parts are concatenated on axis 1.
    Channels,
    /// Grouped or depthwise Conv: groups; the parts are concatenated on axis 1.
    Groups,
    /// Gather on axis 0 of a constant table: rows; each shard contributes zeros for indices outside its
    /// rows, and the parts are added.
    Rows,
    /// A run of convolutions, poolings and elementwise ops: bands of its output's rows (axis 2), each
    /// computed from the rows of the input its windows reach; the parts are concatenated on axis 2
    /// ([`super::bands`]).
    Bands,
}

impl Strategy {
    /// What one unit of the cut is, for messages.
    pub fn unit(self) -> &'static str {
        match self {
            Strategy::Columns => "output column",
            Strategy::Reduction => "reduction row",
            Strategy::Channels => "output channel",
            Strategy::Groups => "group",
            Strategy::Rows => "table row",
            Strategy::Bands => "output row",
        }
    }
}

/// How the shards' partial results make the node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Join {
    /// ONNX `Concat` on `axis`.
    Concat {
        /// The concatenation axis (non-negative).
        axis: i64,
    },
    /// ONNX `Sum` of the partial results.
    Sum,
}

/// How one node divides into shards.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The dimension cut.
    pub strategy: Strategy,
    /// Number of units along it.
    pub extent: u64,
    /// Weights cut by units, with the axis each is cut on.
    pub sliced: Vec<(TensorId, usize)>,
    /// Weights only the first shard holds (the bias of a reduction cut).
    pub first_only: Vec<TensorId>,
    /// Weights every shard holds whole.
    pub whole: Vec<TensorId>,
    /// The node's activation input.
    pub input: TensorId,
    /// The axis of `input` a shard slices to its units, for reduction and group cuts.
    pub input_axis: Option<usize>,
    /// The outputs the shards make parts of: the node's output (for bands, every tensor of the run read
    /// after it).
    pub outputs: Vec<TensorId>,
    /// How the partial outputs are joined.
    pub join: Join,
}

/// The facts of one shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardCost {
    /// Its units `[lo, hi)` along the cut dimension.
    pub range: (u64, u64),
    /// Estimated operations.
    pub flops: u64,
    /// Bytes of its weights.
    pub weight_bytes: u64,
    /// Bytes of the largest of them that the node packs for its kernel (none for a Gather's rows).
    pub largest_weight_bytes: u64,
    /// Working bytes: its input, output, packed copies and wire copies at their busiest.
    pub peak_activation_bytes: u64,
    /// Bytes of its input and output.
    pub io_bytes: u64,
    /// Estimated peak memory.
    pub memory: u64,
}

/// A node cut into shards.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardPlan {
    /// The node.
    pub node: NodeId,
    /// How it is cut.
    pub layout: Layout,
    /// One entry per shard, in order.
    pub shards: Vec<ShardCost>,
    /// The estimate for a segment holding the node whole.
    pub unsharded_memory: u64,
    /// For a band cut, the run of nodes every shard computes, in order, `node` first (empty otherwise).
    pub run: Vec<NodeId>,
}

impl ShardPlan {
    /// The largest shard's estimated memory.
    pub fn memory(&self) -> u64 {
        self.shards.iter().map(|s| s.memory).max().unwrap_or(0)
    }

    /// The shape of shard `j`'s part of output `t`.
    pub fn partial_shape(&self, graph: &Graph, t: TensorId, j: usize) -> Vec<u64> {
        let out = &graph.tensors[t];
        let mut shape = out.shape.clone();
        if let Join::Concat { axis } = self.layout.join {
            let (lo, hi) = self.shards[j].range;
            shape[axis as usize] = shape[axis as usize] / self.layout.extent * (hi - lo);
        }
        shape
    }

    /// The name of shard `j`'s part of output `t`.
    pub fn partial_name(&self, graph: &Graph, t: TensorId, j: usize) -> String {
        partial_name(&graph.tensors[t].name, j)
    }
}

/// The name of shard `j`'s part of `tensor`.
pub fn partial_name(tensor: &str, j: usize) -> String {
    format!("{tensor}.shard{j}")
}

/// The ways `node` can be cut, best first; empty when it cannot be.
pub fn layouts(graph: &Graph, node: NodeId) -> Vec<Layout> {
    let n = &graph.nodes[node];
    let t = |slot: usize| n.operands.get(slot).copied().flatten();
    let weight = |id: TensorId| graph.tensors[id].is_weight();
    let float = |id: TensorId| matches!(graph.tensors[id].dtype, ElemType::F32 | ElemType::F64 | ElemType::F16);
    let rank = |id: TensorId| graph.tensors[id].shape.len();
    let dim = |id: TensorId, axis: usize| graph.tensors[id].shape[axis];
    let [output] = n.outputs[..] else { return vec![] };
    let mut out = Vec::new();
    match n.op_type.as_str() {
        "MatMul" => {
            let (Some(a), Some(b)) = (t(0), t(1)) else { return out };
            if weight(a) || !weight(b) || rank(b) != 2 || rank(a) < 2 || !float(b) {
                return out;
            }
            let base = |strategy, extent, sliced, input_axis, join| Layout {
                strategy, extent, sliced, first_only: vec![], whole: vec![], input: a, input_axis, outputs: vec![output], join,
            };
            out.push(base(Strategy::Columns, dim(b, 1), vec![(b, 1)], None, Join::Concat { axis: rank(output) as i64 - 1 }));
            out.push(base(Strategy::Reduction, dim(b, 0), vec![(b, 0)], Some(rank(a) - 1), Join::Sum));
        }
        "Gemm" => {
            let (Some(a), Some(b)) = (t(0), t(1)) else { return out };
            let c = t(2);
            if weight(a) || !weight(b) || c.is_some_and(|c| !weight(c)) || !float(b) {
                return out;
            }
            let trans_a = n.int_attribute("transA").unwrap_or(0) != 0;
            let trans_b = n.int_attribute("transB").unwrap_or(0) != 0;
            let columns = dim(b, if trans_b { 0 } else { 1 });
            let mut sliced = vec![(b, if trans_b { 0 } else { 1 })];
            let mut whole = vec![];
            if let Some(c) = c {
                let cut = rank(c) >= 1 && columns > 1 && *graph.tensors[c].shape.last().unwrap() == columns;
                if cut { sliced.push((c, rank(c) - 1)) } else { whole.push(c) }
            }
            out.push(Layout {
                strategy: Strategy::Columns, extent: columns, sliced, first_only: vec![], whole, input: a,
                input_axis: None, outputs: vec![output], join: Join::Concat { axis: 1 },
            });
            out.push(Layout {
                strategy: Strategy::Reduction,
                extent: dim(b, if trans_b { 1 } else { 0 }),
                sliced: vec![(b, if trans_b { 1 } else { 0 })],
                first_only: c.into_iter().collect(),
                whole: vec![],
                input: a,
                input_axis: Some(if trans_a { 0 } else { 1 }),
                outputs: vec![output],
                join: Join::Sum,
            });
        }
        "Conv" => {
            let (Some(x), Some(w)) = (t(0), t(1)) else { return out };
            let bias = t(2);
            if weight(x) || !weight(w) || bias.is_some_and(|b| !weight(b)) || rank(w) < 3 {
                return out;
            }
            let group = n.int_attribute("group").unwrap_or(1).max(1) as u64;
            let mut sliced = vec![(w, 0)];
            sliced.extend(bias.map(|b| (b, 0)));
            let (strategy, extent, input_axis) = match group {
                1 => (Strategy::Channels, dim(w, 0), None),
                g => (Strategy::Groups, g, Some(1)),
            };
            out.push(Layout {
                strategy, extent, sliced, first_only: vec![], whole: vec![], input: x, input_axis, outputs: vec![output],
                join: Join::Concat { axis: 1 },
            });
        }
        "Gather" => {
            let (Some(data), Some(indices)) = (t(0), t(1)) else { return out };
            let axis = n.int_attribute("axis").unwrap_or(0);
            let int = matches!(graph.tensors[indices].dtype, ElemType::I64 | ElemType::I32);
            if weight(indices) || !weight(data) || axis != 0 || !int || rank(data) < 1 || !float(data) {
                return out;
            }
            out.push(Layout {
                strategy: Strategy::Rows, extent: dim(data, 0), sliced: vec![(data, 0)], first_only: vec![],
                whole: vec![], input: indices, input_axis: None, outputs: vec![output], join: Join::Sum,
            });
        }
        _ => {}
    }
    out.retain(|l| l.extent >= 2);
    out
}

/// The facts of a shard of `layout` holding the units `range`; its estimate counts the `joined` bytes of
/// partial outputs of a group just before it that it joins first, as [`super::dag`] does.
fn shard_cost(graph: &Graph, node: NodeId, layout: &Layout, range: (u64, u64), first: bool, joined: u64, memory: &MemoryModel) -> ShardCost {
    let units = range.1 - range.0;
    let part = |bytes: u64| (bytes as u128 * units as u128).div_ceil(layout.extent as u128) as u64;
    let bytes = |t: TensorId| graph.tensors[t].bytes();
    let mut weight_bytes: u64 = layout.sliced.iter().map(|&(w, _)| part(bytes(w))).sum::<u64>()
        + layout.whole.iter().map(|&w| bytes(w)).sum::<u64>();
    if first {
        weight_bytes += layout.first_only.iter().map(|&w| bytes(w)).sum::<u64>();
    }
    if layout.strategy == Strategy::Rows {
        // the zero row answering indices outside the shard's rows
        weight_bytes += bytes(layout.sliced[0].0) / layout.extent;
    }
    let input = bytes(layout.input);
    let sliced_input = layout.input_axis.map(|_| part(input)).unwrap_or(0);
    let output = match layout.join {
        Join::Concat { .. } => part(bytes(layout.outputs[0])),
        Join::Sum => bytes(layout.outputs[0]),
    };
    let helpers = if layout.strategy == Strategy::Rows { 4 * input } else { 0 };
    let (packed, _) = super::order::packed_activations(graph, node);
    let packed = if layout.input_axis.is_some() { part(packed) } else { packed };
    let peak = super::memory::working_bytes(input + sliced_input + packed + output + helpers, [input], [output]);
    let io = input + output;
    let flops = part(graph.nodes[node].flops);
    let packs = super::order::packs_weights(&graph.nodes[node].op_type);
    let largest = layout.sliced.iter().map(|&(w, _)| part(bytes(w)))
        .chain(layout.whole.iter().map(|&w| bytes(w)))
        .chain(layout.first_only.iter().filter(|_| first).map(|&w| bytes(w)))
        .filter(|_| packs)
        .max()
        .unwrap_or(0);
    ShardCost {
        range, flops, weight_bytes, largest_weight_bytes: largest, peak_activation_bytes: peak, io_bytes: io,
        memory: memory.estimate(weight_bytes, largest, peak + joined),
    }
}

/// `extent` units in `count` near-equal ranges, the larger first.
pub(super) fn ranges(extent: u64, count: u64) -> Vec<(u64, u64)> {
    let (q, r) = (extent / count, extent % count);
    let mut lo = 0;
    (0..count)
        .map(|j| {
            let hi = lo + q + u64::from(j < r);
            let range = (lo, hi);
            lo = hi;
            range
        })
        .collect()
}

/// The estimate of the largest shard when `layout` is cut `count` ways.
fn largest(graph: &Graph, node: NodeId, layout: &Layout, count: u64, joined: u64, memory: &MemoryModel) -> u64 {
    let units = layout.extent.div_ceil(count);
    shard_cost(graph, node, layout, (0, units), true, joined, memory).memory
}

/// The smallest-count cut of `node` whose every shard fits `limit`, trying each layout and keeping the
/// fewest shards (the first layout on a tie); `joined` as in [`shard_cost`]. `None` when no layout fits,
/// even one unit per shard.
pub fn shard(graph: &Graph, node: NodeId, memory: &MemoryModel, limit: u64, unsharded_memory: u64, joined: u64) -> Option<Arc<ShardPlan>> {
    let mut best: Option<(u64, Layout)> = None;
    for layout in layouts(graph, node) {
        if largest(graph, node, &layout, layout.extent, joined, memory) > limit {
            continue;
        }
        // the largest shard shrinks as the count grows: binary search for the smallest count that fits
        let (mut lo, mut hi) = (1u64, layout.extent);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if largest(graph, node, &layout, mid, joined, memory) <= limit { hi = mid } else { lo = mid + 1 }
        }
        if best.as_ref().is_none_or(|(count, _)| lo < *count) {
            best = Some((lo, layout));
        }
    }
    let (count, layout) = best?;
    Some(Arc::new(cut(graph, node, layout, count, memory, unsharded_memory, joined)))
}

/// `node` cut into exactly `count` shards that each fit `limit`, by the layout whose shards move the
/// fewest bytes, or `None` if no layout has as many units or its shards do not fit.
pub fn shard_into(graph: &Graph, node: NodeId, memory: &MemoryModel, limit: u64, count: u64, unsharded_memory: u64, joined: u64) -> Option<ShardPlan> {
    layouts(graph, node)
        .into_iter()
        .filter(|l| l.extent >= count)
        .map(|layout| cut(graph, node, layout, count, memory, unsharded_memory, joined))
        .filter(|plan| plan.memory() <= limit)
        .min_by_key(|plan| plan.shards.iter().map(|s| s.io_bytes).sum::<u64>())
}

/// `layout` in `count` shards.
fn cut(graph: &Graph, node: NodeId, layout: Layout, count: u64, memory: &MemoryModel, unsharded_memory: u64, joined: u64) -> ShardPlan {
    let shards = ranges(layout.extent, count)
        .into_iter()
        .enumerate()
        .map(|(j, range)| shard_cost(graph, node, &layout, range, j == 0, joined, memory))
        .collect();
    ShardPlan { node, layout, shards, unsharded_memory, run: vec![] }
}

/// The smallest largest-shard estimate any cut of `node` reaches (one unit per shard), and the unit,
/// or `None` if the node cannot be cut.
pub fn finest(graph: &Graph, node: NodeId, memory: &MemoryModel) -> Option<(u64, Strategy)> {
    layouts(graph, node)
        .into_iter()
        .map(|l| (largest(graph, node, &l, l.extent, 0, memory), l.strategy))
        .min_by_key(|(m, _)| *m)
}
