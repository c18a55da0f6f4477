//! Nodes bigger than a function, run as parallel shards: a VGG-16-shaped model (convs at 1/8 width, fc
//! at 1/2) split under a limit smaller than its first fully connected layer, and a GPT-style decoder
//! whose token embedding is tied to its LM head, split under a limit smaller than that table. Outputs
//! equal the unsplit model in native tract stage by stage, as wasm components (one by one and
//! composed), over HTTP with `up` and through the distributed gateway; every shard stays within its
//! budget; a shard's worker killed under load is survived on a replica, and with none left the request
//! fails fast naming the shard; the Spin app fans out to the shards and `deploy k8s` writes a SpinApp
//! per shard. Bad input: an unshardable node over the limit, a limit too small for one unit, a missing
//! shard file, a plan the composition cannot run. Models: scripts/setup.sh.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use netless::native::NativeModel;
use netless::onnx::OnnxModel;
use netless::package::artifacts;
use netless::pipeline::{Mode, Pipeline, to_wire};
use netless::plan::{CostModel, MemoryModel, Objective, Plan, Request};
use netless::runtime::Tensor;
use netless::serve::{Handle, Service};
use netless::split::{Split, SplitOptions};
use netless::verify::{compare, run_segments};
use tract_onnx::prelude::Tensor as TractTensor;

use crate::common::{engine, failure, gateway_wasm, http_segment_wasm, model, netless, runtime_wasm};
use crate::distributed::{Worker, free_port, start_gateway};
use crate::onnx_builder::{self, node, save, value, weight};
use crate::serve::{assert_matches, binary_request, options, outputs, post, reference};

const MIB: u64 = 1 << 20;

