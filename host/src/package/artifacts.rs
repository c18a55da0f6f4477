//! `netless build`: every segment of a plan as a self-contained component, assembled from the generic
//! runtime and the segment's ONNX file without running a compiler per segment.
//!
//! Layout under the plan's folder: `components/runtime.wasm` (the generic runtime, shared),
//! `components/seg-NN.data.wasm` (the segment's data component) and `components/seg-NN.wasm` (the
//! deployable artifact). [`preinitialize`] then makes each `seg-NN.wasm` a snapshot of the runtime
//! with its model already prepared, and records that in `components/preinitialized.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{compose, data_component};
use crate::plan::Plan;
use crate::runtime::{Engine, Limits, Runtime, SegmentFactory};
use crate::{Error, Result, progress};

/// The folder of components inside a plan's folder.
pub const DIR: &str = "components";

/// Path of the generic runtime inside a built plan folder.
pub fn runtime_path(dir: &Path) -> PathBuf {
    dir.join(DIR).join("runtime.wasm")
}

/// The generic runtime of a built plan folder, or an error saying to build it first.
pub fn read_runtime(dir: &Path) -> Result<Vec<u8>> {
    let path = runtime_path(dir);
    std::fs::read(&path).map_err(|e| Error::Package {
        what: "the segment runtime".into(),
        reason: format!("{}: {e} (run `netless build` first)", path.display()),
    })
}

/// Path of segment `index`'s self-contained component.
pub fn segment_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(DIR).join(format!("seg-{index:02}.wasm"))
}

/// Path of segment `index`'s data component.
pub fn data_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(DIR).join(format!("seg-{index:02}.data.wasm"))
}

/// What building one segment produced.
#[derive(Clone, Debug)]
pub struct Built {
    /// The segment's index.
    pub index: usize,
    /// Size of `seg-NN.wasm`.
    pub component_bytes: u64,
    /// Size of `seg-NN.data.wasm`.
    pub data_bytes: u64,
    /// Seconds to assemble it.
    pub seconds: f64,
}

/// Builds every segment's component into `dir/components/`, all at once (staged, then renamed).
/// Each segment's model is first prepared natively as the runtime will prepare it, so no component
/// is made of a model the runtime cannot prepare.
pub fn build(dir: &Path, plan: &Plan, runtime: &[u8]) -> Result<Vec<Built>> {
    validate("the segment runtime", runtime)?;
    let staging = dir.join(format!(".{DIR}.partial-{}", std::process::id()));
    let result = build_into(&staging, dir, plan, runtime);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let built = result?;
    let target = dir.join(DIR);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(Error::io(&target))?;
    }
    std::fs::rename(&staging, &target).map_err(Error::io(&target))?;
    Ok(built)
}

fn build_into(staging: &Path, dir: &Path, plan: &Plan, runtime: &[u8]) -> Result<Vec<Built>> {
    std::fs::create_dir_all(staging).map_err(Error::io(staging))?;
    let write = |path: PathBuf, bytes: &[u8]| std::fs::write(&path, bytes).map_err(Error::io(&path));
    write(staging.join("runtime.wasm"), runtime)?;
    let bar = progress::bytes(plan.segments.iter().map(|s| s.bytes).sum(), "building");
    let mut built = Vec::new();
    for seg in &plan.segments {
        let started = Instant::now();
        let blob = plan.read_segment(dir, seg.index)?;
        let what = format!("segment {} ({})", seg.index, seg.file);
        check_segment(&blob, &what, seg)?;
        let data = data_component::build(&blob).map_err(|e| Error::Package { what: what.clone(), reason: e.to_string() })?;
        let component = compose::segment(runtime, &data).map_err(|e| Error::Package { what: what.clone(), reason: e.to_string() })?;
        validate(&what, &component)?;
        write(staging.join(format!("seg-{:02}.data.wasm", seg.index)), &data)?;
        write(staging.join(format!("seg-{:02}.wasm", seg.index)), &component)?;
        built.push(Built {
            index: seg.index,
            component_bytes: component.len() as u64,
            data_bytes: data.len() as u64,
            seconds: started.elapsed().as_secs_f64(),
        });
        bar.inc(seg.bytes);
    }
    bar.finish_and_clear();
    Ok(built)
}

