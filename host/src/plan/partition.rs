//! Choosing the cut points: exact dynamic programming over the cut points of one topological order, as
//! in PipeDream and Gillis.
//!
//! A segment is a run `[start, end)` of the order. `dp[k][p]` is the best way to cover positions `0..p`
//! with `k` segments that each fit the memory limit; the answer is `dp[K][n]` for a given `K`, or the best
//! over all `k` otherwise. The objective is either end-to-end latency (all compute plus every hop) or
//! throughput (the slowest stage, ties broken by latency).
//!
//! A node that does not fit the limit alone and can be cut ([`super::shard`]) becomes a group stage of its
//! own: the run `[p, p + 1)` whose cost is its largest shard's. No segment may contain it, and the stage
//! after it also receives the shards' partial outputs and joins them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::memory::{CostModel, MemoryModel, working_bytes};
use super::order::Liveness;
use super::shard::{self, Join, ShardPlan};
use super::bands;
use crate::onnx::Graph;
use crate::{Error, Result};

/// How many times in all [`Evaluator::sharded`] tries a group's next choice.
const RETRIES: usize = 32;

/// How many band cuts of one node [`Evaluator::sharded`] may try.
const CHOICES: usize = 8;

/// Where placing groups failed: the node over the limit that could not be cut, and whether it was the
/// first one met after the group placed last (whose other choices may then help).
#[derive(Clone, Copy)]
struct Failed {
    position: usize,
    first: bool,
}

/// What the partition optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// End-to-end latency of one request: compute plus every hop between segments.
    Latency,
    /// Requests per second of the pipeline: its slowest stage.
    Throughput,
}

/// What the user asks of a partition.
#[derive(Clone, Debug)]
pub struct Request {
    /// Every segment's estimated memory must be at most this many bytes.
    pub max_memory: u64,
    /// Exactly this many segments, if given.
    pub segments: Option<usize>,
    /// What to optimise.
    pub objective: Objective,
    /// The most segments considered when `segments` is not given and the objective is throughput.
    pub max_segments: usize,
}

/// The facts of one candidate segment `[start, end)` of an order.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentCost {
    /// First position.
    pub start: usize,
    /// One past the last position.
    pub end: usize,
    /// Operations of its nodes.
    pub flops: u64,
    /// Bytes of the distinct weights its nodes read.
    pub weight_bytes: u64,
    /// Bytes of the largest of them that a node packs for its kernel ([`Liveness::packed`]).
    pub largest_weight_bytes: u64,
    /// Working bytes: the most activation bytes it holds at once, its wire copies included
    /// ([`working_bytes`]).
    pub peak_activation_bytes: u64,
    /// Bytes of the tensors entering and leaving it.
    pub io_bytes: u64,
    /// Estimated peak memory (of its largest shard for a group).
    pub memory: u64,
    /// For a group stage, the node's shards.
    pub group: Option<Arc<ShardPlan>>,
}

/// Evaluates candidate segments of one order.
pub struct Evaluator<'a> {
    graph: &'a Graph,
    live: &'a Liveness,
    memory: &'a MemoryModel,
    cost: &'a CostModel,
    /// The group stage at each position, for nodes cut into shards.
    groups: Vec<Option<SegmentCost>>,
    /// Bytes a stage starting at each cut receives besides the crossing tensors (the partial sums of a
    /// group just before), and bytes its joins add to its peak.
    join_io: Vec<u64>,
    join_peak: Vec<u64>,
}

impl<'a> Evaluator<'a> {
    /// An evaluator over `live`'s order.
    pub fn new(graph: &'a Graph, live: &'a Liveness, memory: &'a MemoryModel, cost: &'a CostModel) -> Self {
        let n = live.order.len();
        Evaluator { graph, live, memory, cost, groups: vec![None; n], join_io: vec![0; n + 1], join_peak: vec![0; n + 1] }
    }

    /// An evaluator for `limit`: every node that alone exceeds it and can be cut becomes a group stage of
    /// the fewest shards that fit: cut by its weights ([`shard`]), or, when they do not fit, with the run
    /// of row-wise nodes around it into bands of output rows ([`bands`]). With
    /// [`CostModel::parallel_shards`] above 1, a node that fits becomes a group too where its shards
    /// finish sooner ([`Self::parallel`]). `Err(position)` names a node over the limit that cannot be cut
    /// to fit.
    pub fn sharded(graph: &'a Graph, live: &'a Liveness, memory: &'a MemoryModel, cost: &'a CostModel, limit: u64) -> Result<Self, usize> {
        let mut ev = Evaluator::new(graph, live, memory, cost);
        let mut retries = RETRIES;
        ev.place_groups(0, limit, &mut retries).map_err(|failed| failed.position)?;
        Ok(ev)
    }

