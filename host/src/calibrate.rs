//! Calibrating the memory model: split models, run every segment in the wasm runtime, record its peak
//! linear memory, and fit the [`MemoryModel`] factors so the estimate covers every measurement.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::onnx::graph::InputShapes;
use crate::pipeline::to_wire;
use crate::plan::{CostModel, MemoryModel, Objective, Request};
use crate::runtime::{Engine, Limits, Runtime};
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
    /// Peak live activation bytes of the segment.
    pub peak_activations: u64,
    /// Bytes entering and leaving it.
    pub io: u64,
    /// Peak linear memory of its instance (runtime and data component together).
    pub measured: u64,
}

/// Splits `model` into `k` segments and measures every segment's peak memory in the wasm runtime.
/// Shapes of inputs the model does not have are ignored, so one list can serve several models.
pub fn measure(engine: &Engine, runtime: &Runtime, model: &Path, shapes: &InputShapes, k: usize) -> Result<Vec<Sample>> {
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
        let wanted = seg.inputs.iter().filter_map(|s| env.get(&s.name).cloned()).collect();
        for tensor in segment.infer(wanted)? {
            env.insert(tensor.name.clone(), tensor);
        }
        samples.push(Sample {
            label: format!("{} seg {}/{}", plan.model.name, seg.index, plan.segments.len()),
            weights: seg.weight_bytes,
            peak_activations: seg.peak_activation_bytes,
            io: seg.io_bytes,
            measured: segment.peak_memory(),
        });
    }
    std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
    Ok(samples)
}

/// Fits `overhead + a * weights + b * activations + c * io` to the samples: the overhead is the smallest
/// measurement (an instance doing almost nothing), the factors a least-squares fit of the rest (kept
/// non-negative), scaled up so that no segment whose terms reach 1 MiB is underestimated; any shortfall
/// left on the smaller segments is added to the overhead. Then 10 % and 1 MiB of headroom are added.
pub fn fit(samples: &[Sample], calibration: String) -> MemoryModel {
    const MIB: f64 = (1 << 20) as f64;
    let baseline = samples.iter().map(|s| s.measured).min().unwrap_or(0);
    let rows: Vec<[f64; 3]> = samples.iter().map(|s| [s.weights as f64 / MIB, s.peak_activations as f64 / MIB, s.io as f64 / MIB]).collect();
    let y: Vec<f64> = samples.iter().map(|s| (s.measured - baseline) as f64 / MIB).collect();
    let mut active = [true; 3];
    let mut coef = [0.0; 3];
    for _ in 0..3 {
        coef = least_squares(&rows, &y, &active);
        match (0..3).find(|&i| active[i] && coef[i] < 0.0) {
            Some(i) => active[i] = false,
            None => break,
        }
    }
    let terms = |row: &[f64; 3]| row.iter().zip(&coef).map(|(x, c)| x * c.max(0.0)).sum::<f64>();
    let scale = rows.iter().zip(&y).filter(|(r, _)| terms(r) >= 1.0).map(|(r, y)| y / terms(r)).fold(1.0, f64::max);
    let mut model = MemoryModel {
        runtime_overhead: baseline.div_ceil(1 << 16) << 16,
        weight_factor: round_up(coef[0] * scale),
        activation_factor: round_up(coef[1] * scale),
        io_factor: round_up(coef[2] * scale),
        calibration,
    };
    let shortfall = samples.iter().map(|s| s.measured.saturating_sub(model.estimate(s.weights, s.peak_activations, s.io))).max().unwrap_or(0);
    model.runtime_overhead += shortfall.div_ceil(1 << 16) << 16;
    // headroom: the allocator grows memory in steps, and inputs other than the calibration's move peaks
    model.runtime_overhead += HEADROOM_BYTES;
    model.weight_factor = round_up(model.weight_factor * HEADROOM_FACTOR);
    model.activation_factor = round_up(model.activation_factor * HEADROOM_FACTOR);
    model.io_factor = round_up(model.io_factor * HEADROOM_FACTOR);
    model
}

/// Fixed headroom added to the fitted overhead.
const HEADROOM_BYTES: u64 = 1 << 20;
/// Proportional headroom on the fitted factors.
const HEADROOM_FACTOR: f64 = 1.1;

fn round_up(x: f64) -> f64 {
    (x.max(0.0) * 100.0).ceil() / 100.0
}

/// Ordinary least squares on the active columns (normal equations, Gaussian elimination).
fn least_squares(rows: &[[f64; 3]], y: &[f64], active: &[bool; 3]) -> [f64; 3] {
    let cols: Vec<usize> = (0..3).filter(|&i| active[i]).collect();
    let n = cols.len();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (r, row) in rows.iter().enumerate() {
        for (i, &ci) in cols.iter().enumerate() {
            for (j, &cj) in cols.iter().enumerate() {
                a[i][j] += row[ci] * row[cj];
            }
            a[i][n] += row[ci] * y[r];
        }
    }
    for p in 0..n {
        let pivot = (p..n).max_by(|&x, &z| a[x][p].abs().total_cmp(&a[z][p].abs())).unwrap_or(p);
        a.swap(p, pivot);
        if a[p][p].abs() < 1e-12 {
            continue;
        }
        for r in 0..n {
            if r != p {
                let f = a[r][p] / a[p][p];
                for c in p..=n {
                    a[r][c] -= f * a[p][c];
                }
            }
        }
    }
    let mut coef = [0.0; 3];
    for (i, &ci) in cols.iter().enumerate() {
        coef[ci] = if a[i][i].abs() < 1e-12 { 0.0 } else { a[i][n] / a[i][i] };
    }
    coef
}
