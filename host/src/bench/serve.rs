//! `netless bench --serve`: the OIP v2 server under load on loopback. For every K and with pipelining
//! on and off: the first request from zero instances, then p50/p99 latency and throughput at each
//! concurrency; optionally the same split as a Spin app, in NetLess's Spin host (`up --spin`) and
//! under the real `spin up`, and the same load against another OIP v2 server (a reference such as
//! onnxruntime behind KServe's model server), side by side in one report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::onnx::graph::InputShapes;
use crate::package::{artifacts, spin_app};
use crate::pipeline::to_wire;
use crate::plan::{CostModel, MemoryModel, Objective, Request};
use crate::runtime::Engine;
use crate::serve::workers::WorkerPool;
use crate::serve::spin::{SpinApp, SpinHandle, SpinOptions};
use crate::serve::{Handle, Scaling, ServeOptions, Service, oip};
use crate::split::{Split, SplitOptions};
use crate::{Error, Result, verify};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServeBenchOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Segment counts.
    pub segments: Vec<usize>,
    /// Memory limit given to the partitioner.
    pub max_memory: u64,
    /// Input shapes.
    pub input_shapes: InputShapes,
    /// Concurrent clients to measure at.
    pub concurrency: Vec<usize>,
    /// Requests each client sends per measurement.
    pub requests: usize,
    /// Instances per segment function.
    pub max_instances: usize,
    /// Where splits and the report go.
    pub out: PathBuf,
    /// The generic segment runtime component.
    pub runtime_wasm: PathBuf,
    /// Another OIP v2 server serving the same model, as `URL MODEL`, measured the same way.
    pub reference: Option<(String, String)>,
    /// The `netless` executable: also measure each K with every segment in its own worker process
    /// behind a gateway, chained over loopback HTTP.
    pub distributed: Option<PathBuf>,
    /// The HTTP segment and gateway components: also measure each K as a Spin app in NetLess's
    /// Spin host (`up --spin`).
    pub spin: Option<(Vec<u8>, Vec<u8>)>,
    /// The real Spin CLI: also measure each K's Spin app under `spin up` (needs `spin`).
    pub spin_cli: Option<PathBuf>,
}

/// One load measurement.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// What was measured (`K=2 pipelined`, `reference`...).
    pub server: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests completed.
    pub requests: usize,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests per second.
    pub throughput: f64,
    /// Requests that failed, with the first error.
    pub failures: usize,
    /// The first failure's message.
    pub first_error: Option<String>,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct ServeReport {
    /// The model.
    pub model: String,
    /// First request after start, from zero instances, per server: ms.
    pub first_request_ms: Vec<(String, f64)>,
    /// The load measurements.
    pub loads: Vec<LoadResult>,
}

