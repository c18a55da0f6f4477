//! `netless bench MODEL --shards --max-memory LIMIT`: a model whose largest nodes do not fit the limit,
//! split with those nodes cut into parallel shards, measured side by side in one run: the split's time,
//! its functions and groups, the bytes crossing each stage boundary, and the latency of the unsplit
//! model in native tract against the wasm pipeline with each group's shards run concurrently and one
//! after another. On `c` cores concurrency can gain at most `c`x on a group.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Timing, timed};
use crate::native::NativeModel;
use crate::onnx::graph::InputShapes;
use crate::package::artifacts;
use crate::pipeline::{self, Mode, Pipeline};
use crate::plan::{CostModel, MemoryModel, Objective, Request};
use crate::runtime::Engine;
use crate::split::{Split, SplitOptions};
use crate::verify::{self, compare};
use crate::{Error, Result};

/// What to measure.
#[derive(Clone, Debug)]
pub struct ShardBenchOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// The memory limit of one function.
    pub max_memory: u64,
    /// The most shards a node that fits is cut into for speed ([`CostModel::parallel_shards`]).
    pub parallel_shards: u64,
    /// Input shapes for the split.
    pub input_shapes: InputShapes,
    /// Timed runs per configuration, after one warm-up.
    pub runs: usize,
    /// The generic segment runtime.
    pub runtime_wasm: Vec<u8>,
    /// Where the split is written.
    pub out: PathBuf,
}

/// A shard group of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct GroupFacts {
    /// The node cut.
    pub node: String,
    /// Its operator.
    pub op: String,
    /// How it is cut (`columns`, `rows`...).
    pub strategy: String,
    /// Its shards.
    pub shards: usize,
    /// The node's estimate whole, bytes.
    pub unsharded_memory: u64,
    /// The largest shard's estimate, bytes.
    pub largest_shard_memory: u64,
}

/// One stage's wall time: a segment, or a group's shards from the first call to the last answer.
#[derive(Clone, Debug, Serialize)]
pub struct StageTime {
    /// Its functions (shards of a group, or 1).
    pub functions: usize,
    /// Median ms with the shards concurrent.
    pub concurrent_ms: f64,
    /// Median ms with the shards one after another.
    pub sequential_ms: f64,
}

/// The measurements.
#[derive(Clone, Debug, Serialize)]
pub struct ShardBench {
    /// The model's file.
    pub model: String,
    /// The limit, bytes.
    pub max_memory: u64,
    /// Cores available to this process.
    pub cores: usize,
    /// `Split::new` + `write`, ms.
    pub split_ms: f64,
    /// Functions (segments and shards) in the plan.
    pub functions: usize,
    /// Stages in the plan.
    pub stages: usize,
    /// The groups.
    pub groups: Vec<GroupFacts>,
    /// Bytes in flight after each stage but the last.
    pub boundary_bytes: Vec<u64>,
    /// The unsplit model in native tract.
    pub native: Timing,
    /// The wasm pipeline, shards of a group concurrently.
    pub concurrent: Timing,
    /// The wasm pipeline, shards one after another.
    pub sequential: Timing,
    /// Each stage of the plan: its shards (1 for a segment) and its median wall time in both runs.
    pub stage_times: Vec<StageTime>,
    /// Whether both wasm runs reproduced native tract within 1e-4.
    pub outputs_match: bool,
}

