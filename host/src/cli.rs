//! Parsing the command line and printing results; all work is done by the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use netless::onnx::{Graph, OnnxModel};
use netless::plan::file::Plan;
use netless::plan::partition::mib;
use netless::plan::{CostModel, MemoryModel, Objective, Request};
use netless::split::{Split, SplitOptions};
use netless::verify::{self, VerifyOptions};

/// Split ONNX models into segments that fit a serverless function's memory limit, and run them as one pipeline.
#[derive(Parser)]
#[command(name = "netless", version, about)]
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
    /// Print the partition `split` would write, without writing anything.
    Plan(PlanArgs),
    /// Split a model into segment ONNX files and a plan.json.
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
}

#[derive(Args)]
struct ShapeArgs {
    /// An input shape as NAME=D1,D2,... (repeatable); defaults to the declared shape, with a dynamic first
    /// dimension taken as 1.
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
}

impl CostArgs {
    fn model(&self) -> CostModel {
        CostModel { ops_per_second: self.gflops * 1e9, bytes_per_second: self.bandwidth_mbps * 1e6, hop_seconds: self.hop_ms / 1e3 }
    }
}

#[derive(Args)]
struct PlanArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Memory limit of one segment (e.g. 64MiB, 512MB, 1GiB).
    #[arg(long, value_parser = parse_size)]
    max_memory: u64,
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
}

impl PlanArgs {
    fn options(&self) -> SplitOptions {
        SplitOptions {
            request: Request {
                max_memory: self.max_memory,
                segments: self.segments,
                objective: self.objective,
                max_segments: self.max_segments,
            },
            input_shapes: self.shapes.input_shapes.clone(),
            memory: MemoryModel::default(),
            cost: self.costs.model(),
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s.parse().map_err(|e| format!("`{s}` is not a size like 64MiB: {e}"))?;
    if size.as_u64() == 0 {
        return Err("the memory limit must be above zero".into());
    }
    Ok(size.as_u64())
}

fn parse_shape(s: &str) -> Result<(String, Vec<u64>), String> {
    let (name, dims) = s.rsplit_once('=').ok_or_else(|| format!("`{s}` is not NAME=D1,D2,..."))?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<u64>().map_err(|_| format!("`{d}` in `{s}` is not a dimension")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=FILE.npy"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Runs the command line; errors are printed with their causes.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { model, shapes, costs } => inspect(&model, &shapes, &costs),
        Command::Plan(args) => {
            let split = Split::new(&args.model, &args.options())?;
            print_plan(&split.plan);
            Ok(())
        }
        Command::Split { plan, out } => {
            let split = Split::new(&plan.model, &plan.options())?;
            let written = split.write(&out)?;
            print_plan(&written);
            println!("wrote {} segments and plan.json to {}", written.segments.len(), out.display());
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

fn print_plan(plan: &Plan) {
    println!(
        "{} ({} nodes, {} weights) -> {} segments under {} [objective {:?}, order {}]",
        plan.model.name,
        plan.model.nodes,
        mib(plan.model.weight_bytes),
        plan.segments.len(),
        mib(plan.request.max_memory),
        plan.request.objective,
        plan.order
    );
    println!("{:>3} {:>6} {:>12} {:>12} {:>12} {:>12} {:>12}  {:<}", "seg", "nodes", "GFLOPs", "weights", "peak act.", "est. memory", "out bytes", "first .. last node");
    for (i, s) in plan.segments.iter().enumerate() {
        let out_bytes = plan.boundaries.get(i).map(|b| b.bytes).unwrap_or_else(|| s.outputs.iter().map(|t| t.bytes()).sum());
        println!(
            "{:>3} {:>6} {:>12.3} {:>12} {:>12} {:>12} {:>12}  {} .. {}",
            s.index,
            s.nodes,
            s.flops as f64 / 1e9,
            mib(s.weight_bytes),
            mib(s.peak_activation_bytes),
            mib(s.estimated_memory),
            out_bytes,
            truncate(&s.first_node, 30),
            truncate(&s.last_node, 30)
        );
    }
    for b in &plan.boundaries {
        println!("boundary after segment {}: {} bytes in {} tensor(s): {}", b.after_segment, b.bytes, b.tensors.len(), b.tensors.join(", "));
    }
    println!("estimated latency {:.1} ms, slowest stage {:.1} ms", plan.latency_seconds * 1e3, plan.slowest_stage_seconds * 1e3);
}