/// Runs the serving benchmark; `log` gets progress lines.
pub fn run(options: &ServeBenchOptions, cache: PathBuf, log: &mut dyn FnMut(&str)) -> Result<ServeReport> {
    std::fs::create_dir_all(&options.out).map_err(Error::io(&options.out))?;
    let runtime = std::fs::read(&options.runtime_wasm).map_err(Error::io(&options.runtime_wasm))?;
    let engine = Engine::new(cache.clone()).map_err(|e| Error::Package { what: "the engine".into(), reason: e.to_string() })?;
    let name = options.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let mut report = ServeReport { model: name.clone(), first_request_ms: vec![], loads: vec![] };
    let mut body = None;
    for &k in &options.segments {
        let dir = options.out.join(format!("serve-k{k}"));
        log(&format!("K={k}: splitting and building into {}", dir.display()));
        let split_options = SplitOptions {
            request: Request { max_memory: options.max_memory, segments: Some(k), objective: Objective::Throughput, max_segments: k },
            input_shapes: options.input_shapes.clone(),
            memory: MemoryModel::default(),
            cost: CostModel::default(),
        };
        let plan = Split::new(&options.model, &split_options)?.write(&dir)?;
        artifacts::build(&dir, &plan, &runtime)?;
        artifacts::preinitialize(&dir, &plan, &engine)?;
        let (request, header) = match &body {
            Some(b) => b,
            None => body.insert(binary_request(&plan.model.inputs)?),
        };
        for pipelining in [true, false] {
            let label = format!("netless K={k} {}", if pipelining { "pipelined" } else { "not pipelined" });
            let serve_options = serve_options(&name, options.max_instances, pipelining);
            let service = Service::load(&engine, &dir, serve_options)?;
            measure_service(&mut report, &label, service, &name, request, *header, options, log)?;
        }
        if let Some((http, gateway)) = &options.spin {
            spin_app::build(&dir, &plan, http, gateway, None)?;
            let spin_options = SpinOptions { variables: Default::default(), deadline: Duration::from_secs(600), default_memory: 256 << 20, max_body: 1 << 30 };
            let app = SpinApp::load(&dir.join("spin.toml"), &cache, spin_options)?;
            let server = SpinHandle::start(app, "127.0.0.1:0".parse().expect("address")).map_err(|e| Error::Package { what: "the Spin host".into(), reason: e.to_string() })?;
            measure(&mut report, &format!("netless up --spin K={k}"), &server.url(), &name, request, *header, options, log)?;
            let _ = server.stop();
            if let Some(cli) = &options.spin_cli {
                log(&format!("K={k}: starting the real spin up (its first start compiles every component)"));
                let spin = RealSpin::start(cli, &dir.join("spin.toml"))?;
                measure(&mut report, &format!("spin up (real Spin) K={k}"), &spin.url, &name, request, *header, options, log)?;
            }
        }
        if let Some(exe) = &options.distributed {
            let label = format!("netless K={k} over {k} worker processes");
            let serve_options = serve_options(&name, options.max_instances, true);
            let mut workers = WorkerPool::default();
            let replicas = workers.start(exe, &dir, k, k, &serve_options)?;
            let service = Service::gateway(&dir, replicas, Duration::from_secs(60), serve_options)?;
            measure_service(&mut report, &label, service, &name, request, *header, options, log)?;
        }
    }
    if let (Some((base, model)), Some((request, header))) = (&options.reference, &body) {
        let url = format!("{}/v2/models/{model}/infer", base.trim_end_matches('/'));
        let started = Instant::now();
        if post(&agent(), &url, request, *header).is_ok() {
            report.first_request_ms.push(("reference (warm)".into(), started.elapsed().as_secs_f64() * 1e3));
        }
        for &c in &options.concurrency {
            log(&format!("reference {base}: concurrency {c}"));
            report.loads.push(load("reference", &url, request, *header, c, options.requests));
        }
    }
    Ok(report)
}

pub(super) fn serve_options(name: &str, max_instances: usize, pipelining: bool) -> ServeOptions {
    ServeOptions {
        name: Some(name.to_string()),
        scaling: Scaling { min_instances: 0, max_instances, queue_size: 1024, idle_timeout: Duration::from_secs(600) },
        deadline: Duration::from_secs(600),
        max_body: 1 << 30,
        pipelining,
        only_segments: None,
    }
}

/// Serves `service` on loopback and measures it.
#[allow(clippy::too_many_arguments)]
fn measure_service(report: &mut ServeReport, label: &str, service: Service, name: &str, request: &[u8], header: usize, options: &ServeBenchOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
    let server = Handle::start(service, "127.0.0.1:0".parse().expect("address")).map_err(|e| Error::Package { what: "the server".into(), reason: e.to_string() })?;
    measure(report, label, &server.url(), name, request, header, options, log)?;
    let _ = server.stop();
    Ok(())
}

/// Measures the server at `base`: its first request, then each concurrency.
#[allow(clippy::too_many_arguments)]
fn measure(report: &mut ServeReport, label: &str, base: &str, name: &str, request: &[u8], header: usize, options: &ServeBenchOptions, log: &mut dyn FnMut(&str)) -> Result<()> {
    let url = format!("{base}/v2/models/{name}/infer");
    let started = Instant::now();
    post(&agent(), &url, request, header).map_err(|reason| Error::Package { what: label.to_string(), reason })?;
    report.first_request_ms.push((label.to_string(), started.elapsed().as_secs_f64() * 1e3));
    for &c in &options.concurrency {
        log(&format!("{label}: concurrency {c}"));
        report.loads.push(load(label, &url, request, header, c, options.requests));
    }
    Ok(())
}

