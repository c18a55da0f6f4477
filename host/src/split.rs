//! The `split` job end to end: load, analyse, plan, and write the segments with their plan.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::emit;
use crate::onnx::graph::InputShapes;
use crate::onnx::load::hex;
use crate::onnx::prepare;
use crate::onnx::{Graph, NodeId, OnnxModel, TensorId};
use crate::plan::dag::{self, Body, Unit};
use crate::plan::file::{self, Boundary, Group, JoinSpec, ModelInfo, Plan, RequestInfo, Segment, ShardRef, Stage};
use crate::plan::shard::ShardPlan;
use crate::plan::{self, CostModel, MemoryModel, Planned, Request};
use crate::Result;

/// Everything a split needs besides the model.
#[derive(Clone, Debug)]
pub struct SplitOptions {
    /// Limit, segment count and objective.
    pub request: Request,
    /// Input shapes given by the user.
    pub input_shapes: InputShapes,
    /// How segment memory is estimated.
    pub memory: MemoryModel,
    /// How compute and hops are costed.
    pub cost: CostModel,
}

/// A planned split, before anything is written.
#[derive(Clone, Debug)]
pub struct Split {
    /// The source model.
    pub model: OnnxModel,
    /// Its analysed graph.
    pub graph: Graph,
    /// The chosen partition.
    pub planned: Planned,
    /// Its functions (segments and shards), stage by stage.
    pub units: Vec<Unit>,
    /// The plan file's content (segment hashes filled in by [`Split::write`]).
    pub plan: Plan,
}

impl Split {
    /// Loads, analyses and partitions a model.
    pub fn new(path: &Path, options: &SplitOptions) -> Result<Split> {
        let model = OnnxModel::load(path)?;
        let graph = Graph::analyse(&model, &options.input_shapes)?;
        let (planned, units, plan) = partition(&model, &graph, options)?;
        let split = Split { model, graph, planned, units, plan };
        split.check_units()?;
        Ok(split)
    }

    /// Plans the model under each of `limits` in turn, analysing it once: the plan each limit gives
    /// (as `plan` prints it, its segments not prepared), or why none fits under it.
    pub fn sweep(path: &Path, options: &SplitOptions, limits: &[u64]) -> Result<Vec<(u64, Result<Plan>)>> {
        let model = OnnxModel::load(path)?;
        let graph = Graph::analyse(&model, &options.input_shapes)?;
        let bar = crate::progress::steps(limits.len() as u64, "planning");
        let plans = limits
            .iter()
            .map(|&max_memory| {
                let options = SplitOptions { request: Request { max_memory, ..options.request.clone() }, ..options.clone() };
                let plan = partition(&model, &graph, &options).map(|(_, _, plan)| plan);
                bar.inc(1);
                (max_memory, plan)
            })
            .collect();
        bar.finish_and_clear();
        Ok(plans)
    }

    /// Prepares every function's model (segments, shards, joins) as the runtime will, so that a
    /// split that cannot run is refused before anything is written.
    fn check_units(&self) -> Result<()> {
        let count = self.units.len();
        for (index, unit) in self.units.iter().enumerate() {
            let proto = emit::unit_model(&self.model, &self.graph, &self.planned, unit, index, count)?;
            let entry = &self.plan.segments[index];
            let inputs: Vec<_> = entry.inputs.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
            prepare::segment(&proto, &format!("segment {index} ({})", entry.file), &inputs)?;
        }
        Ok(())
    }

    /// Writes every segment's ONNX file and `plan.json` into `out`, all at once; returns the final plan.
    pub fn write(&self, out: &Path) -> Result<Plan> {
        let mut plan = self.plan.clone();
        let count = self.units.len();
        let mut files = Vec::with_capacity(count + 1);
        for (index, unit) in self.units.iter().enumerate() {
            let proto = emit::unit_model(&self.model, &self.graph, &self.planned, unit, index, count)?;
            let bytes = emit::encode(&proto);
            let entry = &mut plan.segments[index];
            entry.sha256 = hex(&Sha256::digest(&bytes));
            entry.bytes = bytes.len() as u64;
            files.push((entry.file.clone(), bytes));
        }
        files.push((file::FILE_NAME.to_string(), plan.to_json().into_bytes()));
        emit::write_folder(out, &files)?;
        Ok(plan)
    }
}

/// The partition of an analysed model, its functions, and the plan file describing them.
fn partition(model: &OnnxModel, graph: &Graph, options: &SplitOptions) -> Result<(Planned, Vec<Unit>, Plan)> {
    let planned = plan::plan(graph, &options.request, &options.memory, &options.cost)?;
    let units = dag::units(graph, &planned, &options.memory, options.request.max_memory)?;
    let plan = describe(model, graph, &planned, &units, options);
    Ok((planned, units, plan))
}

