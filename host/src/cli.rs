//! Parsing the command line and printing results; all work is done by the library.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use netless::onnx::{Graph, OnnxModel};
use netless::calibrate;
use netless::package::artifacts;
use netless::pipeline::{self, Mode, Pipeline};
use netless::runtime::Engine;
use netless::plan::file::Plan;
use netless::plan::partition::mib;
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::split::{Split, SplitOptions};
use netless::verify::{self, VerifyOptions};

/// Lines to stdout that return a failed write (a closed pipe, as in `netless plan ... | head -1`)
/// from the enclosing function instead of panicking; [`main`] ends quietly on a closed stdout.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err($crate::cli::Stdout)?
    }};
}

/// Lines to stderr that never panic: diagnostics are dropped when stderr is closed.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod components;
mod distribute;

/// Writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub struct Stdout(pub std::io::Error);

/// Split ONNX models into segments that fit a serverless function's memory limit, and run them as one pipeline.
#[derive(Parser)]
#[command(name = "netless", version, long_version = env!("NETLESS_LONG_VERSION"), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every node's cost and the smallest memory limit any split can meet.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        #[command(flatten)]
        shapes: ShapeArgs,
        #[command(flatten)]
        costs: CostArgs,
    },
    /// Print the partition `split` would write, without writing anything; with --sweep, what a
    /// range of limits would give.
    #[command(group(ArgGroup::new("limit").required(true).args(["max_memory", "sweep"])))]
    Plan {
        #[command(flatten)]
        plan: PlanArgs,
        /// Plan under limits from LOW to HIGH (e.g. 16MiB..256MiB) and print, for each, the functions,
        /// stages, largest budget and the latency and throughput estimates: the trade-off a limit
        /// chooses from.
        #[arg(long, value_name = "LOW..HIGH", value_parser = parse_range, conflicts_with = "segments")]
        sweep: Option<(u64, u64)>,
        /// How many limits --sweep tries, evenly spaced on a log scale from LOW to HIGH.
        #[arg(long, default_value_t = 9, requires = "sweep", value_parser = clap::value_parser!(u64).range(2..=64))]
        points: u64,
        /// Also draw the split as one self-contained HTML page: the graph coloured by stage, every
        /// function's budget against the limit, the bytes crossing each boundary.
        #[arg(long, value_name = "OUT.html", conflicts_with = "sweep")]
        html: Option<PathBuf>,
    },
    /// Split a model into segment ONNX files and a plan.json.
    #[command(group(ArgGroup::new("limit").required(true).args(["max_memory"])))]
    Split {
        #[command(flatten)]
        plan: PlanArgs,
        /// The output folder (replaced if it holds an earlier split).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Run a split's segments one after another in native tract and compare with the unsplit model.
    Verify {
        /// The split's output folder.
        dir: PathBuf,
        /// An input as NAME=FILE.npy (repeatable); inputs not given are generated deterministically.
        #[arg(long = "input", value_parser = parse_input)]
        inputs: Vec<(String, PathBuf)>,
        /// Largest relative error accepted for floating-point outputs.
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// The unsplit model, if it moved since the split.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Build every segment of a split into a self-contained WASI component (OUT/components/), and
    /// with --spin the Spin app (OUT/spin.toml, OUT/spin/).
    Build {
        /// The split's output folder.
        dir: PathBuf,
        /// The generic segment runtime component (default: $NETLESS_RUNTIME_WASM, else the one built into
        /// this binary).
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Skip pre-initialisation: every new instance then decodes and optimises its model on its
        /// first call (a faster build, slower cold starts; see docs/benchmarks.md).
        #[arg(long)]
        lazy: bool,
        #[command(flatten)]
        spin: SpinBuildArgs,
    },
    /// Link all segment components into one pipeline component (OUT/pipeline.wasm).
    Compose {
        /// The built split's folder.
        dir: PathBuf,
        /// The pair-combinator component (default: $NETLESS_COMPOSER_WASM, else the one built into this binary).
        #[arg(long)]
        composer: Option<PathBuf>,
    },
    /// Measure segments' peak memory in the wasm runtime and fit the memory model to it.
    Calibrate {
        /// Models to split and measure.
        #[arg(required = true)]
        models: Vec<PathBuf>,
        /// Segment counts to split each model into.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        segments: Vec<usize>,
        #[command(flatten)]
        shapes: ShapeArgs,
        /// The generic segment runtime component.
        #[arg(long)]
        runtime: Option<PathBuf>,
        /// Write the fitted memory model here (JSON), for `split --memory-model`.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Also list, for every segment, the nodes of its optimised plan that held the most heap.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "5")]
        nodes: Option<usize>,
    },
    /// Run a built split in the wasmtime host, each segment within its planned memory budget.
    Run {
        /// The built split's folder.
        dir: PathBuf,
        /// An input as NAME=FILE.npy (repeatable); inputs not given are generated deterministically.
        #[arg(long = "input", value_parser = parse_input)]
        inputs: Vec<(String, PathBuf)>,
        /// Write every output as OUTPUT_NAME.npy into this folder.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Run the composed pipeline.wasm instead of the segments one by one.
        #[arg(long)]
        composed: bool,
        /// Run the unsplit model the plan was made from in native tract instead (the reference).
        #[arg(long, conflicts_with = "composed")]
        native: bool,
        /// Deadline of one call into a segment, in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        deadline_ms: u64,
    },
    /// Serve a model over the Open Inference Protocol v2 (KServe / Triton REST), each segment as a
    /// serverless function; splits and builds first when given a model.
    Up(UpArgs),
    /// Push a built Spin app (`build --spin`) to an OCI registry in Spin's artifact layout.
    Push(distribute::PushArgs),
    /// Write manifests that deploy a pushed app: `deploy k8s` for SpinKube.
    Deploy {
        #[command(subcommand)]
        target: distribute::DeployCommand,
    },
    /// Manage the compiled-code cache ($NETLESS_CACHE, else ~/.cache/netless/compiled).
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Serve a split's pipeline by calling its segments on other hosts (`netless up --only-segments`
    /// workers) over OIP v2, with replicas, retries and per-hop timeouts.
    Gateway(GatewayArgs),
    /// Measure a model side by side: onnxruntime, onnxruntime-web, native tract, and the wasm runtime unsplit and in K segments.
    Bench {
        /// The ONNX model (not used by --hops).
        #[arg(required_unless_present = "hops")]
        model: Option<PathBuf>,
        /// Segment counts to measure (K=1, the wasm runtime unsplit, is always included).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        segments: Vec<usize>,
        /// Memory limit of one segment given to the partitioner.
        #[arg(long, value_parser = parse_size, default_value = "4GiB")]
        max_memory: u64,
        #[command(flatten)]
        shapes: ShapeArgs,
        /// Timed inferences per configuration, after one warm-up.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Output folder (default: bench-out/<model stem>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Benchmark `netless up` under load instead: latency and throughput per K and concurrency,
        /// with pipelining on and off.
        #[arg(long)]
        serve: bool,
        /// Concurrent clients, for --serve.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
        /// Requests per client per measurement, for --serve.
        #[arg(long, default_value_t = 20)]
        requests: usize,
        /// Instances per segment function, for --serve.
        #[arg(long, default_value_t = 2)]
        max_instances: usize,
        /// Another OIP v2 server serving the same model, measured alongside (--serve), e.g. onnxruntime
        /// behind scripts/oip_reference_server.py.
        #[arg(long, requires = "reference_model")]
        reference_url: Option<String>,
        /// The model's name on the --reference-url server.
        #[arg(long)]
        reference_model: Option<String>,
        /// Also measure every K with each segment in its own worker process behind a gateway (--serve).
        #[arg(long)]
        distributed: bool,
        /// Also measure every K as a Spin app in NetLess's Spin host, as `up --spin` serves it (--serve).
        #[arg(long, requires = "serve")]
        spin: bool,
        /// Also measure every K's Spin app under the real Spin CLI at this path (`spin up`; --serve --spin).
        #[arg(long, requires = "spin")]
        spin_cli: Option<PathBuf>,
        /// Measure the split under --max-memory with its largest nodes cut into shards instead: split
        /// time, functions, bytes per boundary, and latency with shards concurrent vs one after another
        /// vs the unsplit model in native tract.
        #[arg(long, conflicts_with_all = ["serve", "hops"])]
        shards: bool,
        /// For --shards: also cut nodes that fit into up to N shards where the cost model says that is
        /// faster (as `plan --parallel-shards`).
        #[arg(long, default_value_t = 1, requires = "shards", value_parser = clap::value_parser!(u64).range(1..=64))]
        parallel_shards: u64,
        /// Measure the latency one hop between stages adds instead: in one process, over loopback,
        /// across network namespaces (--netns) and chained under Spin, on a one-node model.
        #[arg(long, conflicts_with = "serve")]
        hops: bool,
        /// Bytes crossing the boundary each way, for --hops.
        #[arg(long, value_parser = parse_size, default_value = "1MiB")]
        hop_bytes: u64,
        /// Also measure a hop across network namespaces (needs root and iproute2), for --hops.
        #[arg(long, requires = "hops")]
        netns: bool,
        /// The Node.js that runs onnxruntime-web's wasm backend beside NetLess (`n/a` when missing).
        #[arg(long, env = "NETLESS_NODE", default_value = "node")]
        node: String,
        /// The folder the npm package `onnxruntime-web` resolves from (where `npm install onnxruntime-web` ran).
        #[arg(long, env = "NETLESS_ORT_WEB", default_value = ".")]
        ort_web: PathBuf,
    },
}

#[derive(Args)]
struct UpArgs {
    /// An ONNX model (split and built into ~/.cache/netless/builds, reused while the model and
    /// options are unchanged) or a split's folder (built first if needed).
    target: PathBuf,
    /// Memory limit of one segment, for splitting a model (e.g. 64MiB).
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Exactly this many segments, for splitting a model.
    #[arg(long)]
    segments: Option<usize>,
    /// What the split optimises.
    #[arg(long, value_enum, default_value_t = Objective::Latency)]
    objective: Objective,
    #[command(flatten)]
    shapes: ShapeArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Also serve OIP over gRPC (`inference.GRPCInferenceService`, as Triton on 8001) on this address.
    #[arg(long, conflicts_with = "spin")]
    grpc_listen: Option<std::net::SocketAddr>,
    /// The pipeline's model name (default: the model's file stem); segments are NAME-seg-I.
    #[arg(long)]
    name: Option<String>,
    /// Instances of one segment that may run at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    max_instances: u64,
    /// Instances of each segment started at once and kept warm however idle (0: scale to zero).
    #[arg(long, default_value_t = 0)]
    min_instances: usize,
    /// Requests that may wait for an instance of one segment; more get 503.
    #[arg(long, default_value_t = 64)]
    queue_size: usize,
    /// An instance idle this long is reclaimed (scale to zero), e.g. 60s, 500ms.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    idle_timeout: Duration,
    /// Time one request may take end to end, queues included; past it, 504.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    deadline: Duration,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    max_body_size: u64,
    /// Hold an instance of every stage for a request's whole run instead of pipelining requests
    /// through the stages (for comparison).
    #[arg(long)]
    no_pipelining: bool,
    /// The generic segment runtime component, for building.
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// Serve only these segments, each as its own model: a worker of a distributed pipeline.
    #[arg(long, value_delimiter = ',', conflicts_with = "distributed")]
    only_segments: Option<Vec<usize>>,
    /// Run the split's Spin app (OUT/spin.toml, built first if missing; or a spin.toml given as the
    /// target) in NetLess's wasi:http host, as `spin up` would.
    #[arg(long, conflicts_with_all = ["distributed", "only_segments"])]
    spin: bool,
    /// A value for an application variable of the Spin app, NAME=VALUE (repeatable; also read from
    /// SPIN_VARIABLE_NAME, as Spin does).
    #[arg(long = "variable", value_parser = parse_variable, requires = "spin")]
    variables: Vec<(String, String)>,
    /// Memory limit of a Spin component that the plan does not size (the gateway).
    #[arg(long, value_parser = parse_size, default_value = "128MiB", requires = "spin")]
    component_memory: u64,
    /// Run the segments in N worker processes (`up --only-segments`, segment i on worker i mod N,
    /// and on more workers when N exceeds the segments) and serve the pipeline from this process as
    /// their gateway, chained over HTTP.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    distributed: Option<u64>,
    /// Time one hop to a remote segment may take (with --distributed).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    hop_timeout: Duration,
}

#[derive(Args)]
struct SpinBuildArgs {
    /// Also build the Spin app: each segment as an HTTP component, the gateway, and OUT/spin.toml.
    #[arg(long)]
    spin: bool,
    /// The HTTP segment component (default: $NETLESS_HTTP_SEGMENT_WASM, else the one built into this binary).
    #[arg(long, requires = "spin")]
    http_segment: Option<PathBuf>,
    /// The gateway component (default: $NETLESS_GATEWAY_WASM, else the one built into this binary).
    #[arg(long, requires = "spin")]
    gateway: Option<PathBuf>,
    /// Also write the app's manifest here (sources relative to it), e.g. a repository's spin.toml.
    #[arg(long, requires = "spin")]
    manifest: Option<PathBuf>,
    /// The `spin build` command of every component in --manifest.
    #[arg(long, requires = "manifest", default_value = "bash scripts/build-spin-app.sh")]
    build_command: String,
}

#[derive(Args)]
struct GatewayArgs {
    /// A split's folder (only its plan.json is read).
    dir: PathBuf,
    /// Where segment I is served, as I=URL[,URL...] (repeatable; one per segment, replicas
    /// separated by commas), e.g. 0=http://10.0.0.2:8081,http://10.0.0.3:8081.
    #[arg(long = "stage", value_parser = parse_stage, required = true)]
    stages: Vec<(usize, Vec<String>)>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Also serve OIP over gRPC (`inference.GRPCInferenceService`) on this address.
    #[arg(long)]
    grpc_listen: Option<std::net::SocketAddr>,
    /// The pipeline's model name, which the workers must share.
    #[arg(long)]
    name: Option<String>,
    /// Time one request may take end to end.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    deadline: Duration,
    /// Time one hop to a segment may take before the next replica is tried.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    hop_timeout: Duration,
    /// Largest request body accepted.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    max_body_size: u64,
}

fn parse_stage(s: &str) -> Result<(usize, Vec<String>), String> {
    let (index, urls) = s.split_once('=').ok_or_else(|| format!("`{s}` is not I=URL[,URL...]"))?;
    let index = index.trim().parse().map_err(|_| format!("`{index}` in `{s}` is not a segment index"))?;
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
    if let Some(bad) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!("`{bad}` is not an http:// URL"));
    }
    Ok((index, urls))
}

