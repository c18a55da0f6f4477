//! A built plan running in the wasmtime host: every segment a component instance with the plan's memory
//! budget, chained in order (or the composed `pipeline.wasm` as one component).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tract_onnx::prelude::{DatumType, Tensor as TractTensor};

use crate::onnx::ElemType;
use crate::package::artifacts;
use crate::plan::Plan;
use crate::plan::file::TensorSpec;
use crate::runtime::{DType, Engine, Limits, Segment, Tensor};
use crate::{Error, Result};

/// How the pipeline's segments are instantiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each segment from the shared runtime (compiled once) and its own data, chained by the host.
    Segments,
    /// The composed `pipeline.wasm`, one component, chained inside wasm.
    Composed,
}

/// A loaded pipeline.
pub struct Pipeline {
    plan: Plan,
    stages: Vec<Segment>,
    stages_are_segments: bool,
    concurrent_shards: bool,
    stage_ms: Vec<f64>,
}

impl Pipeline {
    /// Loads the built plan in `dir` (its built components, so nothing is rebuilt at start); each
    /// segment gets its planned memory budget (the composed pipeline: their sum) and `deadline` per call.
    pub fn load(engine: &Engine, dir: &Path, mode: Mode, deadline: Duration) -> Result<Pipeline> {
        let plan = Plan::load(dir)?;
        let stages = match mode {
            Mode::Segments => {
                let source = artifacts::SegmentSource::load(engine, dir)?;
                plan.segments
                    .iter()
                    .map(|seg| {
                        let factory = source.factory(engine, dir, seg, deadline)?;
                        factory.start().map_err(|cause| Error::Stage { index: seg.index, file: seg.file.clone(), cause })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Mode::Composed => {
                plan.require_composable()?;
                let path = dir.join("pipeline.wasm");
                let wasm = std::fs::read(&path).map_err(|e| Error::Package {
                    what: "the pipeline".into(),
                    reason: format!("{}: {e} (run `netless compose` first)", path.display()),
                })?;
                let memory_bytes = composed_budget(&plan);
                let composed = engine.load_composed(&wasm, Limits { memory_bytes, deadline });
                vec![composed.map_err(|source| Error::Stage { index: 0, file: "pipeline.wasm".into(), cause: source })?]
            }
        };
        Ok(Pipeline { plan, stages, stages_are_segments: mode == Mode::Segments, concurrent_shards: true, stage_ms: Vec::new() })
    }

    /// Whether the shards of a group run concurrently (the default) or one after another (to measure
    /// what concurrency gains).
    pub fn set_concurrent_shards(&mut self, concurrent: bool) {
        self.concurrent_shards = concurrent;
    }

    /// The plan being run.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Wall time of each stage of the plan (a segment, or a group's shards together) in the last
    /// [`Pipeline::infer`], ms; one entry for the composed pipeline.
    pub fn stage_ms(&self) -> &[f64] {
        &self.stage_ms
    }

    /// The loaded stages (one per segment, or one for the composed pipeline).
    pub fn stages(&self) -> &[Segment] {
        &self.stages
    }

    /// Runs the model on named tensors, stage by stage, the shards of a group concurrently; returns its
    /// outputs in declared order.
    pub fn infer(&mut self, inputs: &HashMap<String, Tensor>) -> Result<Vec<Tensor>> {
        let mut env = inputs.clone();
        let groups: Vec<Vec<usize>> = match self.stages_are_segments {
            true => self.plan.stages.iter().map(|s| s.segments.clone()).collect(),
            false => vec![vec![0]],
        };
        let mut slots: Vec<Option<&mut Segment>> = self.stages.iter_mut().map(Some).collect();
        let mut stage_ms = Vec::with_capacity(groups.len());
        for members in groups {
            let started = std::time::Instant::now();
            let mut running: Vec<(usize, &mut Segment)> = members.iter().map(|&i| (i, slots[i].take().expect("each segment runs once"))).collect();
            let call = |index: usize, stage: &mut Segment, env: &HashMap<String, Tensor>| {
                let wanted: Vec<Tensor> = stage.info().inputs.iter().filter_map(|spec| env.get(&spec.name).cloned()).collect();
                let file = if self.stages_are_segments { self.plan.segments[index].file.clone() } else { "pipeline.wasm".into() };
                stage.infer(wanted).map_err(|source| Error::Stage { index, file, cause: source })
            };
            let results: Vec<Result<Vec<Tensor>>> = match &mut running[..] {
                [(index, stage)] => vec![call(*index, stage, &env)],
                shards if !self.concurrent_shards => shards.iter_mut().map(|(index, stage)| call(*index, stage, &env)).collect(),
                shards => std::thread::scope(|scope| {
                    let (env, call) = (&env, &call);
                    let handles: Vec<_> = shards.iter_mut().map(|(index, stage)| scope.spawn(move || call(*index, stage, env))).collect();
                    handles.into_iter().map(|h| h.join().expect("a shard's thread panicked")).collect()
                }),
            };
            for result in results {
                env.extend(result?.into_iter().map(|t| (t.name.clone(), t)));
            }
            stage_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
        self.stage_ms = stage_ms;
        self.plan
            .model
            .outputs
            .iter()
            .map(|o| env.remove(&o.name).ok_or_else(|| Error::Tensor { name: o.name.clone(), reason: "no segment returned it".into() }))
            .collect()
    }
}

/// Linear memory of one pair combinator instance (its stack and allocator; measured about 1.1 MiB).
pub const COMPOSER_MEMORY: u64 = 2 << 20;

/// The memory budget of a composed pipeline: its segments' budgets, their blobs (each data
/// component's memory, counted here since one component's memories cannot be told apart) and one
/// per pair combinator.
pub fn composed_budget(plan: &Plan) -> u64 {
    let segments: u64 = plan.segments.iter().map(|s| s.estimated_memory + (s.bytes + 8).div_ceil(1 << 16) * (1 << 16)).sum();
    segments + COMPOSER_MEMORY * (plan.segments.len() as u64 - 1)
}

fn tract_type(dtype: DType) -> DatumType {
    match dtype {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 | DType::Bf16 => DatumType::F16,
        DType::U8 => DatumType::U8,
        DType::I8 => DatumType::I8,
        DType::U16 => DatumType::U16,
        DType::I16 => DatumType::I16,
        DType::U32 => DatumType::U32,
        DType::I32 => DatumType::I32,
        DType::U64 => DatumType::U64,
        DType::I64 => DatumType::I64,
        DType::Boolean => DatumType::Bool,
    }
}

/// A tract tensor as wire bytes of the declared type.
pub fn to_wire(spec: &TensorSpec, tensor: &TractTensor) -> Result<Tensor> {
    let bad = |reason: String| Error::Tensor { name: spec.name.clone(), reason };
    let dtype = ElemType::wire_type(spec.dtype).ok_or_else(|| bad(format!("type {} cannot cross a segment boundary", spec.dtype)))?;
    let cast = tensor.cast_to_dt(tract_type(dtype)).map_err(|e| bad(format!("{e:#}")))?;
    Ok(Tensor {
        name: spec.name.clone(),
        dtype,
        shape: tensor.shape().iter().map(|&d| d as u64).collect(),
        data: cast.as_bytes().to_vec(),
    })
}

/// Wire bytes as a tract tensor.
pub fn from_wire(tensor: &Tensor) -> Result<TractTensor> {
    let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
    let expected = shape.iter().product::<usize>() * tensor.dtype.size();
    if tensor.data.len() != expected {
        return Err(Error::Tensor {
            name: tensor.name.clone(),
            reason: format!("{} bytes for shape {:?} of {:?}, expected {expected}", tensor.data.len(), tensor.shape, tensor.dtype),
        });
    }
    // SAFETY: `data` holds exactly product(shape) elements of `dtype`, checked above.
    unsafe { TractTensor::from_raw_dt(tract_type(tensor.dtype), &shape, &tensor.data) }
        .map_err(|e| Error::Tensor { name: tensor.name.clone(), reason: format!("{e:#}") })
}