fn describe(model: &OnnxModel, graph: &Graph, planned: &Planned, units: &[Unit], options: &SplitOptions) -> Plan {
    let live = &planned.live;
    let specs = |ids: &[usize]| ids.iter().map(|&t| emit::tensor_spec(graph, t)).collect::<Vec<_>>();
    let node_name = |pos: usize| live.order.get(pos).map(|&n| graph.nodes[n].name.clone()).unwrap_or_default();
    let mut stages: Vec<Stage> = Vec::new();
    let segments = units
        .iter()
        .enumerate()
        .map(|(index, unit)| {
            if stages.len() == unit.stage {
                let group = match &unit.body {
                    Body::Shard { plan, .. } => Some(group_of(graph, plan)),
                    Body::Segment { .. } => None,
                };
                stages.push(Stage { index: unit.stage, segments: vec![], group });
            }
            stages[unit.stage].segments.push(index);
            let (nodes, first_node, last_node, shard) = match &unit.body {
                Body::Segment { start, end } => (end - start, node_name(*start), if end > start { node_name(end - 1) } else { String::new() }, None),
                Body::Shard { plan, index: j } => {
                    let name = |node: NodeId| graph.nodes[node].name.clone();
                    let last = plan.run.last().copied().unwrap_or(plan.node);
                    let (lo, hi) = plan.shards[*j].range;
                    let shard = ShardRef { stage: unit.stage, index: *j, count: plan.shards.len(), range: [lo, hi] };
                    (plan.run.len().max(1), name(plan.node), name(last), Some(shard))
                }
            };
            Segment {
                index,
                file: format!("seg-{index:02}.onnx"),
                sha256: String::new(),
                bytes: 0,
                nodes,
                first_node,
                last_node,
                inputs: unit.inputs.clone(),
                outputs: unit.outputs.clone(),
                passthrough: unit.inputs.iter().filter(|t| unit.outputs.iter().any(|o| o.name == t.name)).map(|t| t.name.clone()).collect(),
                flops: unit.flops,
                weight_bytes: unit.weight_bytes,
                largest_weight_bytes: unit.largest_weight_bytes,
                peak_activation_bytes: unit.peak_activation_bytes,
                io_bytes: unit.io_bytes,
                estimated_memory: unit.memory,
                stage: unit.stage,
                shard,
                joins: unit.joins.clone(),
            }
        })
        .collect::<Vec<_>>();
    let boundaries = boundaries(&stages, &segments, graph);
    Plan {
        format: file::FORMAT.into(),
        version: file::VERSION,
        model: ModelInfo {
            name: model.name(),
            file: model.path.display().to_string(),
            sha256: model.sha256.clone(),
            bytes: model.file_bytes,
            nodes: graph.nodes.len(),
            weight_bytes: graph.weight_bytes(),
            flops: graph.flops(),
            inputs: specs(&graph.inputs),
            outputs: specs(&graph.outputs),
        },
        request: RequestInfo {
            max_memory: options.request.max_memory,
            segments: options.request.segments,
            objective: options.request.objective,
            input_shapes: options.input_shapes.iter().cloned().collect::<BTreeMap<_, _>>(),
        },
        order: planned.order_name.into(),
        memory_model: options.memory.clone(),
        cost_model: options.cost.clone(),
        latency_seconds: planned.latency_seconds,
        slowest_stage_seconds: planned.slowest_stage_seconds,
        segments,
        stages,
        boundaries,
    }
}

fn group_of(graph: &Graph, plan: &ShardPlan) -> Group {
    let node = &graph.nodes[plan.node];
    let join = |t: TensorId| JoinSpec {
        tensor: graph.tensors[t].name.clone(),
        join: plan.layout.join,
        partials: (0..plan.shards.len()).map(|j| plan.partial_name(graph, t, j)).collect(),
    };
    Group {
        node: node.name.clone(),
        op: node.op_type.clone(),
        strategy: plan.layout.strategy,
        extent: plan.layout.extent,
        join: join(plan.layout.outputs[0]),
        other_joins: plan.layout.outputs[1..].iter().map(|&t| join(t)).collect(),
        unsharded_memory: plan.unsharded_memory,
        nodes: plan.run.iter().map(|&n| graph.nodes[n].name.clone()).collect(),
    }
}

/// What is in flight after each stage but the last: tensors made by it or before (or model inputs) and
/// read after it (or model outputs).
fn boundaries(stages: &[Stage], segments: &[Segment], graph: &Graph) -> Vec<Boundary> {
    let outputs: Vec<&str> = graph.outputs.iter().map(|&t| graph.tensors[t].name.as_str()).collect();
    let mut in_flight: Vec<file::TensorSpec> = graph.inputs.iter().map(|&t| emit::tensor_spec(graph, t)).collect();
    let mut out = Vec::new();
    for (i, stage) in stages.iter().enumerate().take(stages.len().saturating_sub(1)) {
        for &s in &stage.segments {
            for o in &segments[s].outputs {
                if !in_flight.iter().any(|t| t.name == o.name) {
                    in_flight.push(o.clone());
                }
            }
        }
        let later: Vec<&str> = stages[i + 1..].iter().flat_map(|st| st.segments.iter().flat_map(|&s| segments[s].inputs.iter().map(|t| t.name.as_str()))).collect();
        in_flight.retain(|t| later.contains(&t.name.as_str()) || outputs.contains(&t.name.as_str()));
        out.push(Boundary { after_stage: i, tensors: in_flight.iter().map(|t| t.name.clone()).collect(), bytes: in_flight.iter().map(|t| t.bytes()).sum() });
    }
    out
}