#[derive(Args)]
struct ShapeArgs {
    /// An input shape as NAME=D1,D2,... (repeatable; NAME= or NAME=scalar for a scalar); defaults to the
    /// declared shape, with a dynamic first dimension taken as 1.
    #[arg(long = "input-shape", value_parser = parse_shape)]
    input_shapes: Vec<(String, Vec<u64>)>,
}

#[derive(Args)]
struct CostArgs {
    /// Fixed cost of one hop between segments, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    hop_ms: f64,
    /// Bandwidth between segments, in MB/s.
    #[arg(long, default_value_t = 500.0)]
    bandwidth_mbps: f64,
    /// Compute speed of a segment, in GFLOP/s.
    #[arg(long, default_value_t = 10.0)]
    gflops: f64,
    /// Cut a node that fits into up to N shards on separate functions where the cost model says they
    /// finish sooner than the node whole, hops included (1: only nodes over the limit are cut).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    parallel_shards: u64,
}

impl CostArgs {
    fn model(&self) -> CostModel {
        CostModel {
            ops_per_second: self.gflops * 1e9,
            bytes_per_second: self.bandwidth_mbps * 1e6,
            hop_seconds: self.hop_ms / 1e3,
            parallel_shards: self.parallel_shards,
        }
    }
}

#[derive(Args)]
struct PlanArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Memory limit of one segment (e.g. 64MiB, 512MB, 1GiB).
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Exactly this many segments (default: whatever the objective prefers).
    #[arg(long)]
    segments: Option<usize>,
    /// What to optimise.
    #[arg(long, value_enum, default_value_t = Objective::Latency)]
    objective: Objective,
    /// The most segments the throughput objective considers when --segments is not given.
    #[arg(long, default_value_t = 16)]
    max_segments: usize,
    #[command(flatten)]
    shapes: ShapeArgs,
    #[command(flatten)]
    costs: CostArgs,
    /// A memory model (JSON, as written by `netless calibrate --write`) instead of the built-in one.
    #[arg(long)]
    memory_model: Option<PathBuf>,
}

