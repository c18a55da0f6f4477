//! The wasm runtime under the wasmtime host: reference models, the input contract, limits,
//! composition and capabilities.

use std::time::Duration;

use netless::package::{compose, data_component};
use netless::runtime::{DType, Limits, SegmentError, Tensor};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::tract_ndarray::ArrayD;

use crate::common;

/// `z = x + y` over `f32[2]`, also returning `y` unchanged (a pass-through tensor), with
/// `netless.*` metadata saying it is segment 1 of 3 of `tiny`.
fn tiny_model() -> Vec<u8> {
    let value = |name: &str| pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![pb::tensor_shape_proto::Dimension {
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(2)),
                        ..Default::default()
                    }],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let meta = |key: &str, value: &str| pb::StringStringEntryProto {
        key: key.to_string(),
        value: value.to_string(),
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        metadata_props: vec![
            meta("netless.model", "tiny"),
            meta("netless.segment.index", "1"),
            meta("netless.segment.count", "3"),
        ],
        graph: Some(pb::GraphProto {
            name: "tiny-graph".to_string(),
            node: vec![pb::NodeProto {
                input: vec!["x".to_string(), "y".to_string()],
                output: vec!["z".to_string()],
                op_type: "Add".to_string(),
                ..Default::default()
            }],
            input: vec![value("x"), value("y")],
            output: vec![value("z"), value("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `tiny_model` for vectors of `n` elements.
fn tiny_model_of(n: i64) -> Vec<u8> {
    let mut model = pb::ModelProto::decode(tiny_model().as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        if let Some(pb::type_proto::Value::TensorType(t)) = value.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape.as_mut().unwrap().dim[0].value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(n));
        }
    }
    model.encode_to_vec()
}

#[test]
fn an_output_larger_than_128_mib_comes_back_whole() {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let n = (144 << 20) / 4;
    let limits = Limits { memory_bytes: 2 << 30, deadline: Duration::from_secs(120) };
    let mut segment = common::engine().load_segment(runtime, &tiny_model_of(n as i64), limits).unwrap();
    let ones = Tensor::from_f32("x", vec![n as u64], &vec![1.0; n]);
    let twos = Tensor::from_f32("y", vec![n as u64], &vec![2.0; n]);
    let outputs = segment.infer(vec![ones, twos]).unwrap();
    assert_eq!(outputs[0].data.len(), 144 << 20);
    assert!(outputs[0].to_f32().unwrap().iter().all(|&v| v == 3.0));
}

fn tiny_inputs() -> Vec<Tensor> {
    vec![
        Tensor::from_f32("y", vec![2], &[10.0, 20.0]),
        Tensor::from_f32("x", vec![2], &[1.0, 2.0]),
    ]
}

#[test]
fn tiny_model_reports_metadata_and_passes_tensors_through() {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let mut segment = common::engine()
        .load_segment(runtime, &tiny_model(), common::roomy())
        .unwrap();
    let info = segment.info();
    assert_eq!(
        (info.model.as_str(), info.index, info.count),
        ("tiny", 1, 3)
    );
    let names = |specs: &[netless::runtime::TensorSpec]| {
        specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&info.inputs), ["x", "y"]);
    assert_eq!(names(&info.outputs), ["z", "y"]);
    assert_eq!(info.inputs[0].shape, [Some(2)]);
    assert_eq!(segment.label(), "1 of tiny (2/3)");

    let outputs = segment.infer(tiny_inputs()).unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(
        (outputs[0].name.as_str(), outputs[0].to_f32().unwrap()),
        ("z", vec![11.0, 22.0])
    );
    assert_eq!(outputs[1], tiny_inputs()[0]);
}

#[test]
fn invalid_inputs_are_rejected_naming_the_tensor() {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let mut segment = common::engine()
        .load_segment(runtime, &tiny_model(), common::roomy())
        .unwrap();
    let x = || Tensor::from_f32("x", vec![2], &[1.0, 2.0]);
    let y = || Tensor::from_f32("y", vec![2], &[1.0, 2.0]);
    let cases: Vec<(Vec<Tensor>, &str)> = vec![
        (
            vec![
                Tensor {
                    dtype: DType::I32,
                    ..x()
                },
                y(),
            ],
            "input `x`: type i32, declared f32",
        ),
        (
            vec![Tensor::from_f32("x", vec![1, 2], &[1.0, 2.0]), y()],
            "input `x`: shape [1, 2], declared [2]",
        ),
        (
            vec![
                Tensor {
                    data: vec![0; 7],
                    ..x()
                },
                y(),
            ],
            "input `x`: 7 data bytes, shape [2] of f32 needs 8",
        ),
        (vec![x()], "missing input `y`"),
        (vec![x(), y(), x()], "input `x` given more than once"),
        (
            vec![
                x(),
                y(),
                Tensor {
                    name: "w".into(),
                    ..x()
                },
            ],
            "unknown input `w`",
        ),
    ];
    for (inputs, expected) in cases {
        match segment.infer(inputs) {
            Err(SegmentError::InvalidInput { segment, message }) => {
                assert_eq!(segment, "1 of tiny (2/3)");
                assert!(
                    message.contains(expected),
                    "{message:?} should contain {expected:?}"
                );
            }
            other => panic!("expected invalid-input {expected:?}, got {other:?}"),
        }
    }
    assert_eq!(
        segment.stats().instances,
        1,
        "a guest error keeps the instance"
    );
    assert_eq!(
        segment.infer(tiny_inputs()).unwrap()[0].to_f32().unwrap(),
        [11.0, 22.0]
    );
}

#[test]
fn the_runtime_profiles_an_inference_node_by_node() {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let mut segment = common::engine()
        .load_segment(runtime, &tiny_model(), common::roomy())
        .unwrap();
    let times = segment.profile(tiny_inputs()).unwrap();
    assert!(!times.is_empty());
    assert!(times.iter().all(|t| !t.op.is_empty() && !t.name.is_empty()), "{times:?}");
    assert!(times.iter().any(|t| t.op.contains("Add")), "{times:?}");
    let err = segment.profile(vec![tiny_inputs()[0].clone()]).unwrap_err();
    assert!(matches!(err, SegmentError::InvalidInput { .. }), "{err}");
    assert_eq!(segment.infer(tiny_inputs()).unwrap()[0].to_f32().unwrap(), [11.0, 22.0]);
}

#[test]
fn composed_component_is_valid_and_runs_by_itself() {
    let Some(path) = common::runtime_wasm() else {
        return;
    };
    let runtime = std::fs::read(path).unwrap();
    let data = data_component::build(&tiny_model()).unwrap();
    let composed = compose::segment(&runtime, &data).unwrap();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&composed)
        .expect("the composed component validates");
    let mut segment = common::engine()
        .load_composed(&composed, common::roomy())
        .unwrap();
    assert_eq!(segment.info().model, "tiny");
    let outputs = segment.infer(tiny_inputs()).unwrap();
    assert_eq!(outputs[0].to_f32().unwrap(), [11.0, 22.0]);
    let err = segment.profile(tiny_inputs()).unwrap_err().to_string();
    assert!(err.contains("does not export netless:inference/profile"), "{err}");
}

fn npy(name: &str) -> Option<ArrayD<f32>> {
    Some(ndarray_npy::read_npy(common::model_file(name)?).expect("read npy"))
}

/// Runs a reference model as one segment and compares with PyTorch's logits.
fn reference_model(stem: &str) {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let Some(model) = common::model_file(&format!("{stem}.onnx")) else {
        return;
    };
    let (Some(input), Some(expected)) = (
        npy(&format!("{stem}_input.npy")),
        npy(&format!("{stem}_logits.npy")),
    ) else {
        return;
    };
    let blob = std::fs::read(model).unwrap();
    let mut segment = common::engine()
        .load_segment(runtime, &blob, common::roomy())
        .unwrap();
    let spec = &segment.info().inputs[0];
    assert_eq!(spec.shape[1..], [Some(3), Some(224), Some(224)]);
    let shape = input.shape().iter().map(|&d| d as u64).collect();
    let tensor = Tensor::from_f32(spec.name.clone(), shape, input.as_slice().unwrap());
    let outputs = segment.infer(vec![tensor]).unwrap();
    let logits = outputs[0].to_f32().unwrap();
    assert_eq!(outputs[0].shape, [1, 1000]);
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = logits
        .iter()
        .zip(expected.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst / scale <= 1e-4,
        "{stem}: max |error| {worst} over max |logit| {scale}"
    );
}

#[test]
fn squeezenet_matches_reference_logits() {
    reference_model("squeezenet1_1_rand");
}

#[test]
fn mobilenet_matches_reference_logits() {
    reference_model("mobilenet_v2_rand");
}

#[test]
fn memory_limit_is_too_large_naming_segment_and_a_fresh_instance_recovers() {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let Some(model) = common::model_file("squeezenet1_1_rand.onnx") else {
        return;
    };
    let blob = std::fs::read(model).unwrap();
    let engine = common::engine();

    let tiny = Limits {
        memory_bytes: 4 << 20,
        ..common::roomy()
    };
    match engine.load_segment(runtime, &blob, tiny) {
        Err(SegmentError::TooLarge { segment, message }) => {
            assert!(segment.contains("data component of"), "{segment}");
            assert!(
                message.contains(&format!("limit of {} bytes", 4 << 20)),
                "{message}"
            );
        }
        other => panic!(
            "expected too-large, got {:?}",
            other.map(|s| s.label().to_string())
        ),
    }

    // Enough to prepare the model and run one image, not a batch of 64.
    let one = engine
        .load_segment(runtime, &blob, common::roomy())
        .unwrap()
        .peak_memory();
    let limits = Limits {
        memory_bytes: one + (64 << 20),
        ..common::roomy()
    };
    let mut segment = engine.load_segment(runtime, &blob, limits).unwrap();
    let input = segment.info().inputs[0].name.clone();
    let image = |n: u64| {
        let values = vec![0.5f32; n as usize * 3 * 224 * 224];
        vec![Tensor::from_f32(
            input.clone(),
            vec![n, 3, 224, 224],
            &values,
        )]
    };
    match segment.infer(image(64)) {
        Err(SegmentError::TooLarge {
            segment: name,
            message,
        }) => {
            assert!(
                name.contains("squeezenet") || name.starts_with("0 of"),
                "{name}"
            );
            assert!(
                message.contains(&format!("limit of {} bytes", limits.memory_bytes)),
                "{message}"
            );
        }
        other => panic!("expected too-large, got {other:?}"),
    }
    assert_eq!(segment.infer(image(1)).unwrap()[0].shape, [1, 1000]);
    assert_eq!(
        segment.stats().instances,
        2,
        "the failed instance was replaced"
    );
}

#[test]
fn deadline_interrupts_the_call_naming_the_segment() {
    let Some(runtime) = common::runtime() else {
        return;
    };
    let Some(model) = common::model_file("squeezenet1_1_rand.onnx") else {
        return;
    };
    let blob = std::fs::read(model).unwrap();
    let limits = Limits {
        deadline: Duration::from_millis(1),
        ..common::roomy()
    };
    match common::engine().load_segment(runtime, &blob, limits) {
        Err(SegmentError::DeadlineExceeded { segment, deadline }) => {
            assert!(segment.contains("bytes"), "{segment}");
            assert_eq!(deadline, Duration::from_millis(1));
        }
        other => panic!(
            "expected deadline exceeded, got {:?}",
            other.map(|s| s.label().to_string())
        ),
    }
}

#[test]
fn guest_cannot_read_files_open_sockets_or_see_the_environment() {
    let Some(path) = common::probe_wasm() else {
        return;
    };
    let wasm = std::fs::read(path).unwrap();
    let mut probe = common::engine()
        .load_composed(&wasm, common::roomy())
        .unwrap();
    let target = env!("CARGO_MANIFEST_DIR").to_string() + "/Cargo.toml";
    let input = Tensor {
        name: "path".into(),
        dtype: DType::U8,
        shape: vec![target.len() as u64],
        data: target.into_bytes(),
    };
    let report = probe.infer(vec![input]).unwrap();
    let report = String::from_utf8(report[0].data.clone()).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 6, "{report}");
    for line in lines {
        assert!(line.contains(": denied ("), "{line}");
    }
}

