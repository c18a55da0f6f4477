//! `netless bench`: one model measured side by side in onnxruntime (when Python has it), native tract,
//! and the wasm runtime unsplit (K = 1) and split into K segments, run segment by segment and composed.
//!
//! For every K the model is split into `OUT/kK/`, built and composed, then loaded, warmed up once and
//! timed; outputs are checked against native tract. The report also holds build times, component sizes,
//! the cold-start breakdown of every segment (compile, precompiled load, data component, instantiation,
//! model preparation) and each segment's peak linear memory against its planned budget.
//! [`Report::write`] saves it as `report.md`, `report.json` and `chart.svg`.

mod reference;
mod render;
pub mod hops;
pub mod serve;
pub mod shards;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tract_onnx::prelude::Tensor as TractTensor;

use crate::native::NativeModel;
use crate::onnx::graph::InputShapes;
use crate::onnx::{Graph, OnnxModel};
use crate::package::{artifacts, data_component};
use crate::pipeline::{self, Mode, Pipeline};
use crate::plan::file::TensorSpec;
use crate::plan::{CostModel, MemoryModel, Objective, Request};
use crate::runtime::{Engine, Limits, Runtime};
use crate::split::{Split, SplitOptions};
use crate::{Error, Result, emit, verify};

/// Relative error accepted between any runtime's outputs and native tract's.
pub const TOLERANCE: f64 = 1e-4;

/// What to measure and where to write.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Segment counts to measure; K = 1 (the wasm runtime unsplit) is always added.
    pub segments: Vec<usize>,
    /// Memory limit of one segment given to the partitioner.
    pub max_memory: u64,
    /// Input shapes given by the user.
    pub input_shapes: InputShapes,
    /// Timed inferences per configuration (after one warm-up); 0 counts as 1.
    pub runs: usize,
    /// Output folder: `kK/` splits, `inputs/`, and the report files.
    pub out: PathBuf,
    /// The generic segment runtime component (`netless_segment.wasm`).
    pub runtime_wasm: PathBuf,
    /// The pair-combinator component (`netless_composer.wasm`).
    pub composer_wasm: PathBuf,
    /// The Python interpreter used for onnxruntime.
    pub python: String,
    /// The Node.js executable used for onnxruntime-web.
    pub node: String,
    /// The folder the npm package `onnxruntime-web` resolves from (where `npm install` put it).
    pub ort_web: PathBuf,
    /// Deadline of one call into the wasm runtime.
    pub deadline: Duration,
}

/// Latency statistics of repeated runs, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// Number of timed runs.
    pub runs: usize,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Median run.
    pub median_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
}

impl Timing {
    /// Statistics of the given run times in milliseconds; `None` when there are none.
    pub fn from_ms(times: &[f64]) -> Option<Timing> {
        if times.is_empty() || times.iter().any(|t| !t.is_finite()) {
            return None;
        }
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Timing {
            runs: n,
            mean_ms: sorted.iter().sum::<f64>() / n as f64,
            min_ms: sorted[0],
            median_ms: median,
            max_ms: sorted[n - 1],
        })
    }
}

/// One output compared with native tract's.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The output's name.
    pub output: String,
    /// Largest absolute difference (infinite when shapes differ or the output is missing).
    pub max_abs_diff: f64,
    /// Normwise relative error, as in `netless verify`.
    pub relative_error: f64,
    /// Within [`TOLERANCE`] (exact for integer outputs).
    pub passed: bool,
    /// Why the comparison could not be made, if it could not.
    pub error: Option<String>,
}

/// Where and when the measurements were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model from /proc/cpuinfo.
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Widest x86 SIMD extension native code may use (`avx512f`, `avx2`, ...).
    pub native_simd: String,
    /// /proc/loadavg when the bench started.
    pub load_before: String,
    /// /proc/loadavg when it ended.
    pub load_after: String,
}

/// A reference engine (onnxruntime, onnxruntime-web), unsplit, one thread.
#[derive(Clone, Debug, Serialize)]
pub struct OrtResult {
    /// The engine's version, when it ran.
    pub version: Option<String>,
    /// Session creation, ms.
    pub prepare_ms: Option<f64>,
    /// Timed runs, when it ran.
    pub timing: Option<Timing>,
    /// Its outputs against native tract's.
    pub checks: Vec<Check>,
    /// Why it did not run ("n/a"), if it did not.
    pub unavailable: Option<String>,
}

/// Native tract, unsplit, one thread (tract's default).
#[derive(Clone, Debug, Serialize)]
pub struct NativeResult {
    /// Translating and optimising the model, ms.
    pub prepare_ms: f64,
    /// Timed runs.
    pub timing: Timing,
}