impl PlanArgs {
    /// The options under `--max-memory` (which the command's arguments require).
    fn options(&self) -> anyhow::Result<SplitOptions> {
        self.options_under(self.max_memory.context("--max-memory is required")?)
    }

    fn options_under(&self, max_memory: u64) -> anyhow::Result<SplitOptions> {
        let memory = match &self.memory_model {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let model: MemoryModel = serde_json::from_str(&text).with_context(|| format!("{}: not a memory model", path.display()))?;
                model.check_form().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                model
            }
            None => MemoryModel::default(),
        };
        Ok(SplitOptions {
            request: Request {
                max_memory,
                segments: self.segments,
                objective: self.objective,
                max_segments: self.max_segments,
            },
            input_shapes: self.shapes.input_shapes.clone(),
            memory,
            cost: self.costs.model(),
        })
    }
}

/// What `netless cache` does.
#[derive(Subcommand)]
enum CacheCommand {
    /// Remove least recently used compiled code (then the function cache) until the cache fits.
    Prune {
        /// The size to fit in.
        #[arg(long, value_parser = parse_size, default_value = "4GiB")]
        max_size: u64,
        /// The cache folder (default: $NETLESS_CACHE, else ~/.cache/netless/compiled).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s.parse().map_err(|e| format!("`{s}` is not a size like 64MiB: {e}"))?;
    if size.as_u64() == 0 {
        return Err("the memory limit must be above zero".into());
    }
    Ok(size.as_u64())
}

/// `LOW..HIGH`: two sizes, the first below the second.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (low, high) = s.split_once("..").ok_or_else(|| format!("`{s}` is not a range like 16MiB..256MiB"))?;
    let (low, high) = (parse_size(low)?, parse_size(high)?);
    if low >= high {
        return Err(format!("`{s}`: the range must go from a smaller limit to a larger one"));
    }
    Ok((low, high))
}

/// `points` limits from `low` to `high`, evenly spaced on a log scale, rounded to whole KiB.
fn sweep_limits(low: u64, high: u64, points: u64) -> Vec<u64> {
    let ratio = (high as f64 / low as f64).powf(1.0 / (points - 1) as f64);
    let mut limits: Vec<u64> = (0..points).map(|i| ((low as f64 * ratio.powi(i as i32) / 1024.0).round() as u64 * 1024).clamp(low, high)).collect();
    limits.dedup();
    limits
}