/// The compiled files (`*.cwasm`) in a cache folder.
fn compiled_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cwasm")).count()
}

#[test]
fn compiled_code_is_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_component::build(b"cache me").unwrap();
    let engine = netless::runtime::Engine::new(dir.path()).unwrap();
    engine.component(&data).unwrap();
    assert_eq!(compiled_files(dir.path()), 1);
    let again = netless::runtime::Engine::new(dir.path()).unwrap();
    again.component(&data).unwrap();
    assert_eq!(compiled_files(dir.path()), 1, "the second engine loaded the cached file");
}

#[test]
fn a_component_file_is_found_in_the_cache_by_path_and_recompiled_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = dir.path().join("seg.wasm");
    std::fs::write(&file, data_component::build(b"first").unwrap()).unwrap();
    netless::runtime::Engine::new(&cache).unwrap().component_file(&file).unwrap();
    assert_eq!(compiled_files(&cache), 1);
    assert_eq!(std::fs::read_dir(cache.join("files")).unwrap().count(), 1, "one index entry for the file");
    netless::runtime::Engine::new(&cache).unwrap().component_file(&file).unwrap();
    assert_eq!(compiled_files(&cache), 1, "the second load found the compiled code by path");
    std::fs::write(&file, data_component::build(b"second, and different").unwrap()).unwrap();
    netless::runtime::Engine::new(&cache).unwrap().component_file(&file).unwrap();
    assert_eq!(compiled_files(&cache), 2, "a changed file is compiled again, not served stale code");
    std::fs::write(&file, b"not wasm").unwrap();
    let err = netless::runtime::Engine::new(&cache).unwrap().component_file(&file).unwrap_err().to_string();
    assert!(err.contains("compiling component"), "{err}");
}