/// The generic runtime component's cold-start costs.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeCost {
    /// Size of `netless_segment.wasm`.
    pub component_bytes: u64,
    /// `Engine::component` with an empty cache: Cranelift compile, cache write and load, ms.
    pub compile_ms: f64,
    /// `Engine::component` again, with the cache populated: deserialising the compiled code, ms.
    pub precompiled_load_ms: f64,
}

/// One way of running a K-segment split (segment by segment, or the composed pipeline).
#[derive(Clone, Debug, Serialize)]
pub struct ModeResult {
    /// `Pipeline::load`, ms (the composed pipeline's first load includes compiling it).
    pub load_ms: Option<f64>,
    /// Timed inferences after one warm-up.
    pub timing: Option<Timing>,
    /// Outputs against native tract.
    pub checks: Vec<Check>,
    /// Every output matched.
    pub passed: bool,
    /// Peak linear memory of each stage (one per segment, or one for the composed pipeline).
    pub peak_memory: Vec<u64>,
    /// Memory budget of each stage.
    pub budget: Vec<u64>,
    /// What failed, if anything did.
    pub error: Option<String>,
}

/// One segment of a K-segment split.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentResult {
    /// Its index.
    pub index: usize,
    /// ONNX nodes in it.
    pub nodes: usize,
    /// Size of its ONNX blob.
    pub blob_bytes: u64,
    /// Size of `seg-NN.wasm` (runtime and data composed).
    pub component_bytes: u64,
    /// Size of `seg-NN.data.wasm`.
    pub data_bytes: u64,
    /// Planned memory budget (`estimated_memory`).
    pub budget: u64,
    /// Peak linear memory measured while running it segment by segment.
    pub peak_memory: Option<u64>,
    /// Building its data component from the blob, ms.
    pub data_build_ms: Option<f64>,
    /// Loading the data component's compiled code from the warm cache, ms.
    pub data_load_ms: Option<f64>,
    /// Instantiating runtime and data and linking them (`SegmentStats::instantiate`), ms.
    pub instantiate_ms: Option<f64>,
    /// The first call into the guest, which reads and prepares the model (`SegmentStats::first_call`), ms.
    pub prepare_ms: Option<f64>,
    /// The whole `Engine::load_segment` with a warm compile cache, ms.
    pub load_segment_ms: Option<f64>,
    /// Cold start of a fresh process: the runtime's precompiled load plus `load_segment`, ms.
    pub cold_start_ms: Option<f64>,
    /// Cold start with the data component prebuilt (as `netless build` leaves it): runtime precompiled
    /// load + data precompiled load + instantiation + preparation, ms.
    pub prebuilt_cold_start_ms: Option<f64>,
    /// The same segment pre-initialised (`netless build` without `--lazy`).
    pub preinitialized: Option<PreinitResult>,
    /// What failed, if anything did.
    pub error: Option<String>,
}

/// Cold start of a pre-initialised segment (its model prepared inside `seg-NN.wasm`).
#[derive(Clone, Debug, Serialize)]
pub struct PreinitResult {
    /// Size of the pre-initialised `seg-NN.wasm`.
    pub component_bytes: u64,
    /// Its first load: Cranelift compile, with the function cache warm from the runtime, ms.
    pub compile_ms: f64,
    /// Loading its compiled code from the cache (found by file, not rehashed), ms.
    pub load_ms: f64,
    /// Instantiation, which maps the snapshot's memory copy-on-write, ms.
    pub instantiate_ms: f64,
    /// The first call (`info`): nothing is left to prepare, ms.
    pub first_call_ms: f64,
    /// Cold start of a fresh process from precompiled code: load + instantiate + first call, ms.
    pub cold_start_ms: f64,
    /// First inference of a fresh instance (it faults in the snapshot's pages), ms.
    pub first_infer_ms: f64,
    /// The next inference of that instance, ms.
    pub warm_infer_ms: f64,
    /// Peak linear memory of that instance.
    pub peak_memory: u64,
}

/// Everything measured for one K.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigResult {
    /// Segment count asked for.
    pub k: usize,
    /// Folder of the split.
    pub dir: String,
    /// Splitting and writing the segment ONNX files, ms.
    pub split_ms: Option<f64>,
    /// `netless build`, ms.
    pub build_ms: Option<f64>,
    /// `netless compose`, ms.
    pub compose_ms: Option<f64>,
    /// Size of `components/runtime.wasm`.
    pub runtime_bytes: Option<u64>,
    /// Size of `pipeline.wasm`.
    pub pipeline_bytes: Option<u64>,
    /// Segments run one by one by the host.
    pub segments_mode: Option<ModeResult>,
    /// The composed `pipeline.wasm`.
    pub composed: Option<ModeResult>,
    /// Pre-initialising every segment (`artifacts::preinitialize`), ms.
    pub preinit_ms: Option<f64>,
    /// Segments run one by one, pre-initialised.
    pub preinitialized: Option<ModeResult>,
    /// Per-segment sizes, memory and cold start.
    pub segments: Vec<SegmentResult>,
    /// What stopped this configuration early, if anything did.
    pub error: Option<String>,
}