/// One line per limit of a sweep: what its plan needs and how fast it is estimated to be.
fn print_sweep(model: &Path, plans: &[(u64, netless::Result<Plan>)]) -> anyhow::Result<()> {
    println!("{}: {} limits from {} to {}", model.display(), plans.len(), mib(plans[0].0), mib(plans[plans.len() - 1].0));
    println!("{:>12} {:>9} {:>6} {:>6} {:>14} {:>11} {:>13} {:>12} {:>14}", "limit", "functions", "stages", "groups", "largest budget", "latency ms", "slowest st. ms", "throughput/s", "bytes between");
    for (limit, plan) in plans {
        match plan {
            Ok(plan) => println!(
                "{:>12} {:>9} {:>6} {:>6} {:>14} {:>11.2} {:>13.2} {:>12.1} {:>14}",
                mib(*limit),
                plan.segments.len(),
                plan.stages.len(),
                plan.stages.iter().filter(|s| s.group.is_some()).count(),
                mib(plan.segments.iter().map(|s| s.estimated_memory).max().unwrap_or(0)),
                plan.latency_seconds * 1e3,
                plan.slowest_stage_seconds * 1e3,
                1.0 / plan.slowest_stage_seconds.max(f64::MIN_POSITIVE),
                plan.boundaries.iter().map(|b| b.bytes).sum::<u64>()
            ),
            Err(netless::Error::NodeTooLarge { node, op, needed, smallest, .. }) => {
                println!("{:>12} no plan: node `{}` ({op}) alone needs {}; the smallest limit that works is {}", mib(*limit), truncate(node, 40), mib(*needed), mib(*smallest))
            }
            Err(e) => println!("{:>12} no plan: {e}", mib(*limit)),
        }
    }
    Ok(())
}