/// Splits, builds and times the model.
pub fn run(options: &ShardBenchOptions, engine: &Engine, log: &mut dyn FnMut(&str)) -> Result<ShardBench> {
    let split_options = SplitOptions {
        request: Request { max_memory: options.max_memory, segments: None, objective: Objective::Latency, max_segments: 64 },
        input_shapes: options.input_shapes.clone(),
        memory: MemoryModel::default(),
        cost: CostModel { parallel_shards: options.parallel_shards, ..CostModel::default() },
    };
    log(&format!("splitting {} under {} bytes", options.model.display(), options.max_memory));
    let (written, split_ms) = timed(|| Split::new(&options.model, &split_options).and_then(|s| Ok((s.write(&options.out)?, s))));
    let (plan, split) = written?;
    if !plan.has_groups() {
        return Err(Error::Infeasible(format!(
            "every node of {} fits {} bytes whole: nothing is cut into shards (lower --max-memory)",
            options.model.display(),
            options.max_memory
        )));
    }
    log(&format!("building {} functions", plan.segments.len()));
    artifacts::build(&options.out, &plan, &options.runtime_wasm)?;
    let inputs = verify::load_inputs(&plan.model.inputs, &[])?;
    let wire = plan.model.inputs.iter().map(|s| Ok((s.name.clone(), pipeline::to_wire(s, &inputs[&s.name])?))).collect::<Result<HashMap<_, _>>>()?;
    let times = |f: &mut dyn FnMut() -> Result<()>| -> Result<Timing> {
        f()?;
        let mut ms = Vec::with_capacity(options.runs);
        for _ in 0..options.runs {
            let (result, t) = timed(&mut *f);
            result?;
            ms.push(t);
        }
        Ok(Timing::from_ms(&ms).expect("at least one finite run"))
    };

    log("native tract, unsplit");
    let native_model = NativeModel::new(&split.model.proto, "the unsplit model", &plan.model.inputs)?;
    let expected = native_model.run(&inputs)?;
    let native = times(&mut || native_model.run(&inputs).map(drop))?;
    drop(native_model);

    let mut pipeline = Pipeline::load(engine, &options.out, Mode::Segments, Duration::from_secs(600))?;
    let mut outputs_match = true;
    let mut timing = |pipeline: &mut Pipeline| -> Result<(Timing, Vec<f64>)> {
        let got = pipeline.infer(&wire)?;
        for ((name, want), got) in expected.iter().zip(&got) {
            outputs_match &= compare(name, want, &pipeline::from_wire(got)?, 1e-4)?.passed;
        }
        let mut per_stage: Vec<Vec<f64>> = vec![Vec::new(); pipeline.plan().stages.len()];
        let total = times(&mut || {
            pipeline.infer(&wire)?;
            per_stage.iter_mut().zip(pipeline.stage_ms()).for_each(|(ms, &t)| ms.push(t));
            Ok(())
        })?;
        // `times` warms up with one call first, which is left out as it is from `total`.
        Ok((total, per_stage.iter().map(|ms| Timing::from_ms(&ms[1..]).map_or(f64::NAN, |t| t.median_ms)).collect()))
    };
    log("the wasm pipeline, shards concurrently");
    let (concurrent, concurrent_stages) = timing(&mut pipeline)?;
    log("the wasm pipeline, shards one after another");
    pipeline.set_concurrent_shards(false);
    let (sequential, sequential_stages) = timing(&mut pipeline)?;
    let stage_times = plan
        .stages
        .iter()
        .zip(concurrent_stages.iter().zip(&sequential_stages))
        .map(|(stage, (&concurrent_ms, &sequential_ms))| StageTime { functions: stage.segments.len(), concurrent_ms, sequential_ms })
        .collect();

    let groups = plan
        .stages
        .iter()
        .filter_map(|stage| {
            let group = stage.group.as_ref()?;
            Some(GroupFacts {
                node: group.node.clone(),
                op: group.op.clone(),
                strategy: format!("{:?}", group.strategy).to_lowercase(),
                shards: stage.segments.len(),
                unsharded_memory: group.unsharded_memory,
                largest_shard_memory: stage.segments.iter().map(|&s| plan.segments[s].estimated_memory).max().unwrap_or(0),
            })
        })
        .collect();
    Ok(ShardBench {
        model: options.model.display().to_string(),
        max_memory: options.max_memory,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        split_ms,
        functions: plan.segments.len(),
        stages: plan.stages.len(),
        groups,
        boundary_bytes: plan.boundaries.iter().map(|b| b.bytes).collect(),
        native,
        concurrent,
        sequential,
        stage_times,
        outputs_match,
    })
}

impl ShardBench {
    /// The report as markdown tables.
    pub fn to_markdown(&self) -> String {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
        let mut md = format!(
            "## {} under {} ({} cores)\n\nsplit in {:.0} ms: {} functions in {} stages; outputs {} native tract within 1e-4\n\n",
            self.model,
            mib(self.max_memory),
            self.cores,
            self.split_ms,
            self.functions,
            self.stages,
            if self.outputs_match { "match" } else { "DO NOT match" }
        );
        md.push_str("| node | op | cut by | shards | whole (est.) | largest shard (est.) |\n|---|---|---|---:|---:|---:|\n");
        for g in &self.groups {
            md.push_str(&format!("| {} | {} | {} | {} | {} | {} |\n", g.node, g.op, g.strategy, g.shards, mib(g.unsharded_memory), mib(g.largest_shard_memory)));
        }
        let bytes: Vec<String> = self.boundary_bytes.iter().map(|b| b.to_string()).collect();
        md.push_str(&format!("\nbytes after each stage: {}\n\n", bytes.join(", ")));
        md.push_str("| run | median ms | min ms | vs native |\n|---|---:|---:|---:|\n");
        for (name, t) in [("native tract, unsplit", &self.native), ("wasm, shards concurrently", &self.concurrent), ("wasm, shards one after another", &self.sequential)] {
            md.push_str(&format!("| {name} | {:.1} | {:.1} | {:.2}x |\n", t.median_ms, t.min_ms, t.median_ms / self.native.median_ms));
        }
        md.push_str(&format!("\nconcurrent vs sequential: {:.2}x faster\n", self.sequential.median_ms / self.concurrent.median_ms));
        md.push_str("\n| stage | functions | concurrent ms | one after another ms | gain |\n|---:|---:|---:|---:|---:|\n");
        for (i, s) in self.stage_times.iter().enumerate() {
            md.push_str(&format!("| {i} | {} | {:.1} | {:.1} | {:.2}x |\n", s.functions, s.concurrent_ms, s.sequential_ms, s.sequential_ms / s.concurrent_ms));
        }
        md
    }
}