/// A ratio of two mean (and min) latencies.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// What over what.
    pub name: String,
    /// Ratio of means.
    pub mean: Option<f64>,
    /// Ratio of fastest runs.
    pub min: Option<f64>,
}

/// A target of the issue and whether it is met.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The target as stated.
    pub name: String,
    /// The measured value (a ratio, or ms).
    pub measured: Option<f64>,
    /// The threshold.
    pub goal: f64,
    /// Unit of `measured` and `goal`: `x` (a ratio) or `ms`.
    pub unit: String,
    /// Whether it is met (`None` when not measured).
    pub met: Option<bool>,
    /// How `measured` was obtained.
    pub note: String,
}

/// Where native tract and the wasm runtime spend one inference of the unsplit model, by operator of
/// tract's optimised plan (each plan is optimised for its own target, so node counts may differ).
#[derive(Clone, Debug, Serialize)]
pub struct OperatorTime {
    /// tract's operator name.
    pub op: String,
    /// Nodes of that operator in the native plan.
    pub native_nodes: usize,
    /// Nodes of that operator in the wasm plan.
    pub wasm_nodes: usize,
    /// Mean time per inference in native tract, ms.
    pub native_ms: f64,
    /// Mean time per inference in the wasm runtime, ms.
    pub wasm_ms: f64,
}

/// The whole benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Model name (file stem).
    pub model: String,
    /// Model path.
    pub model_path: String,
    /// Model file size.
    pub model_bytes: u64,
    /// Weight bytes.
    pub weight_bytes: u64,
    /// Total GFLOPs per inference.
    pub gflops: f64,
    /// Input tensors fed to every runtime (generated deterministically).
    pub inputs: Vec<TensorSpec>,
    /// Timed runs per configuration.
    pub runs: usize,
    /// `--max-memory` given to the partitioner.
    pub max_memory: u64,
    /// The machine.
    pub machine: Machine,
    /// onnxruntime, 1 thread.
    pub onnxruntime: OrtResult,
    /// onnxruntime-web's wasm backend on Node.js, 1 thread.
    pub onnxruntime_web: OrtResult,
    /// Native tract.
    pub native: NativeResult,
    /// The generic runtime component.
    pub runtime: RuntimeCost,
    /// One entry per K, ascending.
    pub configs: Vec<ConfigResult>,
    /// Latency ratios.
    pub ratios: Vec<Ratio>,
    /// The targets.
    pub targets: Vec<Target>,
    /// One inference of the unsplit model in native tract and in the wasm runtime, by operator.
    pub operators: Vec<OperatorTime>,
}

impl Report {
    /// What went wrong in the wasm runtime: configurations that could not be built or run, outputs that do
    /// not match native tract, segments that did not load. Empty when everything ran and matched.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for c in &self.configs {
            if let Some(e) = &c.error {
                failures.push(format!("K={}: {e}", c.k));
            }
            for (how, mode) in [
                ("segment by segment", &c.segments_mode),
                ("composed", &c.composed),
            ] {
                let Some(mode) = mode else { continue };
                if let Some(e) = &mode.error {
                    failures.push(format!("K={} {how}: {e}", c.k));
                }
                for check in mode.checks.iter().filter(|c| !c.passed) {
                    failures.push(format!(
                        "K={} {how}: output `{}` differs from native tract (relative error {:e})",
                        c.k, check.output, check.relative_error
                    ));
                }
            }
            for s in &c.segments {
                if let Some(e) = &s.error {
                    failures.push(format!("K={} segment {}: {e}", c.k, s.index));
                }
            }
        }
        failures
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let started = Instant::now();
    let value = f();
    (value, ms(started.elapsed()))
}