/// Refuses a segment the runtime could not prepare, before a component is made of it.
fn check_segment(blob: &[u8], what: &str, seg: &crate::plan::file::Segment) -> Result<()> {
    let proto = <crate::onnx::pb::ModelProto as prost::Message>::decode(blob).map_err(|e| Error::Package { what: what.into(), reason: format!("not an ONNX model: {e}") })?;
    let inputs: Vec<_> = seg.inputs.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
    crate::onnx::prepare::segment(&proto, what, &inputs)
}

/// The record of a pre-initialised build, `components/preinitialized.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preinitialized {
    /// One entry per segment, in order.
    pub segments: Vec<Snapshot>,
}

/// What pre-initialising one segment produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The segment's index.
    pub index: usize,
    /// Size of the pre-initialised `seg-NN.wasm`.
    pub component_bytes: u64,
    /// Seconds to prepare, snapshot and compose it.
    pub seconds: f64,
}

/// The pre-initialisation record of a built plan folder, if it was pre-initialised.
pub fn preinitialized(dir: &Path) -> Option<Preinitialized> {
    let text = std::fs::read_to_string(preinitialized_path(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

fn preinitialized_path(dir: &Path) -> PathBuf {
    dir.join(DIR).join("preinitialized.json")
}

/// Replaces every built `seg-NN.wasm` with a pre-initialised one: the runtime is instantiated
/// with the segment's data under the segment's memory budget, prepares the model, and its state is
/// snapshotted (Wizer), then composed with an empty data component. A new instance of it starts
/// with the model prepared: wasmtime maps the snapshot's memory copy-on-write.
///
/// Snapshots are reproducible (segments get a fixed-seed random source). A segment whose
/// preparation fails or exceeds its budget fails here, naming it.
pub fn preinitialize(dir: &Path, plan: &Plan, engine: &Engine) -> Result<Preinitialized> {
    let runtime = read_runtime(dir)?;
    let empty = data_component::build(&[]).map_err(|e| Error::Package { what: "an empty data component".into(), reason: e.to_string() })?;
    let _ = std::fs::remove_file(preinitialized_path(dir));
    let snapshotter = engine.snapshotter(&runtime).map_err(|cause| Error::Package { what: "the segment runtime".into(), reason: cause.to_string() })?;
    let bar = progress::bytes(plan.segments.iter().map(|s| s.bytes).sum(), "pre-initialising");
    let mut segments = Vec::new();
    for seg in &plan.segments {
        let started = Instant::now();
        let what = format!("segment {} ({})", seg.index, seg.file);
        let data_path = data_path(dir, seg.index);
        let data = std::fs::read(&data_path).map_err(|e| Error::Package { what: what.clone(), reason: format!("{}: {e} (run `netless build` first)", data_path.display()) })?;
        let limits = Limits { memory_bytes: seg.estimated_memory, deadline: PREPARE_DEADLINE };
        let snapshot = snapshotter.snapshot(&data, limits).map_err(|cause| Error::Stage { index: seg.index, file: seg.file.clone(), cause })?;
        let component = compose::segment(&snapshot, &empty).map_err(|e| Error::Package { what: what.clone(), reason: e.to_string() })?;
        validate(&what, &component)?;
        let path = segment_path(dir, seg.index);
        let tmp = path.with_extension("wasm.partial");
        std::fs::write(&tmp, &component).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        segments.push(Snapshot { index: seg.index, component_bytes: component.len() as u64, seconds: started.elapsed().as_secs_f64() });
        bar.inc(seg.bytes);
    }
    bar.finish_and_clear();
    let record = Preinitialized { segments };
    let path = preinitialized_path(dir);
    std::fs::write(&path, serde_json::to_string_pretty(&record).expect("serialisable")).map_err(Error::io(&path))?;
    Ok(record)
}

/// Where the host starts a built plan's segments from: the pre-initialised `seg-NN.wasm` files,
/// or, for a lazy build, the runtime (compiled once) linked with each segment's data component.
pub enum SegmentSource {
    /// `seg-NN.wasm` holds the prepared model.
    Preinitialized,
    /// The shared runtime; each instance prepares its model on its first call.
    Lazy(Runtime),
}

impl SegmentSource {
    /// What `dir`'s build offers (loading the runtime if it is lazy).
    pub fn load(engine: &Engine, dir: &Path) -> Result<SegmentSource> {
        Ok(match preinitialized(dir) {
            Some(_) => SegmentSource::Preinitialized,
            None => SegmentSource::Lazy(engine.load_runtime(&read_runtime(dir)?)?),
        })
    }

    /// Compiles (or loads) and links segment `seg` with its memory budget and `deadline`.
    pub fn factory(&self, engine: &Engine, dir: &Path, seg: &crate::plan::file::Segment, deadline: Duration) -> Result<SegmentFactory> {
        let limits = Limits { memory_bytes: seg.estimated_memory, deadline };
        let stage = |cause| Error::Stage { index: seg.index, file: seg.file.clone(), cause };
        match self {
            SegmentSource::Preinitialized => engine.composed_factory(&segment_path(dir, seg.index), limits).map_err(stage),
            SegmentSource::Lazy(runtime) => {
                let path = data_path(dir, seg.index);
                let data = std::fs::read(&path).map_err(Error::io(&path))?;
                engine.segment_factory(runtime, &data, limits).map_err(stage)
            }
        }
    }
}

/// How long one segment's model preparation may take at build time.
const PREPARE_DEADLINE: Duration = Duration::from_secs(600);

/// Composes a built plan's segments into `dir/pipeline.wasm` with the pair combinator.
pub fn compose_pipeline(dir: &Path, plan: &Plan, composer: &[u8]) -> Result<PathBuf> {
    plan.require_composable()?;
    validate("the composer", composer)?;
    let read = |path: PathBuf, what: String| {
        std::fs::read(&path).map_err(|e| Error::Package { what, reason: format!("{}: {e} (run `netless build` first)", path.display()) })
    };
    let runtime = read(runtime_path(dir), "the segment runtime".into())?;
    let datas = (0..plan.segments.len()).map(|i| read(data_path(dir, i), format!("segment {i}"))).collect::<Result<Vec<_>>>()?;
    let stages: Vec<Vec<usize>> = plan.stages.iter().map(|s| s.segments.clone()).collect();
    let pipeline = compose::pipeline(&runtime, composer, &datas, &stages).map_err(|e| Error::Package { what: "the pipeline".into(), reason: e.to_string() })?;
    validate("the pipeline", &pipeline)?;
    let wac = dir.join("pipeline.wac");
    std::fs::write(&wac, wac_source(&stages)).map_err(Error::io(&wac))?;
    let path = dir.join("pipeline.wasm");
    let tmp = dir.join(format!(".pipeline.wasm.partial-{}", std::process::id()));
    std::fs::write(&tmp, &pipeline).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    Ok(path)
}

/// The same composition in the WAC language, for `wac compose` (see docs/composition.md): package
/// `netless:segment-runtime` is `components/runtime.wasm`, `netless:pair` the composer, and
/// `netless:segN-data` is `components/seg-NN.data.wasm`; `stages` lists each stage's functions.
pub fn wac_source(stages: &[Vec<usize>]) -> String {
    let data = super::SEGMENT_DATA;
    let infer = super::INFER_SEGMENT;
    let mut wac = String::from("package netless:pipeline;\n\n");
    for i in stages.iter().flatten() {
        wac += &format!("let d{i} = new netless:seg{i}-data {{}};\n");
        wac += &format!("let s{i} = new netless:segment-runtime {{ \"{data}\": d{i}[\"{data}\"], ... }};\n");
    }
    let mut pairs = 0;
    let mut pair = |wac: &mut String, first: String, second: String| {
        pairs += 1;
        *wac += &format!(
            "let p{pairs} = new netless:pair {{ \"netless:inference/first@0.1.0\": {first}[\"{infer}\"], \"netless:inference/second@0.1.0\": {second}[\"{infer}\"], ... }};\n"
        );
        format!("p{pairs}")
    };
    let mut last: Option<String> = None;
    for members in stages {
        let mut stage: Option<String> = None;
        for i in members {
            stage = Some(match stage {
                None => format!("s{i}"),
                Some(previous) => pair(&mut wac, previous, format!("s{i}")),
            });
        }
        let Some(stage) = stage else { continue };
        last = Some(match last {
            None => stage,
            Some(previous) => pair(&mut wac, previous, stage),
        });
    }
    wac += &format!("\nexport {}[\"{infer}\"];\n", last.unwrap_or_default());
    wac
}

/// Checks that `bytes` is a valid component (what `wasm-tools validate` checks).
pub fn validate(what: &str, bytes: &[u8]) -> Result<()> {
    if !wasmparser::Parser::is_component(bytes) {
        return Err(Error::Package { what: what.into(), reason: "not a WebAssembly component".into() });
    }
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map(|_| ())
        .map_err(|e| Error::Package { what: what.into(), reason: format!("invalid component: {e}") })
}
