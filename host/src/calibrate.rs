//! Calibrating the memory model: split models, run every segment in the wasm runtime, record its peak
//! linear memory, and fit the [`MemoryModel`] factors so the estimate covers every measurement as
//! tightly as one set of factors can.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::onnx::graph::InputShapes;
use crate::pipeline::to_wire;
use crate::plan::{CostModel, MemoryModel, Objective, Request};
use crate::runtime::{Engine, Limits, NodeTime, Runtime};
use crate::split::{Split, SplitOptions};
use crate::verify::load_inputs;
use crate::{Error, Result};

/// One measured segment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Which model and segment.
    pub label: String,
    /// Weight bytes of the segment.
    pub weights: u64,
    /// Bytes of its largest weight.
    pub largest_weight: u64,
    /// Its working bytes ([`crate::plan::memory::working_bytes`]).
    pub peak_activations: u64,
    /// Bytes entering and leaving it.
    pub io: u64,
    /// Linear memory of its instance once the model is prepared, before the first inference.
    pub prepared: u64,
    /// Peak linear memory of its instance (runtime and data component together).
    pub measured: u64,
    /// Its plan's nodes with the heap each held, when asked for.
    pub nodes: Vec<NodeTime>,
}

/// Splits `model` into `k` segments and measures every segment's peak memory in the wasm runtime, and
/// with `nodes` the heap each node of its plan held (a profiled run in an instance of its own).
/// Shapes of inputs the model does not have are ignored, so one list can serve several models.
pub fn measure(engine: &Engine, runtime: &Runtime, model: &Path, shapes: &InputShapes, k: usize, nodes: bool) -> Result<Vec<Sample>> {
    let declared = crate::onnx::OnnxModel::load(model)?;
    let names: Vec<&str> = declared.graph().input.iter().map(|i| i.name.as_str()).collect();
    let shapes: InputShapes = shapes.iter().filter(|(n, _)| names.contains(&n.as_str())).cloned().collect();
    let options = SplitOptions {
        request: Request { max_memory: u64::MAX / 4, segments: Some(k), objective: Objective::Throughput, max_segments: k },
        input_shapes: shapes,
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let split = Split::new(model, &options)?;
    let dir = std::env::temp_dir().join(format!("netless-calibrate-{}-{k}", std::process::id()));
    let plan = split.write(&dir)?;
    let inputs = load_inputs(&plan.model.inputs, &[])?;
    let mut env: HashMap<String, crate::runtime::Tensor> = HashMap::new();
    for spec in &plan.model.inputs {
        env.insert(spec.name.clone(), to_wire(spec, &inputs[&spec.name])?);
    }
    let mut samples = Vec::new();
    let limits = Limits { memory_bytes: 4 << 30, deadline: Duration::from_secs(300) };
    for seg in &plan.segments {
        let blob = plan.read_segment(&dir, seg.index)?;
        let mut segment = engine.load_segment(runtime, &blob, limits)?;
        let prepared = segment.peak_memory();
        let wanted: Vec<_> = seg.inputs.iter().filter_map(|s| env.get(&s.name).cloned()).collect();
        let nodes = match nodes {
            true => engine.load_segment(runtime, &blob, limits)?.profile(wanted.clone())?,
            false => Vec::new(),
        };
        for tensor in segment.infer(wanted)? {
            env.insert(tensor.name.clone(), tensor);
        }
        samples.push(Sample {
            label: format!("{} seg {}/{}", plan.model.name, seg.index, plan.segments.len()),
            weights: seg.weight_bytes,
            largest_weight: seg.largest_weight_bytes,
            peak_activations: seg.peak_activation_bytes,
            io: seg.io_bytes,
            prepared,
            measured: segment.peak_memory(),
            nodes,
        });
    }
    std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
    Ok(samples)
}

/// Fits the model to the samples: over a grid of factors, the overhead is raised until no segment is
/// underestimated (plus [`HEADROOM_BYTES`]), and the factors kept are those that leave the fewest segments
/// of at least 8 MiB more than 20 % over their measured peak, then the smallest mean overestimate
/// (estimate / measured) among them. The weight and activation factors are kept at 1 or more: weights and
/// activations are buffers an instance really holds.
pub fn fit(samples: &[Sample], calibration: String) -> MemoryModel {
    let grid = |lo: f64, hi: f64, step: f64| (0..=((hi - lo) / step).round() as usize).map(move |i| lo + i as f64 * step);
    let tight: Vec<&Sample> = samples.iter().filter(|s| s.measured >= TIGHT_ABOVE_BYTES).collect();
    let mut best: Option<((usize, f64), MemoryModel)> = None;
    for weight_factor in grid(1.0, 1.5, 0.02) {
        for largest_weight_factor in grid(0.0, 2.0, 0.05) {
            for activation_factor in grid(1.0, 2.5, 0.02) {
                let mut model = MemoryModel { runtime_overhead: 0, weight_factor, largest_weight_factor, activation_factor, ..MemoryModel::default() };
                let shortfall = samples.iter().map(|s| s.measured.saturating_sub(estimate(&model, s))).max().unwrap_or(0);
                model.runtime_overhead = (shortfall + HEADROOM_BYTES).div_ceil(1 << 16) << 16;
                let ratios: Vec<f64> = tight.iter().map(|s| estimate(&model, s) as f64 / s.measured as f64).collect();
                let loose = ratios.iter().filter(|&&r| r > 1.2).count();
                let score = (loose, ratios.iter().sum::<f64>() / ratios.len().max(1) as f64);
                if best.as_ref().is_none_or(|(b, _)| score.0 < b.0 || (score.0 == b.0 && score.1 < b.1)) {
                    best = Some((score, model));
                }
            }
        }
    }
    let (_, mut model) = best.expect("the grid is not empty");
    for factor in [&mut model.weight_factor, &mut model.largest_weight_factor, &mut model.activation_factor] {
        *factor = (*factor * 100.0).round() / 100.0;
    }
    model.calibration = calibration;
    model
}

/// The model's estimate for a measured segment.
pub fn estimate(model: &MemoryModel, s: &Sample) -> u64 {
    model.estimate(s.weights, s.largest_weight, s.peak_activations)
}

/// Bytes added to the fitted overhead: the allocator grows memory in steps, and inputs other than the
/// calibration's move peaks.
const HEADROOM_BYTES: u64 = 1 << 20;
/// Segments from this size on are the ones whose overestimate the fit keeps small (issue 13's 20 %).
const TIGHT_ABOVE_BYTES: u64 = 8 << 20;