/// `name` split under `limit` into a temporary folder, built as components.
fn split_and_build(name: &str, limit: u64, shapes: &[(&str, &[u64])]) -> Option<(tempfile::TempDir, Plan)> {
    let (path, runtime) = (model(name)?, runtime_wasm()?);
    let options = SplitOptions {
        request: Request { max_memory: limit, segments: None, objective: Objective::Latency, max_segments: 64 },
        input_shapes: shapes.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = Split::new(&path, &options).expect("split").write(dir.path()).unwrap();
    artifacts::build(dir.path(), &plan, &std::fs::read(runtime).unwrap()).expect("build");
    Some((dir, plan))
}

/// The shard groups of `plan` by node name, with their shard counts; asserts every function fits `limit`.
fn groups(plan: &Plan, limit: u64) -> HashMap<String, usize> {
    for seg in &plan.segments {
        assert!(seg.estimated_memory <= limit, "{} is planned at {} over the limit {limit}", seg.describe(plan), seg.estimated_memory);
    }
    plan.stages.iter().filter_map(|s| s.group.as_ref().map(|g| (g.node.clone(), s.segments.len()))).collect()
}

/// The unsplit model's outputs in native tract.
fn unsplit(plan: &Plan, inputs: &HashMap<String, TractTensor>) -> Vec<(String, TractTensor)> {
    let source = OnnxModel::load(Path::new(&plan.model.file)).unwrap();
    NativeModel::new(&source.proto, "unsplit", &plan.model.inputs).unwrap().run(inputs).unwrap()
}

fn assert_close(label: &str, expected: &[(String, TractTensor)], got: &[(String, TractTensor)]) {
    assert_eq!(expected.len(), got.len(), "{label}");
    for ((name, want), (got_name, got)) in expected.iter().zip(got) {
        assert_eq!(name, got_name, "{label}");
        let check = compare(name, want, got, 1e-4).unwrap();
        assert!(check.passed, "{label}: {check:?}");
    }
}

/// Runs the plan natively stage by stage, as components shard by shard (every function's measured peak
/// under its budget) and composed into one component, against the unsplit model. Returns the inputs (wire) and the expected outputs.
fn check_locally(dir: &Path, plan: &Plan, inputs: HashMap<String, TractTensor>) -> (Vec<Tensor>, Vec<(String, TractTensor)>) {
    let expected = unsplit(plan, &inputs);
    assert_close("native stages", &expected, &run_segments(dir, plan, &inputs).expect("stages run natively"));
    let wire: HashMap<String, Tensor> = plan.model.inputs.iter().map(|s| (s.name.clone(), to_wire(s, &inputs[&s.name]).unwrap())).collect();
    let mut pipeline = Pipeline::load(engine(), dir, Mode::Segments, Duration::from_secs(120)).expect("load");
    let outputs = pipeline.infer(&wire).expect("components run");
    assert_matches(&expected, &outputs);
    for (stage, seg) in pipeline.stages().iter().zip(&plan.segments) {
        assert!(stage.peak_memory() <= seg.estimated_memory, "{} peaked at {} over its budget {}", seg.describe(plan), stage.peak_memory(), seg.estimated_memory);
    }
    drop(pipeline);
    let composer = std::fs::read(runtime_wasm().unwrap().with_file_name("netless_composer.wasm")).expect("the composer is built");
    artifacts::compose_pipeline(dir, plan, &composer).expect("compose");
    let mut composed = Pipeline::load(engine(), dir, Mode::Composed, Duration::from_secs(120)).expect("load the composed pipeline");
    assert_matches(&expected, &composed.infer(&wire).expect("the composed pipeline runs"));
    let wire = plan.model.inputs.iter().map(|s| wire[&s.name].clone()).collect();
    (wire, expected)
}

fn serve(dir: &Path) -> Handle {
    Handle::start(Service::load(engine(), dir, options()).expect("service loads"), "127.0.0.1:0".parse().unwrap()).expect("server starts")
}

/// Through the distributed gateway: two workers serve everything but the shards of stage `group`, one
/// serves only those shards. The outputs equal `expected`; killing a replica under load loses no request;
/// with the shards' only worker killed, a request fails fast with a 503 naming the first shard.
fn through_the_gateway(dir: &Path, plan: &Plan, group: usize, (body, header): (&[u8], usize), expected: &[(String, TractTensor)]) {
    let shard_ids = &plan.stages[group].segments;
    let list = |ids: &mut dyn Iterator<Item = usize>| ids.map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let others = list(&mut (0..plan.segments.len()).filter(|i| !shard_ids.contains(i)));
    let mut first = Worker::start(dir, &others, free_port());
    let second = Worker::start(dir, &others, free_port());
    let mut sharder = Worker::start(dir, &list(&mut shard_ids.iter().copied()), free_port());
    let replicas = (0..plan.segments.len())
        .map(|i| if shard_ids.contains(&i) { vec![sharder.url.clone()] } else { vec![first.url.clone(), second.url.clone()] })
        .collect();
    let gateway = start_gateway(dir, replicas, Duration::from_secs(30), Duration::from_secs(60));
    let infer = format!("{}/v2/models/{}/infer", gateway.url(), plan.model.name);
    assert_matches(expected, &outputs(&post(&infer, body, Some(header))));
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..6).map(|_| scope.spawn(|| post(&infer, body, Some(header)))).collect();
        std::thread::sleep(Duration::from_millis(50));
        first.kill();
        for client in clients {
            assert_matches(expected, &outputs(&client.join().unwrap()));
        }
    });
    sharder.kill();
    let started = Instant::now();
    let reply = post(&infer, body, Some(header));
    assert_eq!(reply.status, 503, "{}", String::from_utf8_lossy(&reply.body));
    let first_shard = format!("{}-seg-{}", plan.model.name, shard_ids[0]);
    assert!(reply.error().contains(&first_shard) && reply.error().contains("no replica"), "{}", reply.error());
    assert!(started.elapsed() < Duration::from_secs(10), "failed in {:?}", started.elapsed());
    gateway.stop().unwrap();
}

#[test]
fn vgg16_fc6_runs_as_parallel_shards_everywhere() {
    let limit = 20 * MIB;
    let Some((dir, plan)) = split_and_build("vgg16_w8_fc2.onnx", limit, &[("input", &[1, 3, 224, 224])]) else { return };
    let groups = groups(&plan, limit);
    let fc6 = plan.stages.iter().find_map(|s| s.group.as_ref().filter(|g| g.node == "fc6")).expect("fc6 is cut into shards");
    let fc6_weights: u64 = plan.segments.iter().filter(|s| s.shard.as_ref().is_some_and(|r| r.stage == plan.stages.iter().position(|st| st.group.as_ref() == Some(fc6)).unwrap())).map(|s| s.weight_bytes).sum();
    assert!(fc6_weights > limit, "fc6's weights ({fc6_weights} bytes) are larger than the limit");
    assert!(groups["fc6"] >= 2, "{groups:?}");
    let inputs = netless::verify::load_inputs(&plan.model.inputs, &[]).unwrap();
    let (wire, expected) = check_locally(dir.path(), &plan, inputs);

    let server = serve(dir.path());
    let infer = format!("{}/v2/models/{}/infer", server.url(), plan.model.name);
    let (body, header) = binary_request(&wire, "vgg");
    assert_matches(&expected, &outputs(&post(&infer, &body, Some(header))));
    server.stop().unwrap();

    let fc6_stage = plan.stages.iter().position(|s| s.group.as_ref().is_some_and(|g| g.node == "fc6")).unwrap();
    through_the_gateway(dir.path(), &plan, fc6_stage, (&body, header), &expected);
}