/// `NAME=D1,D2,...`, or `NAME=` / `NAME=scalar` for a rank-0 input.
fn parse_shape(s: &str) -> Result<(String, Vec<u64>), String> {
    let (name, dims) = s.rsplit_once('=').ok_or_else(|| format!("`{s}` is not NAME=D1,D2,... (or NAME=scalar)"))?;
    if name.is_empty() {
        return Err(format!("`{s}` names no input"));
    }
    if matches!(dims.trim(), "" | "scalar") {
        return Ok((name.to_string(), Vec::new()));
    }
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<u64>().map_err(|_| format!("`{d}` in `{s}` is not a dimension")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

fn parse_variable(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    Ok((name.trim().to_string(), value.to_string()))
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=FILE.npy"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Runs the command line; errors are printed with their causes.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.chain().any(|c| c.downcast_ref::<Stdout>().is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe)) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            for cause in e.chain().skip(1).map(|c| c.to_string()) {
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, shapes, costs } => inspect(&model, &shapes, &costs),
        Command::Plan { plan: args, sweep: Some((low, high)), points, .. } => {
            let limits = sweep_limits(low, high, points);
            let plans = Split::sweep(&args.model, &args.options_under(low)?, &limits)?;
            print_sweep(&args.model, &plans)
        }
        Command::Plan { plan: args, sweep: None, html, .. } => {
            let split = Split::new(&args.model, &args.options()?)?;
            print_plan(&split.plan)?;
            if let Some(path) = html {
                std::fs::write(&path, netless::picture::html(&split)).with_context(|| format!("writing {}", path.display()))?;
                println!("drew the split in {}", path.display());
            }
            Ok(())
        }
        Command::Split { plan, out } => {
            let split = Split::new(&plan.model, &plan.options()?)?;
            let written = split.write(&out)?;
            print_plan(&written)?;
            println!("wrote {} segments and plan.json to {}", written.segments.len(), out.display());
            Ok(())
        }
        Command::Build { dir, runtime, lazy, spin } => {
            let plan = Plan::load(&dir)?;
            let path = runtime.unwrap_or_else(|| component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm"));
            let wasm = std::fs::read(&path).with_context(|| format!("reading the segment runtime {} (build it with scripts/build-components.sh)", path.display()))?;
            let built = artifacts::build(&dir, &plan, &wasm)?;
            println!("{:>3} {:>14} {:>14} {:>10}", "seg", "component", "data", "build ms");
            for b in &built {
                println!("{:>3} {:>14} {:>14} {:>10.1}", b.index, b.component_bytes, b.data_bytes, b.seconds * 1e3);
            }
            println!("built {} components in {}", built.len(), dir.join(artifacts::DIR).display());
            if !lazy {
                let record = artifacts::preinitialize(&dir, &plan, &Engine::new(cache_dir())?)?;
                println!("{:>3} {:>14} {:>10}", "seg", "snapshot", "ms");
                for s in &record.segments {
                    println!("{:>3} {:>14} {:>10.1}", s.index, s.component_bytes, s.seconds * 1e3);
                }
                println!("pre-initialised {} segments: their models are prepared inside seg-NN.wasm", record.segments.len());
            }
            if spin.spin {
                let built = build_spin(&dir, &plan, &spin)?;
                for (id, bytes) in &built.components {
                    println!("{id:>10} {bytes:>14}");
                }
                println!("wrote the Spin app {}{}", built.manifest.display(), spin.manifest.as_ref().map_or(String::new(), |m| format!(" and {}", m.display())));
            }
            Ok(())
        }
        Command::Compose { dir, composer } => {
            let plan = Plan::load(&dir)?;
            let path = composer.unwrap_or_else(|| component_path("NETLESS_COMPOSER_WASM", "netless_composer.wasm"));
            let wasm = std::fs::read(&path).with_context(|| format!("reading the composer {} (build it with scripts/build-components.sh)", path.display()))?;
            let out = artifacts::compose_pipeline(&dir, &plan, &wasm)?;
            println!("composed {} segments into {}", plan.segments.len(), out.display());
            Ok(())
        }
        Command::Calibrate { models, segments, shapes, runtime, write, nodes } => {
            let path = runtime.unwrap_or_else(|| component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm"));
            let wasm = std::fs::read(&path).with_context(|| format!("reading the segment runtime {}", path.display()))?;
            let engine = Engine::new(cache_dir())?;
            let runtime = engine.load_runtime(&wasm)?;
            let mut samples = Vec::new();
            for model in &models {
                for &k in &segments {
                    let measured = calibrate::measure(&engine, &runtime, model, &shapes.input_shapes, k, nodes.is_some());
                    samples.extend(measured.with_context(|| format!("{} in {k} segments", model.display()))?);
                }
            }
            let names: Vec<String> = models.iter().map(|m| m.file_stem().unwrap_or_default().to_string_lossy().into_owned()).collect();
            let fitted = calibrate::fit(&samples, format!("fitted by `netless calibrate` to {} segments of {} (K = {:?})", samples.len(), names.join(", "), segments));
            println!("{:<36} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>7}", "segment", "weights", "largest", "working", "io", "prepared", "measured", "estimate", "ratio");
            for s in &samples {
                let estimate = calibrate::estimate(&fitted, s);
                let ratio = estimate as f64 / s.measured.max(1) as f64;
                println!(
                    "{:<36} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>7.2}",
                    s.label, mib(s.weights), mib(s.largest_weight), mib(s.peak_activations), mib(s.io), mib(s.prepared), mib(s.measured), mib(estimate), ratio
                );
            }
            for s in samples.iter().filter(|_| nodes.is_some()) {
                let mut busiest: Vec<_> = s.nodes.iter().collect();
                busiest.sort_by_key(|n| std::cmp::Reverse(n.peak_bytes));
                println!("{}: the nodes that held the most heap (of {}): held at most while running, held after", s.label, s.nodes.len());
                for n in busiest.iter().take(nodes.unwrap_or(0)) {
                    println!("    {:<48} {:<28} {:>10} {:>10}", n.name, n.op, mib(n.peak_bytes), mib(n.live_bytes));
                }
            }
            let json = serde_json::to_string_pretty(&fitted)?;
            println!("{json}");
            if let Some(path) = write {
                std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Run { dir, inputs, output_dir, native: true, .. } => run_native(&dir, &inputs, output_dir.as_deref()),
        Command::Run { dir, inputs, output_dir, composed, deadline_ms, .. } => run_pipeline(&dir, &inputs, output_dir.as_deref(), composed, deadline_ms),
        Command::Up(args) => up(args),
        Command::Gateway(args) => gateway(args),
        Command::Push(args) => distribute::push(args),
        Command::Deploy { target } => distribute::deploy(target),
        Command::Cache { action: CacheCommand::Prune { max_size, dir } } => {
            let dir = dir.unwrap_or_else(cache_dir);
            if !dir.is_dir() {
                println!("{}: no cache yet", dir.display());
                return Ok(());
            }
            let pruned = netless::runtime::prune(&dir, max_size).with_context(|| format!("pruning {}", dir.display()))?;
            println!(
                "{}: {} -> {} ({} files removed)",
                dir.display(),
                bytesize::ByteSize(pruned.before),
                bytesize::ByteSize(pruned.after),
                pruned.removed
            );
            Ok(())
        }
        Command::Bench { hops: true, hop_bytes, netns, requests, out, .. } => {
            let read = |env: &str, name: &str| std::fs::read(component_path(env, name)).ok();
            let runtime = component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm");
            let out = out.unwrap_or_else(|| Path::new("bench-out").join("hops"));
            let options = netless::bench::hops::HopOptions {
                bytes: hop_bytes,
                requests: requests.max(50),
                exe: std::env::current_exe()?,
                runtime: std::fs::read(&runtime).with_context(|| format!("reading the segment runtime {} (build it with scripts/build-components.sh)", runtime.display()))?,
                spin: read("NETLESS_HTTP_SEGMENT_WASM", "netless_http_segment.wasm").zip(read("NETLESS_GATEWAY_WASM", "netless_gateway.wasm")),
                netns,
                work_dir: out.clone(),
                cache_dir: cache_dir(),
            };
            let results = netless::bench::hops::run(&options, &mut |line| eprintln!("bench: {line}"))?;
            let markdown = netless::bench::hops::markdown(&results, hop_bytes);
            std::fs::write(out.join("hops.md"), &markdown).with_context(|| format!("writing to {}", out.display()))?;
            std::fs::write(out.join("hops.json"), serde_json::to_string_pretty(&results)?)?;
            println!("{markdown}");
            println!("wrote hops.md and hops.json to {}", out.display());
            Ok(())
        }
        Command::Bench { model: Some(model), segments, max_memory, shapes, out, serve: true, concurrency, requests, max_instances, reference_url, reference_model, distributed, spin, spin_cli, .. } => {
            let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
            let options = netless::bench::serve::ServeBenchOptions {
                out: out.unwrap_or_else(|| Path::new("bench-out").join(stem)),
                model,
                segments,
                max_memory,
                input_shapes: shapes.input_shapes,
                concurrency,
                requests,
                max_instances,
                runtime_wasm: component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm"),
                reference: reference_url.zip(reference_model),
                distributed: distributed.then(std::env::current_exe).transpose()?,
                spin: if spin { Some(spin_components()?) } else { None },
                spin_cli,
            };
            let report = netless::bench::serve::run(&options, cache_dir(), &mut |line| eprintln!("bench: {line}"))?;
            let markdown = report.to_markdown();
            std::fs::write(options.out.join("serve.md"), &markdown).with_context(|| format!("writing to {}", options.out.display()))?;
            std::fs::write(options.out.join("serve.json"), serde_json::to_string_pretty(&report)?)?;
            println!("{markdown}");
            println!("wrote serve.md and serve.json to {}", options.out.display());
            let failures = report.failures();
            if !failures.is_empty() {
                bail!("{} load run(s) had failures: {}", failures.len(), failures.join("; "));
            }
            Ok(())
        }
        Command::Bench { model: None, .. } => bail!("a model is needed (only --hops runs without one)"),
        Command::Bench { model: Some(model), max_memory, shapes, runs, out, shards: true, parallel_shards, .. } => {
            let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
            let out = out.unwrap_or_else(|| Path::new("bench-out").join(format!("{stem}-shards")));
            let runtime = component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm");
            let options = netless::bench::shards::ShardBenchOptions {
                model,
                max_memory,
                parallel_shards,
                input_shapes: shapes.input_shapes,
                runs: runs as usize,
                runtime_wasm: std::fs::read(&runtime).with_context(|| format!("reading the segment runtime {} (build it with scripts/build-components.sh)", runtime.display()))?,
                out: out.join("split"),
            };
            let report = netless::bench::shards::run(&options, &Engine::new(cache_dir())?, &mut |line| eprintln!("bench: {line}"))?;
            let markdown = report.to_markdown();
            std::fs::write(out.join("shards.md"), &markdown).with_context(|| format!("writing to {}", out.display()))?;
            std::fs::write(out.join("shards.json"), serde_json::to_string_pretty(&report)?)?;
            println!("{markdown}");
            println!("wrote shards.md and shards.json to {}", out.display());
            if !report.outputs_match {
                bail!("the sharded pipeline does not reproduce the unsplit model within 1e-4");
            }
            Ok(())
        }
        Command::Bench { model: Some(model), segments, max_memory, shapes, runs, out, node, ort_web, .. } => {
            let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
            let options = netless::bench::BenchOptions {
                out: out.unwrap_or_else(|| Path::new("bench-out").join(stem)),
                model,
                segments,
                max_memory,
                input_shapes: shapes.input_shapes,
                runs: runs as usize,
                runtime_wasm: component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm"),
                composer_wasm: component_path("NETLESS_COMPOSER_WASM", "netless_composer.wasm"),
                python: "python3".into(),
                node,
                ort_web,
                deadline: Duration::from_secs(600),
            };
            let report = netless::bench::run(&options, &mut |line| eprintln!("bench: {line}"))?;
            report.write(&options.out)?;
            println!("{}", report.to_markdown());
            println!("wrote report.md, report.json and chart.svg to {}", options.out.display());
            let failures = report.failures();
            if !failures.is_empty() {
                bail!("{} problem(s) in the wasm runtime: {}", failures.len(), failures.join("; "));
            }
            Ok(())
        }
        Command::Verify { dir, inputs, tolerance, model } => {
            let report = verify::verify(&dir, &VerifyOptions { inputs, tolerance, model })?;
            println!("{:<32} {:>6} {:>12} {:>12}  result", "output", "type", "max |diff|", "rel. error");
            for c in &report.checks {
                let verdict = if c.passed { "ok" } else { "MISMATCH" };
                println!("{:<32} {:>6} {:>12.3e} {:>12.3e}  {verdict}", c.name, c.dtype.to_string(), c.max_abs_diff, c.relative_error);
            }
            println!("unsplit {:.1} ms, segments in sequence {:.1} ms (native tract)", report.unsplit_seconds * 1e3, report.split_seconds * 1e3);
            if !report.passed() {
                bail!("the split does not reproduce the unsplit model within {tolerance:e}");
            }
            println!("verified: the split reproduces the unsplit model");
            Ok(())
        }
    }
}

/// The HTTP segment and gateway components, from their variables or built into this binary.
fn spin_components() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let read = |env: &str, name: &str| {
        let path = component_path(env, name);
        std::fs::read(&path).with_context(|| format!("reading {} (build it with scripts/build-components.sh)", path.display()))
    };
    Ok((read("NETLESS_HTTP_SEGMENT_WASM", "netless_http_segment.wasm")?, read("NETLESS_GATEWAY_WASM", "netless_gateway.wasm")?))
}

fn build_spin(dir: &Path, plan: &Plan, args: &SpinBuildArgs) -> anyhow::Result<netless::package::spin_app::SpinBuilt> {
    use netless::package::spin_app::{self, SpinOptions};
    let read = |given: &Option<PathBuf>, env: &str, name: &str| {
        let path = given.clone().unwrap_or_else(|| component_path(env, name));
        std::fs::read(&path).with_context(|| format!("reading {} (build it with scripts/build-components.sh)", path.display()))
    };
    let http = read(&args.http_segment, "NETLESS_HTTP_SEGMENT_WASM", "netless_http_segment.wasm")?;
    let gateway = read(&args.gateway, "NETLESS_GATEWAY_WASM", "netless_gateway.wasm")?;
    let extra = match &args.manifest {
        Some(manifest) => {
            let base = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let base = base.canonicalize().with_context(|| format!("{}: no such folder", base.display()))?;
            let out = dir.canonicalize()?;
            let prefix = match out.strip_prefix(&base) {
                Ok(relative) if relative.as_os_str().is_empty() => String::new(),
                Ok(relative) => format!("{}/", relative.display()),
                Err(_) => format!("{}/", out.display()),
            };
            Some((manifest.as_path(), SpinOptions { prefix, build_command: args.build_command.clone(), ..SpinOptions::in_split() }))
        }
        None => None,
    };
    Ok(spin_app::build(dir, plan, &http, &gateway, extra.as_ref().map(|(p, o)| (*p, o)))?)
}

/// A guest component: from `env`, else the copy built into this binary (written once to the cache),
/// else in the wasm32-wasip2 release folder of the build this binary belongs to
/// (`target/release/netless` -> `target/wasm32-wasip2/release/NAME`).
fn component_path(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    if let Some(path) = components::extracted(name, &cache_root().join("components")) {
        return path;
    }
    let exe = std::env::current_exe().ok();
    let target = exe.as_deref().and_then(|e| e.parent()).and_then(|p| p.parent());
    target.map(|t| t.join("wasm32-wasip2/release").join(name)).unwrap_or_else(|| PathBuf::from(name))
}

/// Where compiled code is cached: $NETLESS_CACHE, else ~/.cache/netless/compiled.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NETLESS_CACHE") {
        return PathBuf::from(dir);
    }
    cache_root().join("compiled")
}

/// NetLess's cache folder: ~/.cache/netless.
fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/netless")
}