    /// Places the groups of positions `from..`: walks the order, cutting every node over `limit`. When
    /// the first node over the limit after a group cannot be cut to fit (it must join that group's
    /// outputs, or its run would have to start inside that group), the group's next choice is tried (a
    /// band run ending elsewhere), up to `retries` times in all.
    fn place_groups(&mut self, from: usize, limit: u64, retries: &mut usize) -> Result<(), Failed> {
        let (graph, live, memory) = (self.graph, self.live, self.memory);
        let mut p = from;
        while p < self.len() {
            let alone = live.cut_allowed[p] && (p + 1 == self.len() || live.cut_allowed[p + 1]);
            let whole = self.segment(p, p + 1);
            if !alone {
                p += 1;
                continue;
            }
            if whole.memory <= limit {
                match self.parallel(p, &whole, limit) {
                    Some(plan) => return self.place_after(std::iter::once((p, plan)), limit, retries).map_err(|f| f.unwrap_or(Failed { position: p, first: true })),
                    None => p += 1,
                }
                continue;
            }
            let node = live.order[p];
            let joined = |at: usize| self.join_peak[at] + self.join_io[at];
            let by_weights = || shard::shard(graph, node, memory, limit, whole.memory, joined(p)).map(|plan| (p, plan)).into_iter().collect::<Vec<_>>();
            let by_rows = || self.band_choices(p, (from, joined(from)), limit, whole.memory);
            // a node holding more activations than weights is cut with its run into bands first
            let choices = match whole.weight_bytes >= whole.peak_activation_bytes {
                true => [by_weights(), by_rows()].concat(),
                false => [by_rows(), by_weights()].concat(),
            };
            return self.place_after(choices.into_iter(), limit, retries).map_err(|f| f.unwrap_or(Failed { position: p, first: true }));
        }
        Ok(())
    }

    /// Makes the first of `choices` after which the rest of the order can be placed a group, and places
    /// the rest. `Err(None)` when there is no choice.
    fn place_after(&mut self, choices: impl Iterator<Item = (usize, Arc<ShardPlan>)>, limit: u64, retries: &mut usize) -> Result<(), Option<Failed>> {
        let mut failed: Option<Failed> = None;
        for (start, plan) in choices {
            let saved = (self.groups.clone(), self.join_io.clone(), self.join_peak.clone());
            let end = self.add_group(start, plan);
            match self.place_groups(end, limit, retries) {
                Ok(()) => return Ok(()),
                Err(f) => {
                    (self.groups, self.join_io, self.join_peak) = saved;
                    let first = failed.get_or_insert(Failed { position: f.position, first: false });
                    if !f.first || *retries == 0 {
                        return Err(Some(*first));
                    }
                    *retries -= 1;
                }
            }
        }
        Err(failed)
    }

    /// The band cuts through position `p` worth trying, best first (at most [`CHOICES`]): those after
    /// which the next node, joining the bands, still fits the limit, then as [`bands::band_runs`] ranks.
    fn band_choices(&self, p: usize, start: (usize, u64), limit: u64, unsharded_memory: u64) -> Vec<(usize, Arc<ShardPlan>)> {
        let joinable = |run: &bands::BandRun| {
            let cut = (run.end + 1..=self.len()).find(|&c| c == self.len() || self.live.cut_allowed[c]).unwrap_or(self.len());
            let next = if run.end == self.len() { self.join_stage() } else { self.segment(run.end, cut) };
            self.memory.estimate(next.weight_bytes, next.largest_weight_bytes, next.peak_activation_bytes + 2 * run.output_bytes) <= limit
        };
        let mut runs = bands::band_runs(self.graph, self.live, p, start, self.memory, limit);
        runs.sort_by_key(|r| !joinable(r));
        runs.into_iter()
            .take(CHOICES)
            .map(|run| (run.start, bands::band_plan(self.graph, self.live, run, start, self.memory, unsharded_memory)))
            .collect()
    }