#[test]
fn a_gpt_decoder_with_a_tied_embedding_larger_than_the_limit() {
    let limit = 24 * MIB;
    let Some((dir, plan)) = split_and_build("gpt_tied.onnx", limit, &[]) else { return };
    let groups = groups(&plan, limit);
    assert!(groups.get("tok_emb").is_some_and(|&n| n >= 2) && groups.get("lm_head").is_some_and(|&n| n >= 2), "{groups:?}");
    let embedding = OnnxModel::load(Path::new(&plan.model.file)).unwrap().graph().initializer.iter().find(|t| t.name == "wte").unwrap().raw_data.len() as u64;
    assert!(embedding > limit, "the embedding ({embedding} bytes) is larger than the limit");
    // token ids across the vocabulary, and a negative one (counted from the end), so every row shard answers some
    let tokens = plan.model.inputs[0].shape[1] as usize;
    let ids: Vec<i64> = (0..tokens as i64).map(|i| if i == 3 { -5 } else { (i * 7919 + 11) % 50257 }).collect();
    let inputs = HashMap::from([("input_ids".to_string(), TractTensor::from_shape(&[1, tokens], &ids).unwrap())]);
    let (wire, expected) = check_locally(dir.path(), &plan, inputs);

    let server = serve(dir.path());
    let (body, header) = binary_request(&wire, "gpt");
    let reply = post(&format!("{}/v2/models/{}/infer", server.url(), plan.model.name), &body, Some(header));
    assert_matches(&expected, &outputs(&reply));
    server.stop().unwrap();
    let embedding_stage = plan.stages.iter().position(|s| s.group.as_ref().is_some_and(|g| g.node == "tok_emb")).unwrap();
    through_the_gateway(dir.path(), &plan, embedding_stage, (&body, header), &expected);
}

/// A detector bound by its activations (mtcnn_pnet at 480x640: no node has 0.1 MiB of weights, its first
/// maps are 11.6 MiB) under a limit below what its first convolution needs whole: the run of
/// convolutions, PRelus and poolings to its two heads is cut into bands of output rows, each computed
/// from the rows its windows reach. Outputs equal the unsplit model natively, as components (every band
/// under its budget), composed, over HTTP and through the distributed gateway.
#[test]
fn a_detector_runs_in_bands_of_rows_everywhere() {
    let limit = 24 * MIB;
    let Some((dir, plan)) = split_and_build("mtcnn_pnet.onnx", limit, &[("input_1", &[1, 480, 640, 3])]) else { return };
    groups(&plan, limit);
    let bands = plan.stages.iter().filter_map(|s| s.group.as_ref().filter(|g| g.strategy == netless::plan::shard::Strategy::Bands).map(|g| (g, s.segments.len()))).collect::<Vec<_>>();
    let (group, shards) = bands.first().expect("a run is cut into bands");
    assert!(*shards >= 2 && group.nodes.len() >= 3 && group.unsharded_memory > limit, "{group:?}");
    let inputs = netless::verify::load_inputs(&plan.model.inputs, &[]).unwrap();
    let (wire, expected) = check_locally(dir.path(), &plan, inputs);
    let server = serve(dir.path());
    let (body, header) = binary_request(&wire, "pnet");
    assert_matches(&expected, &outputs(&post(&format!("{}/v2/models/{}/infer", server.url(), plan.model.name), &body, Some(header))));
    server.stop().unwrap();
    let band_stage = plan.stages.iter().position(|s| s.group.as_ref().is_some_and(|g| std::ptr::eq(g, *group))).unwrap();
    through_the_gateway(dir.path(), &plan, band_stage, (&body, header), &expected);
}

