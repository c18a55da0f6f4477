//! `netless bench --hops`: the latency one hop between stages adds, for a boundary of a given size
//! (1 MiB by default), measured on a one-node model (Relu) so that the segment's own work is negligible:
//!
//! - in one process: client -> `netless up` -> segment (the baseline);
//! - over loopback: client -> gateway -> worker process -> segment;
//! - across network namespaces (root and iproute2): the same with the worker in its own namespace
//!   behind a veth link;
//! - under Spin (NetLess's wasi:http host): client -> gateway component -> segment component chained in
//!   process, against client -> segment component routed directly.
//!
//! Each added hop carries the boundary twice (request and answer), as a stage boundary does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TypeProto, ValueInfoProto};

use super::serve::{LoadResult, binary_request, load, serve_options};
use crate::package::spin_manifest::{HttpTrigger, Manifest, Route};
use crate::package::{artifacts, spin_app};
use crate::plan::{CostModel, MemoryModel, Objective, Request};
use crate::runtime::Engine;
use crate::serve::spin::{SpinApp, SpinHandle, SpinOptions};
use crate::serve::workers::WorkerPool;
use crate::serve::{Handle, Service};
use crate::split::{Split, SplitOptions};
use crate::{Error, Result};

/// What to measure.
pub struct HopOptions {
    /// Bytes crossing the boundary each way.
    pub bytes: u64,
    /// Sequential requests per path.
    pub requests: usize,
    /// The `netless` binary, for worker processes.
    pub exe: PathBuf,
    /// The segment runtime component.
    pub runtime: Vec<u8>,
    /// The Spin components (HTTP segment, gateway), to measure service chaining.
    pub spin: Option<(Vec<u8>, Vec<u8>)>,
    /// Also measure across network namespaces (needs root and iproute2).
    pub netns: bool,
    /// Where to build the one-node model and cache compiled code.
    pub work_dir: PathBuf,
    /// Compiled-code cache.
    pub cache_dir: PathBuf,
}

/// One path and what a hop on it added.
#[derive(Debug, Clone, Serialize)]
pub struct HopResult {
    /// The path's latency.
    pub load: LoadResult,
    /// What its baseline took (p50, ms).
    pub baseline_p50_ms: f64,
    /// p50 minus the baseline's.
    pub added_p50_ms: f64,
}