fn run_native(dir: &Path, given: &[(String, PathBuf)], output_dir: Option<&Path>) -> anyhow::Result<()> {
    let plan = Plan::load(dir)?;
    let source = OnnxModel::load(Path::new(&plan.model.file))?;
    if source.sha256 != plan.model.sha256 {
        bail!("{} changed since the split (sha256 {}, the plan says {})", plan.model.file, source.sha256, plan.model.sha256);
    }
    let model = netless::native::NativeModel::new(&source.proto, "the unsplit model", &plan.model.inputs)?;
    let inputs = verify::load_inputs(&plan.model.inputs, given)?;
    let started = Instant::now();
    let outputs = model.run(&inputs)?;
    let ran = started.elapsed();
    if let Some(out) = output_dir {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    for (name, tensor) in &outputs {
        println!("{name} {:?} {:?}", tensor.datum_type(), tensor.shape());
        if let Some(out) = output_dir {
            netless::npy::write(&out.join(format!("{}.npy", name.replace(['/', '\\', ':'], "_"))), name, tensor)?;
        }
    }
    println!("inference {:.1} ms (unsplit, native tract)", ran.as_secs_f64() * 1e3);
    Ok(())
}

fn run_pipeline(dir: &Path, given: &[(String, PathBuf)], output_dir: Option<&Path>, composed: bool, deadline_ms: u64) -> anyhow::Result<()> {
    let engine = Engine::new(cache_dir())?;
    let mode = if composed { Mode::Composed } else { Mode::Segments };
    let started = Instant::now();
    let mut pipeline = Pipeline::load(&engine, dir, mode, Duration::from_millis(deadline_ms))?;
    let loaded = started.elapsed();
    let plan = pipeline.plan().clone();
    for spec in &plan.model.inputs {
        if !given.iter().any(|(n, _)| n == &spec.name) {
            eprintln!("input `{}` not given: using a generated {} {:?}", spec.name, spec.dtype, spec.shape);
        }
    }
    let tensors = verify::load_inputs(&plan.model.inputs, given)?;
    let wire = plan
        .model
        .inputs
        .iter()
        .map(|spec| Ok((spec.name.clone(), pipeline::to_wire(spec, &tensors[&spec.name])?)))
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let started = Instant::now();
    let outputs = pipeline.infer(&wire)?;
    let ran = started.elapsed();
    if let Some(out) = output_dir {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    for output in &outputs {
        let tensor = pipeline::from_wire(output)?;
        let preview: Vec<String> = match tensor.cast_to_dt(tract_onnx::prelude::DatumType::F64) {
            Ok(t) => t.try_as_plain_ram().ok().and_then(|v| v.as_slice::<f64>().ok().map(|s| s.iter().take(6).map(|x| format!("{x:.5}")).collect())).unwrap_or_default(),
            Err(_) => vec![],
        };
        println!("{} {:?} {:?} [{} ...]", output.name, output.dtype, output.shape, preview.join(", "));
        if let Some(out) = output_dir {
            let path = out.join(format!("{}.npy", output.name.replace(['/', '\\', ':'], "_")));
            netless::npy::write(&path, &output.name, &tensor)?;
        }
    }
    for (stage, seg) in pipeline.stages().iter().zip(&plan.segments) {
        let budget = if composed { pipeline::composed_budget(&plan) } else { seg.estimated_memory };
        println!("{}: peak memory {} of a {} budget", stage.label(), mib(stage.peak_memory()), mib(budget));
    }
    println!("loaded in {:.1} ms, inference {:.1} ms ({} in wasmtime)", loaded.as_secs_f64() * 1e3, ran.as_secs_f64() * 1e3, if composed { "composed" } else { "segment by segment" });
    Ok(())
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    use netless::serve::{Scaling, ServeOptions, Service, prepare};
    init_logs();
    let path = args.runtime.clone().unwrap_or_else(|| component_path("NETLESS_RUNTIME_WASM", "netless_segment.wasm"));
    let runtime = || std::fs::read(&path).with_context(|| format!("reading the segment runtime {} (build it with scripts/build-components.sh)", path.display()));
    if !args.target.exists() {
        let what = if args.spin { "model file, split folder or spin.toml" } else { "model file or split folder" };
        bail!("{}: no such {what}", args.target.display());
    }
    if args.spin && args.target.extension().is_some_and(|e| e == "toml") {
        return up_spin(&args.target, &args);
    }
    let engine = Engine::new(cache_dir())?;
    let prepared = if args.target.is_dir() {
        if prepare::is_built(&args.target) { prepare::Prepared { dir: args.target.clone(), cached: true } } else { prepare::built_folder(&args.target, &runtime()?, &engine)? }
    } else {
        let Some(max_memory) = args.max_memory else { bail!("--max-memory is needed to split {} (or give a split's folder)", args.target.display()) };
        let options = SplitOptions {
            request: Request { max_memory, segments: args.segments, objective: args.objective, max_segments: 16 },
            input_shapes: args.shapes.input_shapes.clone(),
            memory: MemoryModel::default(),
            cost: CostArgs { hop_ms: 2.0, bandwidth_mbps: 500.0, gflops: 10.0, parallel_shards: 1 }.model(),
        };
        prepare::model(&args.target, &options, &runtime()?, &engine, &cache_root().join("builds"))?
    };
    let verb = if prepared.cached { "using" } else { "built" };
    eprintln!("{verb} {}", prepared.dir.display());
    let options = ServeOptions {
        name: args.name.clone(),
        scaling: Scaling { min_instances: args.min_instances, max_instances: args.max_instances as usize, queue_size: args.queue_size, idle_timeout: args.idle_timeout },
        deadline: args.deadline,
        max_body: args.max_body_size,
        pipelining: !args.no_pipelining,
        only_segments: args.only_segments.clone(),
    };
    if args.spin {
        let manifest = prepared.dir.join("spin.toml");
        if !manifest.exists() {
            let plan = Plan::load(&prepared.dir)?;
            let built = build_spin(&prepared.dir, &plan, &SpinBuildArgs { spin: true, http_segment: None, gateway: None, manifest: None, build_command: String::new() })?;
            eprintln!("built the Spin app {}", built.manifest.display());
        }
        return up_spin(&manifest, &args);
    }
    if let Some(workers) = args.distributed {
        let plan = Plan::load(&prepared.dir)?;
        let mut pool = netless::serve::workers::WorkerPool::default();
        let replicas = pool.start(&std::env::current_exe()?, &prepared.dir, plan.segments.len(), workers as usize, &options)?;
        return serve_service(Service::gateway(&prepared.dir, replicas, args.hop_timeout, options)?, args.listen, args.grpc_listen);
    }
    serve_service(Service::load(&engine, &prepared.dir, options)?, args.listen, args.grpc_listen)
}

fn up_spin(manifest: &Path, args: &UpArgs) -> anyhow::Result<()> {
    use netless::serve::spin::{self, SpinApp, SpinOptions};
    let options = SpinOptions {
        variables: args.variables.iter().cloned().collect(),
        deadline: args.deadline,
        default_memory: args.component_memory,
        max_body: args.max_body_size,
    };
    let app = SpinApp::load(manifest, &cache_dir(), options)?;
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let listener = tokio.block_on(tokio::net::TcpListener::bind(args.listen)).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "serving Spin app {} on http://{addr}", app.name());
    for (route, component) in app.routes() {
        let _ = writeln!(out, "  {route} -> {component}");
    }
    let _ = out.flush();
    drop(out);
    tokio.block_on(spin::serve(app, listener, shutdown_signal()))?;
    eprintln!("stopped");
    Ok(())
}

fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    use netless::serve::{Scaling, ServeOptions, Service};
    init_logs();
    let plan = Plan::load(&args.dir)?;
    let mut replicas = vec![Vec::new(); plan.segments.len()];
    for (index, urls) in args.stages {
        let Some(slot) = replicas.get_mut(index) else { bail!("--stage {index}: the plan has {} segments", plan.segments.len()) };
        slot.extend(urls);
    }
    let options = ServeOptions {
        name: args.name.clone(),
        scaling: Scaling { min_instances: 0, max_instances: 1, queue_size: 0, idle_timeout: Duration::from_secs(60) },
        deadline: args.deadline,
        max_body: args.max_body_size,
        pipelining: true,
        only_segments: None,
    };
    serve_service(Service::gateway(&args.dir, replicas, args.hop_timeout, options)?, args.listen, args.grpc_listen)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NETLESS_LOG").unwrap_or_else(|_| "netless=info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Serves until Ctrl-C or SIGTERM (REST, and gRPC on `grpc` if given), printing the addresses
/// first (tests and scripts read them).
fn serve_service(service: netless::serve::Service, listen: std::net::SocketAddr, grpc: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let listener = tokio.block_on(tokio::net::TcpListener::bind(listen)).with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let grpc = grpc.map(|at| tokio.block_on(tokio::net::TcpListener::bind(at)).with_context(|| format!("listening for gRPC on {at}"))).transpose()?;
    let names: Vec<&str> = service.models().iter().map(|m| m.name.as_str()).collect();
    // A closed stdout (a parent that read the address and left) must not stop the server.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "serving {} on http://{addr}: models {}", service.name(), names.join(", "));
    if let Some(grpc) = &grpc {
        let _ = writeln!(out, "serving OIP over gRPC on {}", grpc.local_addr()?);
    }
    if let Some(first) = names.first() {
        let _ = writeln!(out, "try: curl http://{addr}/v2/models/{first}");
    }
    let _ = out.flush();
    drop(out);
    let service = std::sync::Arc::new(service);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let on_stop = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|&s| s).await;
        }
    };
    tokio.spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    tokio.block_on(async {
        let rest = netless::serve::serve(service.clone(), listener, on_stop());
        match grpc {
            Some(grpc) => tokio::try_join!(rest, netless::serve::serve_grpc(service.clone(), grpc, on_stop())).map(|_| ()),
            None => rest.await,
        }
    })?;
    eprintln!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn inspect(path: &PathBuf, shapes: &ShapeArgs, costs: &CostArgs) -> anyhow::Result<()> {
    let model = OnnxModel::load(path)?;
    let graph = Graph::analyse(&model, &shapes.input_shapes).with_context(|| format!("analysing {}", path.display()))?;
    println!("{:<40} {:<20} {:>14} {:>12} {:>12}", "node", "op", "FLOPs", "weights", "outputs");
    for node in &graph.nodes {
        let weights: u64 = node.inputs.iter().map(|&t| &graph.tensors[t]).filter(|t| t.is_weight()).map(|t| t.bytes()).sum();
        let outputs: u64 = node.outputs.iter().map(|&t| graph.tensors[t].bytes()).sum();
        println!("{:<40} {:<20} {:>14} {:>12} {:>12}", truncate(&node.name, 40), node.op_type, node.flops, weights, outputs);
    }
    let memory = MemoryModel::default();
    let (smallest, node) = netless::plan::smallest_limit(&graph, &memory, &costs.model());
    println!();
    println!("model {}: {} nodes, {:.3} GFLOPs, {} of weights", model.name(), graph.nodes.len(), graph.flops() as f64 / 1e9, mib(graph.weight_bytes()));
    for &t in &graph.inputs {
        let t = &graph.tensors[t];
        println!("input  {} {} {:?}", t.name, t.dtype, t.shape);
    }
    for &t in &graph.outputs {
        let t = &graph.tensors[t];
        println!("output {} {} {:?}", t.name, t.dtype, t.shape);
    }
    println!("smallest feasible --max-memory: {} ({smallest} bytes), set by node `{node}`", mib(smallest));
    Ok(())
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width { s.to_string() } else { format!("{}…", s.chars().take(width - 1).collect::<String>()) }
}