/// Runs the whole benchmark; `log` receives one line per step.
pub fn run(options: &BenchOptions, log: &mut dyn FnMut(&str)) -> Result<Report> {
    if let Some(k) = options.segments.iter().find(|&&k| k == 0) {
        return Err(Error::Infeasible(format!(
            "a split into {k} segments is not possible; segment counts start at 1"
        )));
    }
    let options = &BenchOptions {
        runs: options.runs.max(1),
        ..options.clone()
    };
    let mut ks = options.segments.clone();
    ks.push(1);
    ks.sort_unstable();
    ks.dedup();
    let load_before = load_average();
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| Error::Package {
            what: what.into(),
            reason: format!(
                "{}: {e} (build it with scripts/build-components.sh)",
                path.display()
            ),
        })
    };
    let runtime_wasm = read(&options.runtime_wasm, "the segment runtime")?;
    let composer_wasm = read(&options.composer_wasm, "the composer")?;

    log(&format!("loading {}", options.model.display()));
    let model = OnnxModel::load(&options.model)?;
    let graph = Graph::analyse(&model, &options.input_shapes)?;
    let input_specs: Vec<TensorSpec> = graph
        .inputs
        .iter()
        .map(|&t| emit::tensor_spec(&graph, t))
        .collect();
    let output_specs: Vec<TensorSpec> = graph
        .outputs
        .iter()
        .map(|&t| emit::tensor_spec(&graph, t))
        .collect();
    let (weight_bytes, flops) = (graph.weight_bytes(), graph.flops());
    drop(graph);
    let inputs = verify::load_inputs(&input_specs, &[])?;
    let wire = input_specs
        .iter()
        .map(|spec| {
            Ok((
                spec.name.clone(),
                pipeline::to_wire(spec, &inputs[&spec.name])?,
            ))
        })
        .collect::<Result<HashMap<_, _>>>()?;

    log("native tract: preparing and timing");
    let (native, prepare_ms) =
        timed(|| NativeModel::new(&model.proto, "the unsplit model", &input_specs));
    let native = native?;
    let expected: Vec<(String, TractTensor)> = native.run(&inputs)?;
    let mut times = Vec::with_capacity(options.runs);
    for _ in 0..options.runs {
        let (result, t) = timed(|| native.run(&inputs));
        result?;
        times.push(t);
    }
    let mut native_profile = Vec::new();
    for _ in 0..options.runs {
        native_profile.extend(native.profile(&inputs)?);
    }
    drop(native);
    let native = NativeResult {
        prepare_ms,
        timing: Timing::from_ms(&times)
            .ok_or_else(|| Error::Infeasible("no native timings".into()))?,
    };

    log("onnxruntime (1 thread): timing");
    let feeds = reference::feeds(options, &input_specs, &inputs);
    let onnxruntime = reference::onnxruntime(options, &feeds, &output_specs, &expected);
    log("onnxruntime-web (wasm, 1 thread): timing");
    let onnxruntime_web = reference::onnxruntime_web(options, &feeds, &output_specs, &expected);

    log("wasm runtime: compiling with an empty cache");
    let cache = out.join("compile-cache");
    if cache.exists() {
        std::fs::remove_dir_all(&cache).map_err(Error::io(&cache))?;
    }
    let engine = Engine::new(&cache)?;
    let (compiled, compile_ms) = timed(|| engine.component(&runtime_wasm));
    compiled?;
    let (runtime, precompiled_load_ms) = timed(|| engine.load_runtime(&runtime_wasm));
    let runtime = runtime?;
    let runtime_cost = RuntimeCost {
        component_bytes: runtime_wasm.len() as u64,
        compile_ms,
        precompiled_load_ms,
    };

    let mut configs = Vec::new();
    for &k in &ks {
        log(&format!("K={k}: split, build, compose, run"));
        let mut config = ConfigResult {
            k,
            dir: out.join(format!("k{k}")).display().to_string(),
            split_ms: None,
            build_ms: None,
            compose_ms: None,
            runtime_bytes: None,
            pipeline_bytes: None,
            segments_mode: None,
            composed: None,
            preinit_ms: None,
            preinitialized: None,
            segments: vec![],
            error: None,
        };
        let setup = Setup {
            options,
            engine: &engine,
            runtime: &runtime,
            runtime_wasm: &runtime_wasm,
            composer_wasm: &composer_wasm,
        };
        if let Err(e) = setup.config(&mut config, &wire, &expected, precompiled_load_ms, log) {
            log(&format!("K={k}: {e}"));
            config.error = Some(e.to_string());
        }
        configs.push(config);
    }
    log("wasm unsplit: profiling by operator");
    let operators = match operator_breakdown(&engine, &runtime, &out.join("k1"), &wire, options, &native_profile) {
        Ok(operators) => operators,
        Err(e) => {
            log(&format!("profiling by operator: {e}"));
            Vec::new()
        }
    };
    drop(runtime);
    drop(engine);
    let _ = std::fs::remove_dir_all(&cache);

    let machine = Machine {
        cpu: cpu_model(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        native_simd: native_simd(),
        load_before,
        load_after: load_average(),
    };
    let (ratios, targets) = summarise(&native, [&onnxruntime, &onnxruntime_web], &runtime_cost, &configs);
    Ok(Report {
        model: model.name(),
        model_path: model.path.display().to_string(),
        model_bytes: model.file_bytes,
        weight_bytes,
        gflops: flops as f64 / 1e9,
        inputs: input_specs,
        runs: options.runs,
        max_memory: options.max_memory,
        machine,
        onnxruntime,
        onnxruntime_web,
        native,
        runtime: runtime_cost,
        configs,
        ratios,
        targets,
        operators,
    })
}