/// With `--parallel-shards`, nodes that fit are cut where the cost model says parallel shards finish
/// sooner: resnet18 under a limit that holds it whole runs its large convolutions as groups of up to 4
/// shards, the plan's estimated latency below the plan without them, and the stages reproduce the unsplit
/// model; without the option no node that fits is cut.
#[test]
fn nodes_that_fit_run_as_parallel_shards_where_the_cost_model_says_so() {
    let Some(path) = crate::common::model_file("resnet18_rand.onnx") else { return };
    let limit = 128 * MIB;
    let split = |parallel_shards: u64| {
        let options = SplitOptions {
            request: Request { max_memory: limit, segments: None, objective: Objective::Latency, max_segments: 64 },
            input_shapes: vec![],
            memory: MemoryModel::default(),
            cost: CostModel { parallel_shards, ..CostModel::default() },
        };
        let dir = tempfile::tempdir().unwrap();
        let plan = Split::new(&path, &options).expect("split").write(dir.path()).unwrap();
        (dir, plan)
    };
    let (_, whole) = split(1);
    assert_eq!(whole.stages.len(), 1, "resnet18 fits one function under 128 MiB");
    let (dir, plan) = split(4);
    let groups: Vec<(&netless::plan::file::Group, usize)> = plan.stages.iter().filter_map(|s| s.group.as_ref().map(|g| (g, s.segments.len()))).collect();
    assert!(!groups.is_empty(), "no node was cut for speed");
    for (group, shards) in &groups {
        assert!(group.unsharded_memory <= limit && (2..=4).contains(shards), "{group:?} in {shards} shards");
    }
    assert!(plan.latency_seconds < whole.latency_seconds, "{} s against {} s whole", plan.latency_seconds, whole.latency_seconds);
    let inputs = netless::verify::load_inputs(&plan.model.inputs, &[]).unwrap();
    assert_close("native stages", &unsplit(&plan, &inputs), &run_segments(dir.path(), &plan, &inputs).expect("stages run natively"));
    let out = netless(&["plan", path.to_str().unwrap(), "--max-memory", "128MiB", "--parallel-shards", "4"]);
    let header = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    assert!(header.contains(&format!("({} functions,", plan.segments.len())), "`plan --parallel-shards 4` plans the same: {header}");
}

