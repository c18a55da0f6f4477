//! The plan file (`plan.json`): what a split produced, versioned. Documented in docs/plan-format.md.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{CostModel, MemoryModel, Objective};
use crate::onnx::ElemType;
use crate::{Error, Result};

/// The `format` field of every plan file.
pub const FORMAT: &str = "netless-plan";
/// The version of the plan format this build writes and reads.
pub const VERSION: u32 = 1;
/// The plan's file name inside an output folder.
pub const FILE_NAME: &str = "plan.json";

/// A split model: its source, the request, the models used to estimate, and every segment and boundary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Always [`FORMAT`].
    pub format: String,
    /// The format version, [`VERSION`].
    pub version: u32,
    /// The unsplit model.
    pub model: ModelInfo,
    /// What was asked for.
    pub request: RequestInfo,
    /// The topological order the partition was found on.
    pub order: String,
    /// How segment memory was estimated.
    pub memory_model: MemoryModel,
    /// How compute and hops were costed.
    pub cost_model: CostModel,
    /// Estimated seconds of one request end to end.
    pub latency_seconds: f64,
    /// Estimated seconds of the slowest stage (the pipeline's throughput is its inverse).
    pub slowest_stage_seconds: f64,
    /// The segments, in pipeline order.
    pub segments: Vec<Segment>,
    /// What crosses between segment `i` and `i + 1`.
    pub boundaries: Vec<Boundary>,
}

/// A tensor's name, element type and shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Its ONNX name.
    pub name: String,
    /// Its element type.
    pub dtype: ElemType,
    /// Its shape.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// Size of its data in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size()
    }
}

/// The unsplit model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its name (the file stem).
    pub name: String,
    /// The path it was read from.
    pub file: String,
    /// sha256 of the file.
    pub sha256: String,
    /// Size of the file.
    pub bytes: u64,
    /// Computing nodes (Constant nodes excluded).
    pub nodes: usize,
    /// Total weight bytes.
    pub weight_bytes: u64,
    /// Total estimated operations.
    pub flops: u64,
    /// Its inputs, at the shapes planned for.
    pub inputs: Vec<TensorSpec>,
    /// Its outputs.
    pub outputs: Vec<TensorSpec>,
}

/// What the user asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The per-segment memory limit in bytes.
    pub max_memory: u64,
    /// The requested number of segments, if any.
    pub segments: Option<usize>,
    /// The objective.
    pub objective: Objective,
    /// Input shapes given on the command line.
    pub input_shapes: BTreeMap<String, Vec<u64>>,
}

/// One segment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Segment {
    /// Its place in the pipeline, from 0.
    pub index: usize,
    /// Its ONNX file, relative to the plan.
    pub file: String,
    /// sha256 of that file.
    pub sha256: String,
    /// Size of that file.
    pub bytes: u64,
    /// Its computing nodes.
    pub nodes: usize,
    /// Name of its first node.
    pub first_node: String,
    /// Name of its last node.
    pub last_node: String,
    /// Tensors it receives (everything crossing the boundary before it).
    pub inputs: Vec<TensorSpec>,
    /// Tensors it returns (everything crossing the boundary after it).
    pub outputs: Vec<TensorSpec>,
    /// Inputs it returns unchanged for later segments (also listed in `inputs` and `outputs`).
    pub passthrough: Vec<String>,
    /// Estimated operations.
    pub flops: u64,
    /// Bytes of the weights it holds.
    pub weight_bytes: u64,
    /// Peak bytes of live activations.
    pub peak_activation_bytes: u64,
    /// Bytes of its inputs and outputs.
    pub io_bytes: u64,
    /// Estimated peak memory: its memory limit when deployed.
    pub estimated_memory: u64,
}

/// The tensors crossing between two consecutive segments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Boundary {
    /// The segment before the boundary.
    pub after_segment: usize,
    /// Their names.
    pub tensors: Vec<String>,
    /// Their total bytes.
    pub bytes: u64,
}

impl Plan {
    /// Reads `DIR/plan.json` (or the file itself) and checks its format and version.
    pub fn load(path: &Path) -> Result<Plan> {
        let file = if path.is_dir() { path.join(FILE_NAME) } else { path.to_owned() };
        let text = std::fs::read_to_string(&file).map_err(Error::io(&file))?;
        let bad = |reason: String| Error::Plan { path: file.clone(), reason };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("not a NetLess plan (no `\"format\": \"{FORMAT}\"`)")));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == VERSION as u64 => {}
            other => return Err(bad(format!("plan version {other:?} is not supported (this build reads {VERSION})"))),
        }
        let plan: Plan = serde_json::from_value(value).map_err(|e| bad(format!("malformed plan: {e}")))?;
        if plan.segments.is_empty() {
            return Err(bad("the plan has no segments".into()));
        }
        for (i, seg) in plan.segments.iter().enumerate() {
            if seg.index != i {
                return Err(bad(format!("segment {i} is listed with index {}", seg.index)));
            }
            if seg.file.contains("..") || Path::new(&seg.file).is_absolute() {
                return Err(bad(format!("segment {i}: file `{}` is outside the plan's folder", seg.file)));
            }
        }
        Ok(plan)
    }

    /// Reads segment `index`'s ONNX file from the plan's folder `dir`, checking its sha256.
    pub fn read_segment(&self, dir: &Path, index: usize) -> Result<Vec<u8>> {
        let seg = &self.segments[index];
        let path = dir.join(&seg.file);
        let bytes = std::fs::read(&path).map_err(Error::io(&path))?;
        let actual = crate::onnx::load::hex(&sha2::Sha256::digest(&bytes));
        if actual != seg.sha256 {
            return Err(Error::Plan { path, reason: format!("sha256 is {actual}, the plan says {}", seg.sha256) });
        }
        Ok(bytes)
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialise")
    }
}
