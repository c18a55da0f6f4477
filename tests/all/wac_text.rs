//! The WAC text `netless compose` writes describes the same composition: resolved and encoded by wac's own
//! parser (the library behind the `wac compose` CLI), it runs in the host and gives the same outputs as
//! `pipeline.wasm`.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use netless::package::artifacts;
use netless::pipeline::{Mode, Pipeline, to_wire};
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::runtime::Limits;
use netless::split::{Split, SplitOptions};
use netless::verify::load_inputs;
use wac_graph::types::BorrowedPackageKey;

use crate::common::{engine, model, prerequisite, runtime_wasm};

#[test]
fn wac_text_composes_the_same_pipeline() {
    let (Some(path), Some(runtime)) = (model("mtcnn_onet.onnx"), runtime_wasm()) else { return };
    let Some(composer) = prerequisite(runtime.with_file_name("netless_composer.wasm"), "scripts/build-components.sh") else { return };
    let options = SplitOptions {
        request: Request { max_memory: 1 << 30, segments: Some(3), objective: Objective::Throughput, max_segments: 3 },
        input_shapes: vec![],
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let split = Split::new(&path, &options).unwrap();
    let plan = split.write(dir.path()).unwrap();
    let (runtime, composer) = (std::fs::read(runtime).unwrap(), std::fs::read(composer).unwrap());
    artifacts::build(dir.path(), &plan, &runtime).unwrap();
    artifacts::compose_pipeline(dir.path(), &plan, &composer).unwrap();

    let source = std::fs::read_to_string(dir.path().join("pipeline.wac")).unwrap();
    let document = wac_parser::Document::parse(&source).expect("the WAC text parses");
    let names: Vec<String> = (0..3).map(|i| format!("netless:seg{i}-data")).collect();
    let mut packages = IndexMap::new();
    packages.insert(BorrowedPackageKey { name: "netless:segment-runtime", version: None }, runtime.clone());
    packages.insert(BorrowedPackageKey { name: "netless:pair", version: None }, composer.clone());
    for (i, name) in names.iter().enumerate() {
        packages.insert(BorrowedPackageKey { name, version: None }, std::fs::read(artifacts::data_path(dir.path(), i)).unwrap());
    }
    let resolution = document.resolve(packages).expect("the WAC text resolves against the built components");
    let wasm = resolution.encode(wac_graph::EncodeOptions::default()).expect("wac encodes it");
    artifacts::validate("wac's pipeline", &wasm).unwrap();

    let inputs = load_inputs(&plan.model.inputs, &[]).unwrap();
    let wire: HashMap<_, _> = plan.model.inputs.iter().map(|s| (s.name.clone(), to_wire(s, &inputs[&s.name]).unwrap())).collect();
    let limits = Limits { memory_bytes: netless::pipeline::composed_budget(&plan), deadline: Duration::from_secs(120) };
    let mut from_wac = engine().load_composed(&wasm, limits).expect("wac's pipeline loads");
    let mut ours = Pipeline::load(engine(), dir.path(), Mode::Composed, Duration::from_secs(120)).unwrap();
    let want = ours.infer(&wire).unwrap();
    let args = plan.model.inputs.iter().map(|s| wire[&s.name].clone()).collect();
    let got = from_wac.infer(args).expect("wac's pipeline runs");
    assert_eq!(got, want);
}
