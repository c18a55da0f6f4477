//! The `split` job end to end: load, analyse, plan, and write the segments with their plan.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::emit;
use crate::onnx::graph::InputShapes;
use crate::onnx::load::hex;
use crate::onnx::prepare;
use crate::onnx::{Graph, OnnxModel};
use crate::plan::file::{self, Boundary, ModelInfo, Plan, RequestInfo, Segment};
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
    /// The plan file's content (segment hashes filled in by [`Split::write`]).
    pub plan: Plan,
}

impl Split {
    /// Loads, analyses and partitions a model.
    pub fn new(path: &Path, options: &SplitOptions) -> Result<Split> {
        let model = OnnxModel::load(path)?;
        let graph = Graph::analyse(&model, &options.input_shapes)?;
        let planned = plan::plan(&graph, &options.request, &options.memory, &options.cost)?;
        let plan = describe(&model, &graph, &planned, options);
        let split = Split { model, graph, planned, plan };
        split.check_segments()?;
        Ok(split)
    }

    /// Prepares every segment as the runtime will, so that a split that cannot run is refused
    /// before anything is written.
    fn check_segments(&self) -> Result<()> {
        let count = self.planned.segments.len();
        for (index, seg) in self.planned.segments.iter().enumerate() {
            let proto = emit::segment_model(&self.model, &self.graph, &self.planned.live, seg, index, count);
            let entry = &self.plan.segments[index];
            let inputs: Vec<_> = entry.inputs.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
            prepare::segment(&proto, &format!("segment {index} ({})", entry.file), &inputs)?;
        }
        Ok(())
    }

    /// Writes every segment's ONNX file and `plan.json` into `out`, all at once; returns the final plan.
    pub fn write(&self, out: &Path) -> Result<Plan> {
        let mut plan = self.plan.clone();
        let count = self.planned.segments.len();
        let mut files = Vec::with_capacity(count + 1);
        for (index, seg) in self.planned.segments.iter().enumerate() {
            let proto = emit::segment_model(&self.model, &self.graph, &self.planned.live, seg, index, count);
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

fn describe(model: &OnnxModel, graph: &Graph, planned: &Planned, options: &SplitOptions) -> Plan {
    let live = &planned.live;
    let specs = |ids: &[usize]| ids.iter().map(|&t| emit::tensor_spec(graph, t)).collect::<Vec<_>>();
    let segments = planned
        .segments
        .iter()
        .enumerate()
        .map(|(index, seg)| {
            let inputs = &live.crossing[seg.start];
            let outputs = &live.crossing[seg.end];
            let node_name = |pos: usize| graph.nodes[live.order[pos]].name.clone();
            Segment {
                index,
                file: format!("seg-{index:02}.onnx"),
                sha256: String::new(),
                bytes: 0,
                nodes: seg.end - seg.start,
                first_node: node_name(seg.start),
                last_node: node_name(seg.end - 1),
                inputs: specs(inputs),
                outputs: specs(outputs),
                passthrough: inputs.iter().filter(|t| outputs.contains(t)).map(|&t| graph.tensors[t].name.clone()).collect(),
                flops: seg.flops,
                weight_bytes: seg.weight_bytes,
                peak_activation_bytes: seg.peak_activation_bytes,
                io_bytes: seg.io_bytes,
                estimated_memory: seg.memory,
            }
        })
        .collect();
    let boundaries = planned.segments[..planned.segments.len() - 1]
        .iter()
        .enumerate()
        .map(|(i, seg)| Boundary {
            after_segment: i,
            tensors: live.crossing[seg.end].iter().map(|&t| graph.tensors[t].name.clone()).collect(),
            bytes: live.crossing_bytes[seg.end],
        })
        .collect();
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
        boundaries,
    }
}
