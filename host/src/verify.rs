//! Checking a split: the stages run one after another in native tract (the shards of a group
//! concurrently) must reproduce the unsplit model.
//!
//! Floating-point outputs are compared by normwise relative error, `max|split - unsplit| / max|unsplit|`;
//! integer and boolean outputs must be equal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use tract_onnx::prelude::*;

use crate::native::NativeModel;
use crate::onnx::{ElemType, OnnxModel};
use crate::plan::Plan;
use crate::plan::file::TensorSpec;
use crate::{Error, Result, npy};

/// The comparison of one model output.
#[derive(Clone, Debug)]
pub struct OutputCheck {
    /// The output's name.
    pub name: String,
    /// Its element type.
    pub dtype: ElemType,
    /// Largest absolute difference.
    pub max_abs_diff: f64,
    /// `max_abs_diff / max|unsplit|` (0 when both are zero).
    pub relative_error: f64,
    /// Whether it is within tolerance (exactly equal for integer types).
    pub passed: bool,
}

/// The outcome of a verification.
#[derive(Clone, Debug)]
pub struct Report {
    /// One check per model output.
    pub checks: Vec<OutputCheck>,
    /// Seconds to run the unsplit model once (prepared).
    pub unsplit_seconds: f64,
    /// Seconds to run all segments once (prepared).
    pub split_seconds: f64,
}

impl Report {
    /// Whether every output passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// Runs every stage of a plan in native tract, one after another, the shards of a group concurrently;
/// returns the model's outputs.
pub fn run_segments(dir: &Path, plan: &Plan, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let models = (0..plan.segments.len()).map(|i| load_segment(dir, plan, i)).collect::<Result<Vec<_>>>()?;
    run_chain(&models, plan, inputs)
}

fn load_segment(dir: &Path, plan: &Plan, index: usize) -> Result<NativeModel> {
    let bytes = plan.read_segment(dir, index)?;
    let seg = &plan.segments[index];
    let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::NotOnnx { path: dir.join(&seg.file), reason: e.to_string() })?;
    NativeModel::new(&proto, &seg.describe(plan), &seg.inputs)
}

fn run_chain(models: &[NativeModel], plan: &Plan, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let mut env = inputs.clone();
    for stage in &plan.stages {
        let results: Vec<Result<Vec<(String, Tensor)>>> = match &stage.segments[..] {
            [one] => vec![models[*one].run(&env)],
            shards => std::thread::scope(|scope| {
                let env = &env;
                let running: Vec<_> = shards.iter().map(|&s| scope.spawn(move || models[s].run(env))).collect();
                running.into_iter().map(|h| h.join().expect("a shard's thread panicked")).collect()
            }),
        };
        for result in results {
            env.extend(result?);
        }
    }
    plan.model
        .outputs
        .iter()
        .map(|o| {
            let t = env.remove(&o.name).ok_or_else(|| Error::Tensor { name: o.name.clone(), reason: "no segment produced it".into() })?;
            Ok((o.name.clone(), t))
        })
        .collect()
}

/// Where a verification gets its inputs and source model.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// `.npy` files by input name; inputs not given are generated.
    pub inputs: Vec<(String, PathBuf)>,
    /// Largest relative error accepted for floating-point outputs.
    pub tolerance: f64,
    /// The unsplit model, if not at the path recorded in the plan.
    pub model: Option<PathBuf>,
}

/// Verifies the split in `dir` against its unsplit model.
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<Report> {
    let plan = Plan::load(dir)?;
    let source_path = options.model.clone().unwrap_or_else(|| PathBuf::from(&plan.model.file));
    let source = OnnxModel::load(&source_path)?;
    if source.sha256 != plan.model.sha256 {
        return Err(Error::Plan {
            path: source_path,
            reason: format!("is not the model this plan was made from (sha256 {}, plan says {})", source.sha256, plan.model.sha256),
        });
    }
    let inputs = load_inputs(&plan.model.inputs, &options.inputs)?;
    let unsplit = NativeModel::new(&source.proto, "the unsplit model", &plan.model.inputs)?;
    let segments = (0..plan.segments.len()).map(|i| load_segment(dir, &plan, i)).collect::<Result<Vec<_>>>()?;

    let started = Instant::now();
    let expected = unsplit.run(&inputs)?;
    let unsplit_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let actual = run_chain(&segments, &plan, &inputs)?;
    let split_seconds = started.elapsed().as_secs_f64();

    let checks = expected
        .iter()
        .zip(&actual)
        .map(|((name, want), (_, got))| compare(name, want, got, options.tolerance))
        .collect::<Result<Vec<_>>>()?;
    Ok(Report { checks, unsplit_seconds, split_seconds })
}