/// A real `spin up` of a manifest on a free loopback port, killed on drop.
struct RealSpin {
    child: std::process::Child,
    url: String,
}

impl RealSpin {
    /// Starts `cli up` and waits until it says it is serving.
    fn start(cli: &std::path::Path, manifest: &std::path::Path) -> Result<RealSpin> {
        use std::io::BufRead;
        let failed = |reason: String| Error::Package { what: format!("spin up ({})", cli.display()), reason };
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| failed(e.to_string()))?.port();
        let address = format!("127.0.0.1:{port}");
        let mut child = std::process::Command::new(cli)
            .args(["up", "--quiet", "--from"])
            .arg(manifest)
            .args(["--listen", &address])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| failed(e.to_string()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut spin = RealSpin { child, url: format!("http://{address}") };
        for line in std::io::BufReader::new(stdout).lines() {
            if line.map_err(|e| failed(e.to_string()))?.starts_with("Serving http://") {
                return Ok(spin);
            }
        }
        let status = spin.child.wait().map_err(|e| failed(e.to_string()))?;
        Err(failed(format!("exited ({status}) before serving")))
    }
}

impl Drop for RealSpin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary OIP request for generated inputs: the body and the JSON header's length.
pub(super) fn binary_request(specs: &[crate::plan::file::TensorSpec]) -> Result<(Vec<u8>, usize)> {
    let inputs = specs.iter().map(|spec| to_wire(spec, &verify::generate(spec, 1)?)).collect::<Result<Vec<_>>>()?;
    let encoded = oip::encode_request("bench", &inputs);
    Ok((encoded.body, encoded.header_length.unwrap_or(0)))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8], header: usize) -> std::result::Result<(), String> {
    let mut response = agent
        .post(url)
        .header("Inference-Header-Content-Length", header.to_string())
        .send(body)
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response.body_mut().with_config().limit(1 << 30).read_to_vec().map_err(|e| e.to_string())?;
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("{status}: {}", String::from_utf8_lossy(&bytes))),
    }
}

/// `concurrency` clients, each with its own connection, sending `requests` requests one after another.
pub(super) fn load(server: &str, url: &str, body: &[u8], header: usize, concurrency: usize, requests: usize) -> LoadResult {
    let warm = agent();
    let _ = post(&warm, url, body, header);
    let started = Instant::now();
    let results: Vec<(f64, std::result::Result<(), String>)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| {
                    let agent = agent();
                    (0..requests)
                        .map(|_| {
                            let sent = Instant::now();
                            let result = post(&agent, url, body, header);
                            (sent.elapsed().as_secs_f64() * 1e3, result)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().expect("client thread")).collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = results.iter().filter(|(_, r)| r.is_ok()).map(|(ms, _)| *ms).collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies.get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    let failures: Vec<&String> = results.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    LoadResult {
        server: server.into(),
        concurrency,
        requests: latencies.len(),
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        throughput: latencies.len() as f64 / wall,
        failures: failures.len(),
        first_error: failures.first().map(|e| e.to_string()),
    }
}

impl ServeReport {
    /// The report as markdown tables, with throughput relative to the first server at each concurrency.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("## Serving `{}` over OIP v2 on loopback\n\nFirst request after start (zero instances):\n\n| server | ms |\n|---|---:|\n", self.model);
        for (server, ms) in &self.first_request_ms {
            out += &format!("| {server} | {ms:.1} |\n");
        }
        out += "\n| server | clients | requests | p50 ms | p99 ms | req/s | req/s vs first row | failures |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
        let mut rows = self.loads.clone();
        rows.sort_by_key(|r| r.concurrency);
        for r in &rows {
            let base = rows.iter().find(|b| b.concurrency == r.concurrency).map_or(f64::NAN, |b| b.throughput);
            out += &format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2}x | {} |\n",
                r.server, r.concurrency, r.requests, r.p50_ms, r.p99_ms, r.throughput, r.throughput / base, r.failures
            );
        }
        out
    }

    /// Failures seen under load, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.loads
            .iter()
            .filter(|r| r.failures > 0)
            .map(|r| format!("{} at {} clients: {} failed ({})", r.server, r.concurrency, r.failures, r.first_error.as_deref().unwrap_or("")))
            .collect()
    }
}
