//! From a partition to the functions that run it: the stages as a DAG of segments and groups of shards,
//! with every function's inputs, outputs and joins, and its memory estimate for those exact tensors.
//!
//! A group's shards read the node's activation input and each make its part of every output of the group.
//! The parts stay separate until a function needs the output: a segment then receives the partials and joins
//! them first (and passes the joined tensor on if later stages need it); a shard of a later group joins
//! them too if its node reads the tensor.

use std::collections::HashMap;
use std::sync::Arc;

use super::file::{JoinSpec, TensorSpec};
use super::shard::ShardPlan;
use super::memory::working_bytes;
use super::{MemoryModel, Planned};
use crate::onnx::{Graph, NodeId, TensorId};
use crate::{Error, Result};

/// What a function computes.
#[derive(Clone, Debug)]
pub enum Body {
    /// The nodes at positions `[start, end)` of the order (none for a stage that only joins).
    Segment {
        /// First position.
        start: usize,
        /// One past the last position.
        end: usize,
    },
    /// Shard `index` of a group.
    Shard {
        /// The group's node and its cut.
        plan: Arc<ShardPlan>,
        /// Which shard.
        index: usize,
    },
}

/// One function of the plan.
#[derive(Clone, Debug)]
pub struct Unit {
    /// The stage it belongs to.
    pub stage: usize,
    /// What it computes.
    pub body: Body,
    /// The tensors it receives.
    pub inputs: Vec<TensorSpec>,
    /// The tensors it returns.
    pub outputs: Vec<TensorSpec>,
    /// Tensors it makes from partial outputs before anything else.
    pub joins: Vec<JoinSpec>,
    /// Estimated operations.
    pub flops: u64,
    /// Bytes of its weights.
    pub weight_bytes: u64,
    /// Bytes of the largest of them.
    pub largest_weight_bytes: u64,
    /// Working bytes: the most activation bytes it holds at once, its joins and wire copies included.
    pub peak_activation_bytes: u64,
    /// Bytes of its inputs and outputs.
    pub io_bytes: u64,
    /// Estimated peak memory.
    pub memory: u64,
}

impl Unit {
    /// The computing nodes of a segment, in order (none for a shard).
    pub fn nodes(&self, planned: &Planned) -> Vec<NodeId> {
        match &self.body {
            Body::Segment { start, end } => planned.live.order[*start..*end].to_vec(),
            Body::Shard { .. } => vec![],
        }
    }
}

fn spec(graph: &Graph, t: TensorId) -> TensorSpec {
    let tensor = &graph.tensors[t];
    TensorSpec { name: tensor.name.clone(), dtype: tensor.dtype, shape: tensor.shape.clone() }
}

/// The join of a group's parts of its output `t`, and the parts' specs, shard by shard.
fn join_of(graph: &Graph, plan: &ShardPlan, t: TensorId) -> (JoinSpec, Vec<TensorSpec>) {
    let out = &graph.tensors[t];
    let partials: Vec<TensorSpec> = (0..plan.shards.len())
        .map(|j| TensorSpec { name: plan.partial_name(graph, t, j), dtype: out.dtype, shape: plan.partial_shape(graph, t, j) })
        .collect();
    let join = JoinSpec { tensor: out.name.clone(), join: plan.layout.join, partials: partials.iter().map(|p| p.name.clone()).collect() };
    (join, partials)
}

/// The functions of a planned split, stage by stage; every estimate is checked against `limit`.
pub fn units(graph: &Graph, planned: &Planned, memory: &MemoryModel, limit: u64) -> Result<Vec<Unit>> {
    let live = &planned.live;
    let mut pending: HashMap<TensorId, Arc<ShardPlan>> = HashMap::new();
    let mut units = Vec::new();
    // the inputs of a function needing `needs`: partials (and their joins) for tensors still in parts
    let resolve = |needs: &[TensorId], pending: &HashMap<TensorId, Arc<ShardPlan>>| {
        let (mut inputs, mut joins, mut joined_bytes) = (Vec::new(), Vec::new(), 0);
        for &t in needs {
            match pending.get(&t) {
                Some(plan) => {
                    let (join, partials) = join_of(graph, plan, t);
                    inputs.extend(partials);
                    joins.push(join);
                    joined_bytes += graph.tensors[t].bytes();
                }
                None => inputs.push(spec(graph, t)),
            }
        }
        (inputs, joins, joined_bytes)
    };
    let bytes = |specs: &[TensorSpec]| specs.iter().map(TensorSpec::bytes).sum::<u64>();
    let sizes = |specs: &[TensorSpec]| specs.iter().map(TensorSpec::bytes).collect::<Vec<_>>();
    for (stage, seg) in planned.segments.iter().enumerate() {
        match &seg.group {
            Some(plan) => {
                let (inputs, joins, joined) = resolve(&[plan.layout.input], &pending);
                let parts: Vec<Vec<TensorSpec>> = plan.layout.outputs.iter().map(|&t| join_of(graph, plan, t).1).collect();
                for (index, shard) in plan.shards.iter().enumerate() {
                    let outputs: Vec<TensorSpec> = parts.iter().map(|p| p[index].clone()).collect();
                    let io_bytes = bytes(&inputs) + bytes(&outputs);
                    let peak = working_bytes(shard.peak_activation_bytes + joined, sizes(&inputs), sizes(&outputs));
                    units.push(Unit {
                        stage,
                        body: Body::Shard { plan: plan.clone(), index },
                        inputs: inputs.clone(),
                        outputs,
                        joins: joins.clone(),
                        flops: shard.flops,
                        weight_bytes: shard.weight_bytes,
                        largest_weight_bytes: shard.largest_weight_bytes,
                        peak_activation_bytes: peak,
                        io_bytes,
                        memory: memory.estimate(shard.weight_bytes, shard.largest_weight_bytes, peak),
                    });
                }
                for &t in &plan.layout.outputs {
                    pending.insert(t, plan.clone());
                }
            }
            None => {
                let (inputs, joins, _) = resolve(&live.crossing[seg.start], &pending);
                for join in &joins {
                    pending.retain(|&t, _| graph.tensors[t].name != join.tensor);
                }
                let outputs: Vec<TensorSpec> = live.crossing[seg.end].iter().map(|&t| spec(graph, t)).collect();
                let io_bytes = bytes(&inputs) + bytes(&outputs);
                let peak = working_bytes(seg.peak_activation_bytes, sizes(&inputs), sizes(&outputs));
                units.push(Unit {
                    stage,
                    body: Body::Segment { start: seg.start, end: seg.end },
                    inputs,
                    outputs,
                    joins,
                    flops: seg.flops,
                    weight_bytes: seg.weight_bytes,
                    largest_weight_bytes: seg.largest_weight_bytes,
                    peak_activation_bytes: peak,
                    io_bytes,
                    memory: memory.estimate(seg.weight_bytes, seg.largest_weight_bytes, peak),
                });
            }
        }
    }
    for (i, unit) in units.iter().enumerate() {
        if unit.memory > limit {
            return Err(Error::Infeasible(format!(
                "function {i} (stage {}) needs an estimated {} with the partial outputs it joins, over the limit of {}",
                unit.stage,
                super::partition::mib(unit.memory),
                super::partition::mib(limit)
            )));
        }
    }
    Ok(units)
}
