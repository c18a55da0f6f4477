//! Planning a split: topological orders ([`order`]), the memory and cost models ([`memory`]), the exact
//! partition ([`partition`]), nodes cut into parallel shards by their weights ([`shard`]) or with the run
//! around them into bands of rows ([`bands`]), and the plan file ([`file`]).

pub mod bands;
pub mod dag;
pub mod file;
pub mod memory;
pub mod order;
pub mod partition;
pub mod shard;

pub use file::Plan;
pub use memory::{CostModel, MemoryModel};
pub use order::Liveness;
pub use partition::{Evaluator, Objective, Request, SegmentCost};

use crate::Result;
use crate::onnx::{Graph, NodeId};

/// The chosen partition, on the order it was found for.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Which topological order won.
    pub order_name: &'static str,
    /// Liveness along that order.
    pub live: Liveness,
    /// The segments, in pipeline order.
    pub segments: Vec<SegmentCost>,
    /// Estimated seconds of one request end to end.
    pub latency_seconds: f64,
    /// Estimated seconds of the slowest stage.
    pub slowest_stage_seconds: f64,
}

/// Partitions `graph` for `request`, trying every candidate order and keeping the best. Nodes over the
/// limit are cut into shards where they can be ([`shard`]); the error for one that cannot names the node
/// and the smallest limit that works.
pub fn plan(graph: &Graph, request: &Request, memory: &MemoryModel, cost: &CostModel) -> Result<Planned> {
    match try_plan(graph, request, memory, cost) {
        Ok(planned) => Ok(planned),
        Err(Failure::Error(error)) => Err(error),
        Err(Failure::Oversized(node)) => Err(oversized(graph, node, request.max_memory, memory, cost)),
    }
}

enum Failure {
    /// A node over the limit that cannot be cut to fit.
    Oversized(NodeId),
    Error(crate::Error),
}

fn try_plan(graph: &Graph, request: &Request, memory: &MemoryModel, cost: &CostModel) -> Result<Planned, Failure> {
    let mut best: Option<(Planned, (f64, f64))> = None;
    let mut failure: Option<(u64, Failure)> = None;
    for (name, order) in order::candidates(graph) {
        let live = Liveness::new(graph, order);
        let ev = match Evaluator::sharded(graph, &live, memory, cost, request.max_memory) {
            Ok(ev) => ev,
            Err(pos) => {
                failure.get_or_insert((u64::MAX, Failure::Oversized(live.order[pos])));
                continue;
            }
        };
        match partition::partition(&ev, request) {
            Ok(mut segments) => {
                if segments.last().is_some_and(|s| s.group.is_some()) {
                    let join = ev.join_stage();
                    if join.memory > request.max_memory {
                        failure.get_or_insert((u64::MAX, Failure::Error(crate::Error::Infeasible(format!(
                            "the stage joining the shards of the last node needs {}, over the limit of {}",
                            partition::mib(join.memory),
                            partition::mib(request.max_memory)
                        )))));
                        continue;
                    }
                    segments.push(join);
                }
                let score = ev.score(&segments, request.objective);
                if best.as_ref().is_none_or(|(_, b)| score.0 < b.0 || (score.0 == b.0 && score.1 < b.1)) {
                    let latency_seconds = ev.score(&segments, Objective::Latency).0;
                    let slowest_stage_seconds = ev.score(&segments, Objective::Throughput).0;
                    let planned = Planned { order_name: name, live: live.clone(), segments, latency_seconds, slowest_stage_seconds };
                    best = Some((planned, score));
                }
            }
            Err(error) => {
                let (smallest, _) = partition::smallest_limit(&ev);
                if failure.as_ref().is_none_or(|(s, _)| smallest < *s) {
                    failure = Some((smallest, Failure::Error(error)));
                }
            }
        }
    }
    match (best, failure) {
        (Some((planned, _)), _) => Ok(planned),
        (None, Some((_, failure))) => Err(failure),
        (None, None) => Err(Failure::Error(crate::Error::Infeasible("the model has no nodes".into()))),
    }
}

/// The error for `node`, over `limit` and impossible to cut to fit.
fn oversized(graph: &Graph, node: NodeId, limit: u64, memory: &MemoryModel, cost: &CostModel) -> crate::Error {
    let (smallest, _) = smallest_limit(graph, memory, cost);
    let n = &graph.nodes[node];
    let live = Liveness::new(graph, order::candidates(graph).swap_remove(0).1);
    let ev = Evaluator::new(graph, &live, memory, cost);
    let pos = live.order.iter().position(|&x| x == node).expect("the node is in the order");
    let needed = ev.segment(pos, pos + 1).memory;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let by_rows = bands::finest(graph, &live, pos, memory).map(|m| (m, shard::Strategy::Bands));
    let finest = [shard::finest(graph, node, memory), by_rows].into_iter().flatten().min_by_key(|(m, _)| *m);
    match finest {
        Some((shard_memory, strategy)) => crate::Error::ShardTooLarge {
            node: n.name.clone(),
            op: n.op_type.clone(),
            unit: strategy.unit().into(),
            needed_mib: mib(needed),
            shard_mib: mib(shard_memory),
            limit,
            limit_mib: mib(limit),
            smallest,
            smallest_mib: mib(smallest),
        },
        None => crate::Error::NodeTooLarge {
            node: n.name.clone(),
            op: n.op_type.clone(),
            needed,
            needed_mib: mib(needed),
            limit,
            smallest,
            smallest_mib: mib(smallest),
        },
    }
}

/// The smallest memory limit for which the model has a partition (nodes cut into shards where they can
/// be), and the node that sets it. Starts from the largest of every node's smallest need (whole, its
/// finest shard, or its run's finest band; nodes no cut may separate count together) and raises it by 1 %
/// until a partition exists.
pub fn smallest_limit(graph: &Graph, memory: &MemoryModel, cost: &CostModel) -> (u64, String) {
    let (mut limit, node) = order::candidates(graph)
        .into_iter()
        .map(|(_, order)| {
            let live = Liveness::new(graph, order);
            let ev = Evaluator::new(graph, &live, memory, cost);
            let cuts: Vec<usize> = (1..=ev.len()).filter(|&c| c == ev.len() || live.cut_allowed[c]).collect();
            std::iter::once(0)
                .chain(cuts.iter().copied())
                .zip(cuts.iter().copied())
                .map(|(start, end)| {
                    let node = live.order[start];
                    let whole = ev.segment(start, end).memory;
                    let alone = end == start + 1;
                    let by_weights = shard::finest(graph, node, memory).filter(|_| alone).map(|(m, _)| m);
                    let by_rows = bands::finest(graph, &live, start, memory).filter(|_| alone);
                    let need = [Some(whole), by_weights, by_rows].into_iter().flatten().min().unwrap_or(whole);
                    (need, graph.nodes[node].name.clone())
                })
                .max_by_key(|(need, _)| *need)
                .unwrap_or_default()
        })
        .min_by_key(|(bytes, _)| *bytes)
        .unwrap_or_default();
    let request = |max_memory| Request { max_memory, segments: None, objective: Objective::Latency, max_segments: 1 };
    for _ in 0..64 {
        if try_plan(graph, &request(limit), memory, cost).is_ok() {
            break;
        }
        limit += limit.div_ceil(100);
    }
    (limit, node)
}
