//! Planning a split: topological orders ([`order`]), the memory and cost models ([`memory`]), the exact
//! partition ([`partition`]) and the plan file ([`file`]).

pub mod file;
pub mod memory;
pub mod order;
pub mod partition;

pub use file::Plan;
pub use memory::{CostModel, MemoryModel};
pub use order::Liveness;
pub use partition::{Evaluator, Objective, Request, SegmentCost};

use crate::Result;
use crate::onnx::Graph;

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

/// Partitions `graph` for `request`, trying every candidate order and keeping the best.
pub fn plan(graph: &Graph, request: &Request, memory: &MemoryModel, cost: &CostModel) -> Result<Planned> {
    let mut best: Option<(Planned, (f64, f64))> = None;
    let mut failure: Option<(u64, crate::Error)> = None;
    for (name, order) in order::candidates(graph) {
        let live = Liveness::new(graph, order);
        let ev = Evaluator::new(graph, &live, memory, cost);
        match partition::partition(&ev, request) {
            Ok(segments) => {
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
                    failure = Some((smallest, error));
                }
            }
        }
    }
    match (best, failure) {
        (Some((planned, _)), _) => Ok(planned),
        (None, Some((_, error))) => Err(error),
        (None, None) => Err(crate::Error::Infeasible("the model has no nodes".into())),
    }
}

/// The smallest memory limit for which some candidate order admits a partition, and the node that sets it.
pub fn smallest_limit(graph: &Graph, memory: &MemoryModel, cost: &CostModel) -> (u64, String) {
    order::candidates(graph)
        .into_iter()
        .map(|(_, order)| {
            let live = Liveness::new(graph, order);
            let ev = Evaluator::new(graph, &live, memory, cost);
            let (bytes, pos) = partition::smallest_limit(&ev);
            (bytes, live.order.get(pos).map(|&n| graph.nodes[n].name.clone()).unwrap_or_default())
        })
        .min_by_key(|(bytes, _)| *bytes)
        .unwrap_or_default()
}