    /// Makes `plan`, starting at position `start`, a group stage; returns the position after it.
    fn add_group(&mut self, start: usize, plan: Arc<ShardPlan>) -> usize {
        let end = start + plan.run.len().max(1);
        let output: u64 = plan.layout.outputs.iter().map(|&t| self.graph.tensors[t].bytes()).sum();
        if plan.layout.join == Join::Sum {
            self.join_io[end] = output * (plan.shards.len() as u64 - 1);
        }
        self.join_peak[end] = output;
        let flops = plan.shards.iter().map(|s| s.flops).max().unwrap_or(0);
        let largest = plan.shards.iter().max_by_key(|s| s.memory).expect("a group has shards");
        self.groups[start] = Some(SegmentCost {
            start,
            end,
            flops,
            weight_bytes: largest.weight_bytes,
            largest_weight_bytes: largest.largest_weight_bytes,
            peak_activation_bytes: largest.peak_activation_bytes,
            io_bytes: largest.io_bytes,
            memory: plan.memory(),
            group: Some(plan),
        });
        end
    }

    /// The cut of the node at `p`, which fits `limit` whole, into 2 to [`CostModel::parallel_shards`]
    /// shards that most shortens a request, if any does: the compute the shards save running side by
    /// side (the node's against its largest shard's) must exceed what the group adds, two hops (into
    /// the shards and out of them) carrying every shard's input and output.
    fn parallel(&self, p: usize, whole: &SegmentCost, limit: u64) -> Option<Arc<ShardPlan>> {
        let node = self.live.order[p];
        (2..=self.cost.parallel_shards)
            .filter_map(|count| shard::shard_into(self.graph, node, self.memory, limit, count, whole.memory, self.join_peak[p] + self.join_io[p]))
            .map(|plan| {
                let largest = plan.shards.iter().map(|s| s.flops).max().unwrap_or(0);
                let moved: u64 = plan.shards.iter().map(|s| s.io_bytes).sum();
                let saved = self.cost.compute(whole.flops) - self.cost.compute(largest);
                (saved - 2.0 * self.cost.hop_seconds - moved as f64 / self.cost.bytes_per_second, plan)
            })
            .filter(|(gain, _)| *gain > 0.0)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, plan)| Arc::new(plan))
    }

    /// The group stage at position `p`, if its node is cut into shards.
    pub fn group(&self, p: usize) -> Option<&SegmentCost> {
        self.groups.get(p).and_then(Option::as_ref)
    }

    /// The liveness this evaluator reads.
    pub fn liveness(&self) -> &Liveness {
        self.live
    }

    /// The stage that joins the partial outputs of a group at the end of the order (whose outputs are
    /// model outputs): a segment of no nodes of the model.
    pub fn join_stage(&self) -> SegmentCost {
        let n = self.len();
        let io = 2 * self.live.crossing_bytes[n] + self.join_io[n];
        let inputs = self.wire(n).chain([self.join_io[n]]);
        let peak = working_bytes(self.live.crossing_bytes[n] + self.join_io[n] + self.join_peak[n], inputs, self.wire(n));
        let memory = self.memory.estimate(0, 0, peak);
        SegmentCost { start: n, end: n, flops: 0, weight_bytes: 0, largest_weight_bytes: 0, peak_activation_bytes: peak, io_bytes: io, memory, group: None }
    }

    /// The sizes of the tensors crossing cut `c`.
    fn wire(&self, c: usize) -> impl Iterator<Item = u64> + '_ {
        self.live.crossing[c].iter().map(|&t| self.graph.tensors[t].bytes())
    }

    /// Number of positions in the order.
    pub fn len(&self) -> usize {
        self.live.order.len()
    }

    /// Whether the order is empty.
    pub fn is_empty(&self) -> bool {
        self.live.order.is_empty()
    }

    /// The facts of `[start, end)`, computed directly.
    pub fn segment(&self, start: usize, end: usize) -> SegmentCost {
        if let Some(group) = self.group(start).filter(|g| g.end == end) {
            return group.clone();
        }
        let mut weights: Vec<usize> = self.live.weights[start..end].iter().flatten().copied().collect();
        weights.sort_unstable();
        weights.dedup();
        let weight_bytes = weights.iter().map(|&w| self.graph.tensors[w].bytes()).sum();
        let largest = self.live.packed[start..end].iter().copied().max().unwrap_or(0);
        let peak = self.live.live_bytes[start..end].iter().copied().max().unwrap_or(0);
        let flops = self.live.flops[start..end].iter().sum();
        self.finish(start, end, flops, (weight_bytes, largest), peak)
    }

    /// The cost of `[start, end)` from its operations, its (total, largest) weight bytes and its peak.
    fn finish(&self, start: usize, end: usize, flops: u64, (weight_bytes, largest): (u64, u64), peak: u64) -> SegmentCost {
        let io_bytes = self.live.crossing_bytes[start] + self.join_io[start] + self.live.crossing_bytes[end];
        let inputs = self.wire(start).chain([self.join_io[start]]);
        let peak = working_bytes(peak + self.join_io[start] + self.join_peak[start], inputs, self.wire(end));
        let memory = self.memory.estimate(weight_bytes, largest, peak);
        SegmentCost { start, end, flops, weight_bytes, largest_weight_bytes: largest, peak_activation_bytes: peak, io_bytes, memory, group: None }
    }

    /// Every segment starting at `start`, by increasing end, until its weights alone exceed `limit`; it
    /// ends only where a cut is allowed ([`Liveness::cut_allowed`]).
    fn extensions(&self, start: usize, limit: u64, stamp: &mut [usize]) -> Vec<SegmentCost> {
        if let Some(group) = self.group(start) {
            return vec![group.clone()];
        }
        let mut out = Vec::new();
        let (mut flops, mut weight_bytes, mut largest, mut peak) = (0, 0, 0, 0);
        for end in start + 1..=self.len() {
            let pos = end - 1;
            if self.group(pos).is_some() {
                break;
            }
            for &w in &self.live.weights[pos] {
                if stamp[w] != start {
                    stamp[w] = start;
                    weight_bytes += self.graph.tensors[w].bytes();
                }
            }
            largest = largest.max(self.live.packed[pos]);
            if self.memory.estimate(weight_bytes, largest, 0) > limit {
                break;
            }
            flops += self.live.flops[pos];
            peak = peak.max(self.live.live_bytes[pos]);
            if end == self.len() || self.live.cut_allowed[end] {
                out.push(self.finish(start, end, flops, (weight_bytes, largest), peak));
            }
        }
        out
    }

    /// Seconds this segment adds to one request's latency: its compute and the hop after it.
    pub fn latency_share(&self, s: &SegmentCost) -> f64 {
        let hop = if s.end < self.len() { self.cost.hop(self.live.crossing_bytes[s.end] + self.join_io[s.end]) } else { 0.0 };
        self.cost.compute(s.flops) + hop
    }

    /// Seconds one request occupies this stage: receiving its inputs over a hop, then computing.
    pub fn stage_seconds(&self, s: &SegmentCost) -> f64 {
        let hop = if s.start > 0 { self.cost.hop(self.live.crossing_bytes[s.start] + self.join_io[s.start]) } else { 0.0 };
        self.cost.compute(s.flops) + hop
    }

    /// The objective of a whole partition as (primary, tie-break): lower is better.
    pub fn score(&self, segments: &[SegmentCost], objective: Objective) -> (f64, f64) {
        let latency = segments.iter().map(|s| self.latency_share(s)).sum();
        match objective {
            Objective::Latency => (latency, 0.0),
            Objective::Throughput => (segments.iter().map(|s| self.stage_seconds(s)).fold(0.0, f64::max), latency),
        }
    }
}