/// Profiles the K=1 segment in the wasm runtime (`options.runs` inferences after a warm-up) and joins
/// it by operator with native tract's profile of as many runs.
fn operator_breakdown(
    engine: &Engine,
    runtime: &Runtime,
    k1: &Path,
    wire: &HashMap<String, crate::runtime::Tensor>,
    options: &BenchOptions,
    native: &[(String, u64)],
) -> Result<Vec<OperatorTime>> {
    let plan = crate::plan::Plan::load(k1)?;
    let blob = plan.read_segment(k1, 0)?;
    let limits = Limits { memory_bytes: plan.segments[0].estimated_memory, deadline: options.deadline };
    let stage = |cause| Error::Stage { index: 0, file: plan.segments[0].file.clone(), cause };
    let mut segment = engine.load_segment(runtime, &blob, limits).map_err(stage)?;
    let inputs: Vec<_> = segment.info().inputs.iter().filter_map(|spec| wire.get(&spec.name).cloned()).collect();
    segment.profile(inputs.clone()).map_err(stage)?;
    let mut wasm = Vec::new();
    for _ in 0..options.runs {
        wasm.extend(segment.profile(inputs.clone()).map_err(stage)?.into_iter().map(|t| (t.op, t.nanos)));
    }
    let runs = options.runs.max(1) as f64;
    let mut by_op: Vec<OperatorTime> = Vec::new();
    for (side, times) in [(0, native), (1, wasm.as_slice())] {
        for (op, nanos) in times {
            let row = match by_op.iter().position(|r| &r.op == op) {
                Some(i) => &mut by_op[i],
                None => {
                    by_op.push(OperatorTime { op: op.clone(), native_nodes: 0, wasm_nodes: 0, native_ms: 0.0, wasm_ms: 0.0 });
                    by_op.last_mut().expect("just pushed")
                }
            };
            let ms = *nanos as f64 / 1e6 / runs;
            match side {
                0 => (row.native_nodes, row.native_ms) = (row.native_nodes + 1, row.native_ms + ms),
                _ => (row.wasm_nodes, row.wasm_ms) = (row.wasm_nodes + 1, row.wasm_ms + ms),
            }
        }
    }
    for row in &mut by_op {
        row.native_nodes /= options.runs.max(1);
        row.wasm_nodes /= options.runs.max(1);
    }
    by_op.sort_by(|a, b| b.wasm_ms.total_cmp(&a.wasm_ms));
    Ok(by_op)
}

/// What every configuration shares.
struct Setup<'a> {
    options: &'a BenchOptions,
    engine: &'a Engine,
    runtime: &'a Runtime,
    runtime_wasm: &'a [u8],
    composer_wasm: &'a [u8],
}