#[test]
fn the_cache_is_pruned_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let engine = netless::runtime::Engine::new(&cache).unwrap();
    let [a, b, c] = [b"a".as_slice(), b"bb", b"ccc"].map(|blob| data_component::build(blob).unwrap());
    let a_file = dir.path().join("a.wasm");
    std::fs::write(&a_file, &a).unwrap();
    engine.component_file(&a_file).unwrap();
    engine.component(&b).unwrap();
    engine.component(&c).unwrap();
    let compiled = || {
        let mut files: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect();
        files.sort();
        files
    };
    let before = compiled();
    assert_eq!(before.len(), 3);
    let hours_ago = |h: u64| std::time::SystemTime::now() - Duration::from_secs(h * 3600);
    for (i, path) in before.iter().enumerate() {
        std::fs::File::options().append(true).open(path).unwrap().set_modified(hours_ago(3 + i as u64)).unwrap();
    }
    netless::runtime::Engine::new(&cache).unwrap().component(&b).unwrap();
    let used = compiled().into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap()).unwrap();
    let keep = std::fs::metadata(&used).unwrap().len();

    let pruned = netless::runtime::prune(&cache, keep).unwrap();
    assert_eq!(compiled(), [used.clone()], "only the component used last is left");
    assert_eq!(pruned.after, keep);
    assert!(pruned.before > pruned.after && pruned.removed >= 2, "{pruned:?}");
    assert!(!cache.join("functions").exists(), "the function cache, older than the last use, went too");
    assert_eq!(std::fs::read_dir(cache.join("files")).unwrap().count(), 0, "the index entry of a removed component goes too");
    netless::runtime::Engine::new(&cache).unwrap().component_file(&a_file).unwrap();
    assert_eq!(compiled().len(), 2, "a pruned component compiles again");

    let out = common::netless(&["cache", "prune", "--dir", cache.to_str().unwrap(), "--max-size", "1KiB"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(" files removed)"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(compiled().is_empty());
}