#[derive(Clone, Copy)]
struct State {
    score: (f64, f64),
    prev: usize,
}

fn better(a: (f64, f64), b: (f64, f64)) -> bool {
    let tol = 1e-12 * a.0.abs().max(b.0.abs());
    if (a.0 - b.0).abs() > tol { a.0 < b.0 } else { a.1 < b.1 }
}

/// What the dynamic program minimises over segments.
enum Goal {
    /// The request's objective.
    Objective(Objective),
    /// The largest segment memory (to find the smallest limit that admits a partition).
    Memory,
}

/// The best partition of the order for the request.
pub fn partition(ev: &Evaluator, request: &Request) -> Result<Vec<SegmentCost>> {
    let n = ev.len();
    if let Some(k) = request.segments {
        if k == 0 {
            return Err(Error::Infeasible("--segments must be at least 1".into()));
        }
        if k > n {
            return Err(Error::Infeasible(format!(
                "{k} segments were asked for, but the model has {n} nodes, so at most {} cut points and {n} segments",
                n.saturating_sub(1)
            )));
        }
    }
    check_single_nodes(ev, request.max_memory)?;
    let layers = match (request.segments, request.objective) {
        (Some(k), _) => Some(k),
        (None, Objective::Latency) => None,
        (None, Objective::Throughput) => Some(request.max_segments.min(n).max(1)),
    };
    let goal = Goal::Objective(request.objective);
    if let Some(found) = solve(ev, request.max_memory, layers, request.segments.is_none(), &goal) {
        return Ok(found);
    }
    Err(match request.segments {
        Some(k) => {
            let smallest = solve(ev, u64::MAX, Some(k), false, &Goal::Memory)
                .map(|segs| segs.iter().map(|s| s.memory).max().unwrap_or(0))
                .unwrap_or(u64::MAX);
            Error::Infeasible(format!(
                "no partition into exactly {k} segments fits {} (the smallest limit for {k} segments is {})",
                mib(request.max_memory),
                mib(smallest)
            ))
        }
        None => Error::Infeasible(format!(
            "no partition into at most {} segments fits {}; raise --max-segments or the limit",
            request.max_segments,
            mib(request.max_memory)
        )),
    })
}