/// Bands of a stack with every window form a band meets: padding on one side only, strides, dilation, a
/// depthwise convolution, SAME padding, a residual branch, a channel concatenation, max and average
/// pooling, a per-channel PRelu and two outputs, on odd sizes: the bands' rows, halos and paddings
/// reproduce the unsplit model.
#[test]
fn bands_reproduce_windows_of_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut conv = |name: &str, input: &str, output: &str, attrs: Vec<netless::onnx::pb::AttributeProto>| {
        let mut n = node("Conv", &[input, name], &[output]);
        n.attribute = attrs;
        nodes.push(n);
    };
    use onnx_builder::{int_attribute, ints_attribute};
    conv("w0", "x", "c0", vec![ints_attribute("pads", &[1, 1, 0, 1])]);
    conv("w1", "c0", "c1", vec![ints_attribute("strides", &[2, 1]), ints_attribute("pads", &[0, 1, 2, 1])]);
    conv("w2", "c1", "c2", vec![int_attribute("group", 12), ints_attribute("dilations", &[2, 2]), ints_attribute("pads", &[2, 2, 2, 2])]);
    conv("w3", "c1", "c3", vec![]);
    let strings = |name: &str, value: &str| netless::onnx::pb::AttributeProto { name: name.into(), r#type: 3, s: value.as_bytes().to_vec(), ..Default::default() };
    conv("w4", "c2", "c4", vec![strings("auto_pad", "SAME_UPPER")]);
    let mut more = vec![
        node("Add", &["c4", "c3"], &["r"]),
        node("Relu", &["r"], &["a"]),
        node("Concat", &["a", "c2"], &["cat"]),
        node("MaxPool", &["cat"], &["m"]),
        node("AveragePool", &["m"], &["p"]),
        node("PRelu", &["p", "slope"], &["y"]),
        node("Sigmoid", &["p"], &["z"]),
    ];
    more[2].attribute = vec![int_attribute("axis", 1)];
    more[3].attribute = vec![ints_attribute("kernel_shape", &[3, 3]), ints_attribute("strides", &[2, 2]), ints_attribute("pads", &[1, 0, 1, 0])];
    more[4].attribute = vec![ints_attribute("kernel_shape", &[2, 2]), strings("auto_pad", "SAME_LOWER")];
    nodes.extend(more);
    let graph = netless::onnx::pb::GraphProto {
        name: "windows".into(),
        node: nodes,
        initializer: vec![
            weight("w0", &[12, 3, 3, 3], 1),
            weight("w1", &[12, 12, 3, 2], 2),
            weight("w2", &[12, 1, 3, 3], 3),
            weight("w3", &[12, 12, 1, 1], 4),
            weight("w4", &[12, 12, 5, 3], 5),
            weight("slope", &[24, 1, 1], 6),
        ],
        input: vec![value("x", &[1, 3, 701, 403])],
        output: vec![value("y", &[1, 24, 175, 201]), value("z", &[1, 24, 175, 201])],
        ..Default::default()
    };
    let path = save(dir.path(), "windows.onnx", &onnx_builder::model(graph));
    let out = dir.path().join("out");
    let ok = netless(&["split", path.to_str().unwrap(), "--max-memory", "40MiB", "-o", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let plan = Plan::load(&out).unwrap();
    let group = plan.stages.iter().find_map(|s| s.group.as_ref()).expect("a band group");
    assert_eq!(group.strategy, netless::plan::shard::Strategy::Bands);
    assert!(group.nodes.len() >= 10, "the whole stack is one run: {:?}", group.nodes);
    let verified = netless(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}{}", String::from_utf8_lossy(&verified.stdout), String::from_utf8_lossy(&verified.stderr));
}

/// A model of one MatMul `x [1, 64] x w [64, columns]`, then a Relu.
fn one_matmul(dir: &Path, columns: i64) -> std::path::PathBuf {
    let graph = netless::onnx::pb::GraphProto {
        name: "wide".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Relu", &["a"], &["y"])],
        initializer: vec![weight("w", &[64, columns], 3)],
        input: vec![value("x", &[1, 64])],
        output: vec![value("y", &[1, columns])],
        ..Default::default()
    };
    save(dir, "wide.onnx", &onnx_builder::model(graph))
}

#[test]
fn a_node_that_cannot_be_cut_names_itself_and_the_smallest_limit() {
    let dir = tempfile::tempdir().unwrap();
    let graph = netless::onnx::pb::GraphProto {
        name: "bias".into(),
        node: vec![node("Add", &["x", "b"], &["y"])],
        initializer: vec![weight("b", &[1024, 1024], 5)],
        input: vec![value("x", &[1024, 1024])],
        output: vec![value("y", &[1024, 1024])],
        ..Default::default()
    };
    let path = save(dir.path(), "bias.onnx", &onnx_builder::model(graph));
    let out = dir.path().join("out");
    let err = failure(&netless(&["split", path.to_str().unwrap(), "--max-memory", "16MiB", "-o", out.to_str().unwrap()]));
    assert!(err.contains("`y`") && err.contains("cannot be cut into shards") && err.contains("the smallest limit that works is"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_limit_too_small_for_one_column_names_the_node_and_the_smallest_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_matmul(dir.path(), 1 << 16);
    let out = dir.path().join("out");
    let split = |limit: &str| netless(&["split", path.to_str().unwrap(), "--max-memory", limit, "-o", out.to_str().unwrap()]);
    let err = failure(&split("3MiB"));
    assert!(err.contains("node `a`") && err.contains("shards of one output column") && err.contains("the smallest limit that works is"), "{err}");
    let smallest = err.split("the smallest limit that works is ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let ok = split(&smallest);
    assert!(ok.status.success(), "the limit it names works: {}", String::from_utf8_lossy(&ok.stderr));
    let plan = Plan::load(&out).unwrap();
    assert!(plan.has_groups(), "the MatMul is cut at the smallest limit");
    let verified = netless(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

#[test]
fn a_missing_shard_file_is_named_and_a_version_1_plan_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_matmul(dir.path(), 1 << 16);
    let out = dir.path().join("out");
    let ok = netless(&["split", path.to_str().unwrap(), "--max-memory", "14MiB", "-o", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let plan = Plan::load(&out).unwrap();
    let shard = plan.segments.iter().find(|s| s.shard.as_ref().is_some_and(|r| r.index == 1)).expect("a second shard");
    std::fs::remove_file(out.join(&shard.file)).unwrap();
    let err = failure(&netless(&["verify", out.to_str().unwrap()]));
    assert!(err.contains("shard 1 of") && err.contains("node `a`") && err.contains(&shard.file), "{err}");
    // The same plan as version 1 would write it (no stages, `after_segment`) reads as a chain.
    let chain = tempfile::tempdir().unwrap();
    let small = one_matmul(chain.path(), 64);
    let out = chain.path().join("out");
    assert!(netless(&["split", small.to_str().unwrap(), "--max-memory", "64MiB", "--segments", "2", "-o", out.to_str().unwrap()]).status.success());
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap();
    json["version"] = 1.into();
    json.as_object_mut().unwrap().remove("stages");
    for seg in json["segments"].as_array_mut().unwrap() {
        seg.as_object_mut().unwrap().remove("stage");
    }
    for b in json["boundaries"].as_array_mut().unwrap() {
        let after = b.as_object_mut().unwrap().remove("after_stage").unwrap();
        b["after_segment"] = after;
    }
    std::fs::write(out.join("plan.json"), serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let plan = Plan::load(&out).expect("a version 1 plan reads");
    assert_eq!(plan.stages.len(), 2);
    assert!(!plan.has_groups());
    let verified = netless(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

#[test]
fn the_spin_app_fans_out_to_the_shards_and_deploys_one_spinapp_per_shard() {
    let (Some(runtime), Some(http), Some(gateway)) = (runtime_wasm(), http_segment_wasm(), gateway_wasm()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = one_matmul(dir.path(), 1 << 14);
    let out = dir.path().join("out");
    let ok = netless(&["split", path.to_str().unwrap(), "--max-memory", "8MiB", "-o", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let plan = Plan::load(&out).unwrap();
    let shards = plan.segments.iter().filter(|s| s.shard.is_some()).count();
    assert!(shards >= 2, "the MatMul is cut: {shards} shards");
    artifacts::build(&out, &plan, &std::fs::read(runtime).unwrap()).unwrap();
    netless::package::spin_app::build(&out, &plan, &std::fs::read(http).unwrap(), &std::fs::read(gateway).unwrap(), None).unwrap();

    let options = netless::serve::spin::SpinOptions {
        variables: Default::default(),
        deadline: Duration::from_secs(60),
        default_memory: 128 << 20,
        max_body: 64 << 20,
    };
    let cache = crate::common::wasm_dir().join("netless-test-cache");
    let app = netless::serve::spin::SpinApp::load(&out.join("spin.toml"), &cache, options).expect("the Spin app loads");
    let server = netless::serve::spin::SpinHandle::start(app, "127.0.0.1:0".parse().unwrap()).unwrap();
    let (inputs, expected) = reference(&out, 5);
    let (body, header) = binary_request(&inputs, "spin");
    assert_matches(&expected, &outputs(&post(&format!("{}/v2/models/wide/infer", server.url()), &body, Some(header))));
    server.stop().unwrap();

    let k8s = dir.path().join("k8s");
    let deployed = netless(&["deploy", "k8s", out.to_str().unwrap(), "--image", "localhost:5000/wide:1", "-o", k8s.to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let manifests: String = std::fs::read_dir(&k8s).unwrap().flatten().map(|e| std::fs::read_to_string(e.path()).unwrap_or_default()).collect();
    assert_eq!(manifests.matches("kind: SpinApp").count(), plan.segments.len() + 1, "a SpinApp per function and the gateway:\n{manifests}");
}

#[test]
fn a_group_whose_input_is_needed_later_is_refused_by_the_composition_only() {
    let dir = tempfile::tempdir().unwrap();
    let graph = netless::onnx::pb::GraphProto {
        name: "skip".into(),
        node: vec![node("MatMul", &["x", "w"], &["a"]), node("Add", &["a", "x"], &["y"])],
        initializer: vec![weight("w", &[2048, 2048], 7)],
        input: vec![value("x", &[1, 2048])],
        output: vec![value("y", &[1, 2048])],
        ..Default::default()
    };
    let path = save(dir.path(), "skip.onnx", &onnx_builder::model(graph));
    let out = dir.path().join("out");
    let ok = netless(&["split", path.to_str().unwrap(), "--max-memory", "16MiB", "-o", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(Plan::load(&out).unwrap().has_groups());
    let err = failure(&netless(&["compose", out.to_str().unwrap()]));
    assert!(err.contains("`x`") && err.contains("node `a`") && err.contains("also needed after them"), "{err}");
    let verified = netless(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "the plan itself runs: {}", String::from_utf8_lossy(&verified.stderr));
}