/// The one-node model `y = relu(x)` with `x` of `bytes` bytes of f32.
fn relu_model(bytes: u64) -> ModelProto {
    let info = |name: &str| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: [1, (bytes / 4) as i64].iter().map(|&d| pb::tensor_shape_proto::Dimension { value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)), ..Default::default() }).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "netless bench --hops".into(),
        graph: Some(GraphProto {
            name: "hop".into(),
            node: vec![NodeProto { name: "relu".into(), op_type: "Relu".into(), input: vec!["x".into()], output: vec!["y".into()], ..Default::default() }],
            input: vec![info("x")],
            output: vec![info("y")],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fail(what: &str) -> impl FnOnce(String) -> Error + '_ {
    move |reason| Error::Package { what: what.into(), reason }
}

/// Measures every path; `log` reports progress.
pub fn run(options: &HopOptions, log: &mut dyn FnMut(&str)) -> Result<Vec<HopResult>> {
    let dir = options.work_dir.join("hop");
    std::fs::create_dir_all(&options.work_dir).map_err(Error::io(&options.work_dir))?;
    let model_path = options.work_dir.join("hop.onnx");
    std::fs::write(&model_path, crate::emit::encode(&relu_model(options.bytes))).map_err(Error::io(&model_path))?;
    let split = SplitOptions {
        request: Request { max_memory: 1 << 32, segments: Some(1), objective: Objective::Latency, max_segments: 1 },
        input_shapes: Default::default(),
        memory: MemoryModel::default(),
        cost: CostModel::default(),
    };
    let plan = Split::new(&model_path, &split)?.write(&dir)?;
    artifacts::build(&dir, &plan, &options.runtime)?;
    let name = "hop";
    let (body, header) = binary_request(&plan.model.inputs)?;
    let measure = |label: &str, url: &str| load(label, &format!("{url}/v2/models/{name}/infer"), &body, header, 1, options.requests);
    let mut results = Vec::new();

    log("in one process");
    let engine = Engine::new(&options.cache_dir)?;
    let local = Handle::start(Service::load(&engine, &dir, serve_options(name, 1, true))?, "127.0.0.1:0".parse().expect("address")).map_err(|e| fail("the server")(e.to_string()))?;
    let baseline = measure("in one process (baseline)", &local.url());
    drop(local);
    let base = baseline.p50_ms;
    let mut push = |load: LoadResult, base: f64| results.push(HopResult { added_p50_ms: load.p50_ms - base, baseline_p50_ms: base, load });

    log("over loopback");
    let mut workers = WorkerPool::default();
    let replicas = workers.start(&options.exe, &dir, 1, 1, &serve_options(name, 1, true))?;
    let gateway = Service::gateway(&dir, replicas, Duration::from_secs(60), serve_options(name, 1, true))?;
    let gateway = Handle::start(gateway, "127.0.0.1:0".parse().expect("address")).map_err(|e| fail("the gateway")(e.to_string()))?;
    push(measure("gateway -> worker over loopback", &gateway.url()), base);
    drop(gateway);
    drop(workers);

    if options.netns {
        log("across network namespaces");
        let namespace = Namespace::create()?;
        let worker = namespace.start_worker(&options.exe, &dir, name)?;
        let url = format!("http://{}:8081", Namespace::ADDRESS);
        wait_ready(&url)?;
        let gateway = Service::gateway(&dir, vec![vec![url]], Duration::from_secs(60), serve_options(name, 1, true))?;
        let gateway = Handle::start(gateway, "127.0.0.1:0".parse().expect("address")).map_err(|e| fail("the gateway")(e.to_string()))?;
        push(measure("gateway -> worker across namespaces (veth)", &gateway.url()), base);
        drop(gateway);
        drop(worker);
        drop(namespace);
    }

    if let Some((http, gateway)) = &options.spin {
        log("under Spin");
        spin_app::build(&dir, &plan, http, gateway, None)?;
        let manifest_path = dir.join("spin.toml");
        let mut manifest = Manifest::read(&manifest_path)?;
        let segment = format!("/v2/models/{name}-seg-0/...");
        for trigger in &mut manifest.trigger.http {
            if trigger.component == spin_app::segment_component(0) {
                *trigger = HttpTrigger { route: Route::Path(segment.clone()), component: trigger.component.clone() };
            }
        }
        let direct_path = dir.join("spin-direct.toml");
        std::fs::write(&direct_path, manifest.to_toml()).map_err(Error::io(&direct_path))?;
        let spin_options = SpinOptions { variables: Default::default(), deadline: Duration::from_secs(60), default_memory: 256 << 20, max_body: 1 << 30 };
        let app = SpinApp::load(&direct_path, &options.cache_dir, spin_options)?;
        let server = SpinHandle::start(app, "127.0.0.1:0".parse().expect("address")).map_err(|e| fail("the Spin host")(e.to_string()))?;
        let direct = load("Spin: segment component alone", &format!("{}/v2/models/{name}-seg-0/infer", server.url()), &body, header, 1, options.requests);
        let chained = measure("Spin: gateway -> segment chained in process", &server.url());
        let base = direct.p50_ms;
        results.push(HopResult { added_p50_ms: 0.0, baseline_p50_ms: base, load: direct });
        results.push(HopResult { added_p50_ms: chained.p50_ms - base, baseline_p50_ms: base, load: chained });
    }
    results.insert(0, HopResult { added_p50_ms: 0.0, baseline_p50_ms: base, load: baseline });
    Ok(results)
}

fn wait_ready(url: &str) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(1))).build().into();
    for _ in 0..100 {
        if agent.get(&format!("{url}/v2/health/ready")).call().is_ok_and(|r| r.status() == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(fail("the worker in its namespace")(format!("{url} did not become ready")))
}

/// A network namespace joined to this one by a veth link: 10.233.0.1 here, 10.233.0.2 inside.
struct Namespace {
    name: String,
    host_link: String,
}

impl Namespace {
    const ADDRESS: &str = "10.233.0.2";

    fn create() -> Result<Namespace> {
        let pid = std::process::id() % 100_000;
        let namespace = Namespace { name: format!("nlbench{pid}"), host_link: format!("nlbh{pid}") };
        let inside = format!("nlbp{pid}");
        let ns = namespace.name.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &["link", "add", &namespace.host_link, "type", "veth", "peer", "name", &inside],
            &["link", "set", &inside, "netns", ns],
            &["addr", "add", "10.233.0.1/24", "dev", &namespace.host_link],
            &["link", "set", &namespace.host_link, "up"],
            &["-n", ns, "addr", "add", "10.233.0.2/24", "dev", &inside],
            &["-n", ns, "link", "set", &inside, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for args in steps {
            let status = Command::new("ip").args(args).status().map_err(|e| fail("a network namespace")(format!("running ip (iproute2): {e}")))?;
            if !status.success() {
                return Err(fail("a network namespace")(format!("`ip {}` failed (needs root)", args.join(" "))));
            }
        }
        Ok(namespace)
    }

    fn start_worker(&self, exe: &Path, dir: &Path, name: &str) -> Result<KillOnDrop> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(exe)
            .arg("up")
            .arg(dir)
            .args(["--only-segments", "0", "--name", name, "--listen", &format!("{}:8081", Self::ADDRESS)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail("the worker in its namespace")(e.to_string()))?;
        Ok(KillOnDrop(child))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The results as a markdown table.
pub fn markdown(results: &[HopResult], bytes: u64) -> String {
    let mut out = format!("Boundary of {bytes} bytes each way; one client, sequential requests.\n\n| path | p50 ms | p99 ms | added per hop (p50) |\n|---|---:|---:|---:|\n");
    for r in results {
        let added = if r.added_p50_ms == 0.0 { String::new() } else { format!("{:.2} ms", r.added_p50_ms) };
        out.push_str(&format!("| {} | {:.2} | {:.2} | {added} |\n", r.load.server, r.load.p50_ms, r.load.p99_ms));
    }
    out
}