/// The smallest memory limit for which this order has any partition: its largest shortest segment (one
/// node, or the nodes between two cuts that are allowed), with that segment's first position.
pub fn smallest_limit(ev: &Evaluator) -> (u64, usize) {
    let mut smallest = (0, 0);
    let mut start = 0;
    while start < ev.len() {
        if let Some(group) = ev.group(start) {
            smallest = smallest.max((group.memory, start));
            start = group.end;
            continue;
        }
        let end = (start + 1..=ev.len()).find(|&e| e == ev.len() || ev.live.cut_allowed[e]).expect("the order's end is a cut");
        smallest = smallest.max((ev.segment(start, end).memory, start));
        start = end;
    }
    smallest
}

fn check_single_nodes(ev: &Evaluator, limit: u64) -> Result<()> {
    let (smallest, pos) = smallest_limit(ev);
    if smallest > limit {
        let node = &ev.graph.nodes[ev.live.order[pos]];
        return Err(Error::NodeTooLarge {
            node: node.name.clone(),
            op: node.op_type.clone(),
            needed: smallest,
            needed_mib: smallest as f64 / MIB,
            limit,
            smallest,
            smallest_mib: smallest as f64 / MIB,
        });
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// A byte count in MiB, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// The dynamic program. `layers`: `Some(k)` tracks the segment count up to `k` (and requires exactly `k`
/// unless `any_count`); `None` does not track it.
fn solve(ev: &Evaluator, limit: u64, layers: Option<usize>, any_count: bool, goal: &Goal) -> Option<Vec<SegmentCost>> {
    let n = ev.len();
    let depth = layers.unwrap_or(0) + 1;
    let mut dp: Vec<Vec<Option<State>>> = vec![vec![None; n + 1]; depth];
    dp[0][0] = Some(State { score: (0.0, 0.0), prev: 0 });
    let mut stamp = vec![usize::MAX; ev.graph.tensors.len()];
    for start in 0..n {
        let active: Vec<(usize, State)> = (0..depth).filter_map(|k| dp[k][start].map(|s| (k, s))).collect();
        if active.is_empty() {
            continue;
        }
        for seg in ev.extensions(start, limit, &mut stamp) {
            if seg.memory > limit {
                continue;
            }
            let (value, latency) = match goal {
                Goal::Objective(Objective::Latency) => (ev.latency_share(&seg), 0.0),
                Goal::Objective(Objective::Throughput) => (ev.stage_seconds(&seg), ev.latency_share(&seg)),
                Goal::Memory => (seg.memory as f64, 0.0),
            };
            let sums = matches!(goal, Goal::Objective(Objective::Latency));
            for &(k, state) in &active {
                let next = if layers.is_some() { k + 1 } else { 0 };
                if next >= depth {
                    continue;
                }
                let score = if sums {
                    (state.score.0 + value, 0.0)
                } else {
                    (state.score.0.max(value), state.score.1 + latency)
                };
                let slot = &mut dp[next][seg.end];
                if slot.is_none_or(|s| better(score, s.score)) {
                    *slot = Some(State { score, prev: start });
                }
            }
        }
    }
    let last = match (layers, any_count) {
        (None, _) => 0,
        (Some(k), false) => k,
        (Some(k), true) => (1..=k)
            .filter(|&j| dp[j][n].is_some())
            .reduce(|a, b| if better(dp[b][n].unwrap().score, dp[a][n].unwrap().score) { b } else { a })?,
    };
    dp[last][n]?;
    let mut bounds = Vec::new();
    let (mut k, mut end) = (last, n);
    while end > 0 {
        let state = dp[k][end].expect("backtracking follows stored states");
        bounds.push((state.prev, end));
        end = state.prev;
        if layers.is_some() {
            k -= 1;
        }
    }
    bounds.reverse();
    Some(bounds.into_iter().map(|(s, e)| ev.segment(s, e)).collect())
}