/// The model inputs: read from the given `.npy` files, generated for the rest.
pub fn load_inputs(specs: &[TensorSpec], given: &[(String, PathBuf)]) -> Result<HashMap<String, Tensor>> {
    for (name, _) in given {
        if !specs.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::Tensor { name: name.clone(), reason: format!("the model has no such input (its inputs: {})", names.join(", ")) });
        }
    }
    let mut out = HashMap::new();
    for (ix, spec) in specs.iter().enumerate() {
        let tensor = match given.iter().find(|(n, _)| n == &spec.name) {
            Some((_, path)) => npy::read(path, &spec.name, spec.dtype)?,
            None => generate(spec, ix as u64 + 1)?,
        };
        let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
        if shape != spec.shape {
            return Err(Error::Tensor { name: spec.name.clone(), reason: format!("shape {shape:?} does not match the planned shape {:?}", spec.shape) });
        }
        out.insert(spec.name.clone(), tensor);
    }
    Ok(out)
}

/// A deterministic pseudo-random input: floats uniform in [-1, 1), integers and booleans in {0, 1} (valid
/// as token ids, masks and segment ids alike).
pub fn generate(spec: &TensorSpec, seed: u64) -> Result<Tensor> {
    let len = spec.shape.iter().product::<u64>() as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
    let unit: Vec<f64> = (0..len).map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64).collect();
    let bits: Vec<i64> = unit.iter().map(|&u| (u < 0.5) as i64).collect();
    let tensor = match spec.dtype {
        ElemType::F32 => Tensor::from_shape(&shape, &unit.iter().map(|u| (2.0 * u - 1.0) as f32).collect::<Vec<_>>()),
        ElemType::F64 => Tensor::from_shape(&shape, &unit.iter().map(|u| 2.0 * u - 1.0).collect::<Vec<_>>()),
        ElemType::Bool => Tensor::from_shape(&shape, &bits.iter().map(|&b| b == 1).collect::<Vec<_>>()),
        other => {
            let dt = other.to_tract().ok_or_else(|| Error::Tensor { name: spec.name.clone(), reason: format!("cannot generate {other}") })?;
            Tensor::from_shape(&shape, &bits).and_then(|t| Ok(t.cast_to_dt(dt)?.into_owned()))
        }
    };
    tensor.map_err(|e| Error::Tensor { name: spec.name.clone(), reason: format!("{e:#}") })
}

/// Compares one output of the split (`got`) with the unsplit model's (`want`).
pub fn compare(name: &str, want: &Tensor, got: &Tensor, tolerance: f64) -> Result<OutputCheck> {
    let bad = |reason: String| Error::Tensor { name: name.into(), reason };
    if want.shape() != got.shape() {
        return Err(bad(format!("the split gives shape {:?}, the unsplit model {:?}", got.shape(), want.shape())));
    }
    let dtype = ElemType::from_tract(want.datum_type()).ok_or_else(|| bad(format!("type {:?}", want.datum_type())))?;
    let as_f64 = |t: &Tensor| -> Result<Vec<f64>> {
        let t = t.cast_to_dt(DatumType::F64).map_err(|e| bad(format!("{e:#}")))?;
        Ok(t.try_as_plain_ram().map_err(|e| bad(format!("{e:#}")))?.as_slice::<f64>().map_err(|e| bad(format!("{e:#}")))?.to_vec())
    };
    let (want, got) = (as_f64(want)?, as_f64(got)?);
    let max_abs_diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) });
    let scale = want.iter().map(|a| a.abs()).fold(0.0, f64::max);
    let relative_error = if max_abs_diff == 0.0 { 0.0 } else { max_abs_diff / scale.max(f64::MIN_POSITIVE) };
    let passed = if dtype.is_exact() { max_abs_diff == 0.0 } else { relative_error <= tolerance };
    Ok(OutputCheck { name: name.into(), dtype, max_abs_diff, relative_error, passed })
}