impl Setup<'_> {
    /// Splits, builds, composes, runs both modes and measures every segment's cold start; a failure of one
    /// mode or segment is recorded and the rest goes on, a failure to produce the artifacts ends early.
    fn config(
        &self,
        config: &mut ConfigResult,
        wire: &HashMap<String, crate::runtime::Tensor>,
        expected: &[(String, TractTensor)],
        runtime_load_ms: f64,
        log: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let k = config.k;
        let dir = PathBuf::from(&config.dir);
        let split_options = SplitOptions {
            request: Request {
                max_memory: self.options.max_memory,
                segments: Some(k),
                objective: Objective::Throughput,
                max_segments: k,
            },
            input_shapes: self.options.input_shapes.clone(),
            memory: MemoryModel::default(),
            cost: CostModel::default(),
        };
        let (plan, split_ms) =
            timed(|| Split::new(&self.options.model, &split_options).and_then(|s| s.write(&dir)));
        let plan = plan?;
        config.split_ms = Some(split_ms);
        let (built, build_ms) = timed(|| artifacts::build(&dir, &plan, self.runtime_wasm));
        let built = built?;
        config.build_ms = Some(build_ms);
        let (composed, compose_ms) =
            timed(|| artifacts::compose_pipeline(&dir, &plan, self.composer_wasm));
        let pipeline_path = composed?;
        config.compose_ms = Some(compose_ms);
        config.runtime_bytes = file_size(&artifacts::runtime_path(&dir));
        config.pipeline_bytes = file_size(&pipeline_path);

        log(&format!("K={k}: segment by segment"));
        config.segments_mode = Some(self.mode(&dir, Mode::Segments, wire, expected));
        log(&format!(
            "K={k}: composed (first load compiles pipeline.wasm)"
        ));
        config.composed = Some(self.mode(&dir, Mode::Composed, wire, expected));

        log(&format!("K={k}: cold start of each segment"));
        for seg in &plan.segments {
            let sizes = built.iter().find(|b| b.index == seg.index);
            let mut result = SegmentResult {
                index: seg.index,
                nodes: seg.nodes,
                blob_bytes: seg.bytes,
                component_bytes: sizes.map_or(0, |b| b.component_bytes),
                data_bytes: sizes.map_or(0, |b| b.data_bytes),
                budget: seg.estimated_memory,
                peak_memory: config
                    .segments_mode
                    .as_ref()
                    .and_then(|m| m.peak_memory.get(seg.index).copied()),
                data_build_ms: None,
                data_load_ms: None,
                instantiate_ms: None,
                prepare_ms: None,
                load_segment_ms: None,
                cold_start_ms: None,
                prebuilt_cold_start_ms: None,
                preinitialized: None,
                error: None,
            };
            if let Err(e) = self.cold_start(&dir, &plan, seg.index, runtime_load_ms, &mut result) {
                result.error = Some(e.to_string());
            }
            config.segments.push(result);
        }

        log(&format!("K={k}: pre-initialising every segment, then its cold start"));
        let (record, preinit_ms) = timed(|| artifacts::preinitialize(&dir, &plan, self.engine));
        let record = record?;
        config.preinit_ms = Some(preinit_ms);
        for (seg, result) in plan.segments.iter().zip(&mut config.segments) {
            let bytes = record.segments.iter().find(|s| s.index == seg.index).map_or(0, |s| s.component_bytes);
            match self.preinit_cold_start(&dir, seg, bytes) {
                Ok(measured) => result.preinitialized = Some(measured),
                Err(e) => result.error = Some(e.to_string()),
            }
        }
        log(&format!("K={k}: segment by segment, pre-initialised"));
        config.preinitialized = Some(self.mode(&dir, Mode::Segments, wire, expected));
        Ok(())
    }

    fn preinit_cold_start(&self, dir: &Path, seg: &crate::plan::file::Segment, component_bytes: u64) -> Result<PreinitResult> {
        let path = artifacts::segment_path(dir, seg.index);
        let limits = Limits { memory_bytes: seg.estimated_memory, deadline: self.options.deadline };
        let stage = |cause| Error::Stage { index: seg.index, file: seg.file.clone(), cause };
        let (compiled, compile_ms) = timed(|| self.engine.composed_factory(&path, limits));
        compiled.map_err(stage)?;
        let (factory, load_ms) = timed(|| self.engine.composed_factory(&path, limits));
        let mut segment = factory.and_then(|f| f.start()).map_err(stage)?;
        let stats = segment.stats();
        let inputs: Vec<crate::runtime::Tensor> = segment
            .info()
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<u64> = spec.shape.iter().map(|d| d.unwrap_or(1)).collect();
                let count = shape.iter().product::<u64>() as usize;
                crate::runtime::Tensor { name: spec.name.clone(), dtype: spec.dtype, shape, data: vec![0; count * spec.dtype.size()] }
            })
            .collect();
        let (first, first_infer_ms) = timed(|| segment.infer(inputs.clone()));
        first.map_err(stage)?;
        let (warm, warm_infer_ms) = timed(|| segment.infer(inputs));
        warm.map_err(stage)?;
        let (instantiate_ms, first_call_ms) = (ms(stats.instantiate), ms(stats.first_call));
        Ok(PreinitResult {
            component_bytes,
            compile_ms,
            load_ms,
            instantiate_ms,
            first_call_ms,
            cold_start_ms: load_ms + instantiate_ms + first_call_ms,
            first_infer_ms,
            warm_infer_ms,
            peak_memory: segment.peak_memory(),
        })
    }

    fn cold_start(
        &self,
        dir: &Path,
        plan: &crate::plan::Plan,
        index: usize,
        runtime_load_ms: f64,
        result: &mut SegmentResult,
    ) -> Result<()> {
        let blob = plan.read_segment(dir, index)?;
        let what = format!("segment {index}");
        let (data, data_build_ms) = timed(|| data_component::build(&blob));
        let data = data.map_err(|e| Error::Package {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        result.data_build_ms = Some(data_build_ms);
        // Once to make sure the cache is warm (it is, after the pipeline ran), then timed.
        self.engine.component(&data)?;
        let (loaded, data_load_ms) = timed(|| self.engine.component(&data));
        loaded?;
        result.data_load_ms = Some(data_load_ms);
        let limits = Limits {
            memory_bytes: plan.segments[index].estimated_memory,
            deadline: self.options.deadline,
        };
        let (segment, load_ms) = timed(|| self.engine.load_segment(self.runtime, &blob, limits));
        let segment = segment.map_err(|cause| Error::Stage {
            index,
            file: plan.segments[index].file.clone(),
            cause,
        })?;
        let stats = segment.stats();
        result.instantiate_ms = Some(ms(stats.instantiate));
        result.prepare_ms = Some(ms(stats.first_call));
        result.load_segment_ms = Some(load_ms);
        result.cold_start_ms = Some(runtime_load_ms + load_ms);
        result.prebuilt_cold_start_ms =
            Some(runtime_load_ms + data_load_ms + ms(stats.instantiate) + ms(stats.first_call));
        Ok(())
    }

    fn mode(
        &self,
        dir: &Path,
        mode: Mode,
        wire: &HashMap<String, crate::runtime::Tensor>,
        expected: &[(String, TractTensor)],
    ) -> ModeResult {
        let mut result = ModeResult {
            load_ms: None,
            timing: None,
            checks: vec![],
            passed: false,
            peak_memory: vec![],
            budget: vec![],
            error: None,
        };
        let (loaded, load_ms) =
            timed(|| Pipeline::load(self.engine, dir, mode, self.options.deadline));
        let mut pipeline = match loaded {
            Ok(p) => p,
            Err(e) => {
                result.error = Some(e.to_string());
                return result;
            }
        };
        result.load_ms = Some(load_ms);
        let plan = pipeline.plan().clone();
        result.budget = match mode {
            Mode::Segments => plan.segments.iter().map(|s| s.estimated_memory).collect(),
            Mode::Composed => vec![pipeline::composed_budget(&plan)],
        };
        let outcome = (|| -> Result<()> {
            let outputs = pipeline.infer(wire)?;
            result.checks = check_wire(&outputs, expected);
            result.passed = !result.checks.is_empty() && result.checks.iter().all(|c| c.passed);
            let mut times = Vec::with_capacity(self.options.runs);
            for _ in 0..self.options.runs {
                let (r, t) = timed(|| pipeline.infer(wire));
                r?;
                times.push(t);
            }
            result.timing = Timing::from_ms(&times);
            Ok(())
        })();
        if let Err(e) = outcome {
            result.error = Some(e.to_string());
        }
        result.peak_memory = pipeline.stages().iter().map(|s| s.peak_memory()).collect();
        result
    }
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn failed_check(output: &str, reason: String) -> Check {
    Check {
        output: output.into(),
        max_abs_diff: f64::INFINITY,
        relative_error: f64::INFINITY,
        passed: false,
        error: Some(reason),
    }
}

fn check_one(name: &str, want: &TractTensor, got: Result<TractTensor>) -> Check {
    match got.and_then(|got| verify::compare(name, want, &got, TOLERANCE)) {
        Ok(c) => Check {
            output: name.into(),
            max_abs_diff: c.max_abs_diff,
            relative_error: c.relative_error,
            passed: c.passed,
            error: None,
        },
        Err(e) => failed_check(name, e.to_string()),
    }
}

/// Wire outputs of the wasm runtime against native tract's, by name.
fn check_wire(
    outputs: &[crate::runtime::Tensor],
    expected: &[(String, TractTensor)],
) -> Vec<Check> {
    expected
        .iter()
        .map(
            |(name, want)| match outputs.iter().find(|o| &o.name == name) {
                Some(got) => check_one(name, want, pipeline::from_wire(got)),
                None => failed_check(name, "not returned".into()),
            },
        )
        .collect()
}

fn summarise(
    native: &NativeResult,
    [ort, ort_web]: [&OrtResult; 2],
    runtime: &RuntimeCost,
    configs: &[ConfigResult],
) -> (Vec<Ratio>, Vec<Target>) {
    let ratio = |name: String, a: Option<&Timing>, b: Option<&Timing>| Ratio {
        name,
        mean: a.zip(b).map(|(a, b)| a.mean_ms / b.mean_ms),
        min: a.zip(b).map(|(a, b)| a.min_ms / b.min_ms),
    };
    fn timing(c: &ConfigResult, composed: bool) -> Option<&Timing> {
        let mode = if composed {
            c.composed.as_ref()
        } else {
            c.segments_mode.as_ref()
        };
        mode.and_then(|m| m.timing.as_ref())
    }
    let unsplit = configs
        .iter()
        .find(|c| c.k == 1)
        .and_then(|c| timing(c, false));
    let mut ratios = vec![
        ratio(
            "wasm unsplit / native tract".into(),
            unsplit,
            Some(&native.timing),
        ),
        ratio(
            "native tract / onnxruntime".into(),
            Some(&native.timing),
            ort.timing.as_ref(),
        ),
        ratio(
            "wasm unsplit / onnxruntime".into(),
            unsplit,
            ort.timing.as_ref(),
        ),
        ratio("wasm unsplit / onnxruntime-web".into(), unsplit, ort_web.timing.as_ref()),
        ratio("onnxruntime-web / native tract".into(), ort_web.timing.as_ref(), Some(&native.timing)),
    ];
    for c in configs {
        ratios.push(ratio(
            format!("wasm K={} segments / wasm unsplit", c.k),
            timing(c, false),
            unsplit,
        ));
        ratios.push(ratio(
            format!("wasm K={} composed / wasm unsplit", c.k),
            timing(c, true),
            unsplit,
        ));
    }
    let target = |name: String, measured: Option<f64>, goal: f64, note: String| {
        let unit = if name.starts_with("cold start") {
            "ms"
        } else {
            "x"
        }
        .to_string();
        let met = measured.map(|m| if unit == "ms" { m < goal } else { m <= goal });
        Target {
            met,
            name,
            measured,
            goal,
            unit,
            note,
        }
    };
    let mut targets = vec![
        target("wasm unsplit within 1.3x of native tract".into(), ratios[0].mean, 1.3, "ratio of means, K=1 segment by segment".into()),
        target(
            "wasm unsplit faster than onnxruntime-web".into(),
            ratios[3].mean,
            1.0,
            ort_web.unavailable.clone().unwrap_or_else(|| "ratio of means, K=1 segment by segment".into()),
        ),
    ];
    for c in configs.iter().filter(|c| c.k > 1) {
        for composed in [false, true] {
            let how = if composed {
                "composed"
            } else {
                "segment by segment"
            };
            let r = ratio(String::new(), timing(c, composed), unsplit);
            targets.push(target(
                format!("K={} ({how}) within 1.1x of wasm unsplit", c.k),
                r.mean,
                1.1,
                "ratio of means".into(),
            ));
        }
    }
    let prebuilt: Vec<f64> = configs
        .iter()
        .flat_map(|c| &c.segments)
        .filter_map(|s| s.prebuilt_cold_start_ms)
        .collect();
    let fastest_prebuilt = prebuilt.iter().copied().reduce(f64::min);
    let slowest_prebuilt = prebuilt.iter().copied().reduce(f64::max);
    let worst = configs
        .iter()
        .flat_map(|c| &c.segments)
        .filter_map(|s| s.cold_start_ms)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let best = configs
        .iter()
        .flat_map(|c| &c.segments)
        .filter_map(|s| s.cold_start_ms)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
    let preinit: Vec<f64> = configs
        .iter()
        .flat_map(|c| &c.segments)
        .filter_map(|s| s.preinitialized.as_ref().map(|p| p.cold_start_ms))
        .collect();
    targets.push(target(
        "cold start of a segment under 20 ms including model preparation (pre-initialised)".into(),
        preinit.iter().copied().reduce(f64::max),
        20.0,
        format!(
            "slowest pre-initialised segment of any K: precompiled load + instantiation + first call; fastest {}",
            preinit.iter().copied().reduce(f64::min).map_or("n/a".into(), |b| format!("{b:.1} ms"))
        ),
    ));
    targets.push(target(
        "cold start of a segment under 20 ms including model preparation (lazy, `build --lazy`)".into(),
        worst,
        20.0,
        format!(
            "slowest segment of any K: runtime precompiled load ({:.1} ms) + load_segment (data component build and load, instantiation, preparation) with a warm compile cache; fastest segment {}; with prebuilt data components {} to {}",
            runtime.precompiled_load_ms,
            best.map_or("n/a".into(), |b| format!("{b:.1} ms")),
            fastest_prebuilt.map_or("n/a".into(), |b| format!("{b:.1} ms")),
            slowest_prebuilt.map_or("n/a".into(), |b| format!("{b:.1} ms"))
        ),
    ));
    (ratios, targets)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into())
}

fn native_simd() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        for (name, present) in [
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            (
                "avx2+fma",
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
            ),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1")),
        ] {
            if present {
                return name.into();
            }
        }
        "sse2".into()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.into()
    }
}