fn print_plan(plan: &Plan) -> anyhow::Result<()> {
    let groups = plan.stages.iter().filter(|s| s.group.is_some()).count();
    println!(
        "{} ({} nodes, {} weights) -> {} stages ({} functions, {} shard groups) under {} [objective {:?}, order {}]",
        plan.model.name,
        plan.model.nodes,
        mib(plan.model.weight_bytes),
        plan.stages.len(),
        plan.segments.len(),
        groups,
        mib(plan.request.max_memory),
        plan.request.objective,
        plan.order
    );
    println!(
        "{:>5} {:>4} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}  {:<}",
        "stage", "seg", "nodes", "GFLOPs", "weights", "peak act.", "est. memory", "out bytes", "first .. last node"
    );
    for stage in &plan.stages {
        let out_bytes = plan.boundaries.get(stage.index).map(|b| b.bytes.to_string()).unwrap_or_default();
        if let Some(group) = &stage.group {
            let why = match group.unsharded_memory > plan.request.max_memory {
                true => format!("needs {} whole", mib(group.unsharded_memory)),
                false => format!("fits whole ({}) but is faster", mib(group.unsharded_memory)),
            };
            println!(
                "{:>5} group: node `{}` ({}) {why}, cut by {:?} ({} units) into {} parallel shards, joined by {}; {} bytes out",
                stage.index,
                truncate(&group.node, 40),
                group.op,
                group.strategy,
                group.extent,
                stage.segments.len(),
                match group.join.join {
                    netless::plan::shard::Join::Concat { axis } => format!("Concat on axis {axis}"),
                    netless::plan::shard::Join::Sum => "Sum".into(),
                },
                out_bytes
            );
        }
        for &i in &stage.segments {
            let s = &plan.segments[i];
            let label = match &s.shard {
                Some(shard) => format!("{}/{} [{}..{})", shard.index, shard.count, shard.range[0], shard.range[1]),
                None if s.nodes == 0 => "joins the shards".into(),
                None => format!("{} .. {}", truncate(&s.first_node, 30), truncate(&s.last_node, 30)),
            };
            println!(
                "{:>5} {:>4} {:>6} {:>12.3} {:>12} {:>12} {:>12} {:>12}  {}",
                if stage.group.is_some() { String::new() } else { stage.index.to_string() },
                s.index,
                s.nodes,
                s.flops as f64 / 1e9,
                mib(s.weight_bytes),
                mib(s.peak_activation_bytes),
                mib(s.estimated_memory),
                if stage.group.is_some() { s.outputs.iter().map(|t| t.bytes()).sum::<u64>().to_string() } else { out_bytes.clone() },
                label
            );
        }
    }
    for b in &plan.boundaries {
        println!("boundary after stage {}: {} bytes in {} tensor(s): {}", b.after_stage, b.bytes, b.tensors.len(), b.tensors.join(", "));
    }
    println!("estimated latency {:.1} ms, slowest stage {:.1} ms", plan.latency_seconds * 1e3, plan.slowest_stage_seconds * 1e3);
    Ok(())
}
