//! The plan file (`plan.json`): what a split produced, versioned. Documented in docs/plan-format.md.

use std::collections::BTreeMap;
use std::path::Path;

use netless_oip::Name;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::shard::{Join, Strategy};
use super::{CostModel, MemoryModel, Objective};
use crate::onnx::ElemType;
use crate::{Error, Result};

/// The `format` field of every plan file.
pub const FORMAT: &str = "netless-plan";
/// The version of the plan format this build writes.
pub const VERSION: u32 = 2;
/// The versions this build reads: 1 (a chain of segments) and 2 (a DAG of stages: segments and groups of
/// parallel shards).
pub const READS: [u32; 2] = [1, 2];
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
    /// Every function (a segment, or a shard of a group), in an order that runs them all: each reads only
    /// model inputs and tensors made by functions before it.
    pub segments: Vec<Segment>,
    /// The stages, in pipeline order: each one segment, or a group of shards run in parallel (version 2;
    /// a version 1 plan has one stage per segment).
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// What is in flight between stage `i` and `i + 1`.
    pub boundaries: Vec<Boundary>,
}

/// A step of the pipeline: one segment, or a group of shards of one node that run concurrently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Its place in the pipeline, from 0.
    pub index: usize,
    /// Its functions: indices into `segments` (one for a segment, the shards in order for a group).
    pub segments: Vec<usize>,
    /// For a group, the node cut into shards and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

/// A node cut into shards (with the run of nodes around it, for bands).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The node's name.
    pub node: String,
    /// Its operator.
    pub op: String,
    /// The dimension cut.
    pub strategy: Strategy,
    /// Units along that dimension (columns, rows, channels or groups).
    pub extent: u64,
    /// How the partial outputs become the node's output, and which stages do it.
    pub join: JoinSpec,
    /// For a run cut into bands with more than one output read after it, how the other outputs are made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_joins: Vec<JoinSpec>,
    /// The estimate for the node whole, over the limit (why it is cut).
    pub unsharded_memory: u64,
    /// For a cut into bands of rows, every node of the run each shard computes, `node` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// A tensor made from the partial outputs of a group's shards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The tensor (the sharded node's output).
    pub tensor: String,
    /// Concat on an axis, or Sum.
    #[serde(flatten)]
    pub join: Join,
    /// The partial outputs, shard by shard.
    pub partials: Vec<String>,
}

/// Which part of a node a shard computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRef {
    /// The stage of its group.
    pub stage: usize,
    /// Its place in the group, from 0.
    pub index: usize,
    /// The group's shard count.
    pub count: usize,
    /// The units `[lo, hi)` of the cut dimension it computes.
    pub range: [u64; 2],
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

/// The largest tensor a plan may declare, in bytes (256 TiB: beyond any function's memory), so that sums
/// of tensor sizes cannot overflow.
pub const MAX_TENSOR_BYTES: u64 = 1 << 48;

impl TensorSpec {
    /// Size of its data in bytes (saturating; [`Plan::load`] refuses tensors over [`MAX_TENSOR_BYTES`]).
    pub fn bytes(&self) -> u64 {
        self.checked_bytes().unwrap_or(u64::MAX)
    }

    /// Size of its data in bytes, or `None` if that does not fit in 64 bits.
    pub fn checked_bytes(&self) -> Option<u64> {
        self.shape.iter().try_fold(self.dtype.size(), |bytes, &d| bytes.checked_mul(d))
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
    /// Bytes of the largest of them (0 in plans written before it was recorded).
    #[serde(default)]
    pub largest_weight_bytes: u64,
    /// Peak bytes of live activations.
    pub peak_activation_bytes: u64,
    /// Bytes of its inputs and outputs.
    pub io_bytes: u64,
    /// Estimated peak memory: its memory limit when deployed.
    pub estimated_memory: u64,
    /// The stage it belongs to (version 2; in version 1, its index).
    #[serde(default = "no_stage")]
    pub stage: usize,
    /// For a shard, which part of its group's node it computes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRef>,
    /// Tensors it first makes from the partial outputs of a group (its inputs hold the partials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<JoinSpec>,
}

fn no_stage() -> usize {
    usize::MAX
}

impl Segment {
    /// Its file name as messages show it: as written when it is a plain path, else quoted and escaped.
    fn file_name(&self) -> String {
        match self.file.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
            true => self.file.clone(),
            false => format!("{:?}", self.file),
        }
    }

    /// How to name it in messages: `segment 3 (seg-03.onnx)` or `shard 1 of 4 of node `fc6` (seg-03.onnx)`.
    pub fn describe(&self, plan: &Plan) -> String {
        match &self.shard {
            Some(s) => {
                let node = plan.stages.get(s.stage).and_then(|st| st.group.as_ref()).map(|g| g.node.as_str()).unwrap_or("?");
                format!("shard {} of {} of node {} (stage {}, {})", s.index, s.count, Name(node), s.stage, self.file_name())
            }
            None => format!("segment {} ({})", self.index, self.file_name()),
        }
    }
}

/// The tensors in flight between two consecutive stages: made before the boundary (or model inputs)
/// and read after it (or model outputs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Boundary {
    /// The stage before the boundary (`after_segment` in version 1, where stages are segments).
    #[serde(alias = "after_segment")]
    pub after_stage: usize,
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
        let version = value.get("version").and_then(|v| v.as_u64());
        if !version.is_some_and(|v| READS.contains(&(v as u32))) {
            return Err(bad(format!("plan version {version:?} is not supported (this build reads {READS:?})")));
        }
        let mut plan: Plan = serde_json::from_value(value).map_err(|e| bad(format!("malformed plan: {e}")))?;
        if plan.segments.is_empty() {
            return Err(bad("the plan has no segments".into()));
        }
        for (i, seg) in plan.segments.iter().enumerate() {
            if seg.index != i {
                return Err(bad(format!("segment {i} is listed with index {}", seg.index)));
            }
            if seg.file.contains("..") || Path::new(&seg.file).is_absolute() {
                return Err(bad(format!("segment {i}: file {} is outside the plan's folder", Name(&seg.file))));
            }
        }
        let specs = plan.model.inputs.iter().chain(&plan.model.outputs).chain(plan.segments.iter().flat_map(|s| s.inputs.iter().chain(&s.outputs)));
        if let Some(huge) = specs.into_iter().find(|t| t.checked_bytes().is_none_or(|b| b > MAX_TENSOR_BYTES)) {
            return Err(bad(format!("tensor {} has shape {:?}: larger than any function could hold", Name(&huge.name), huge.shape)));
        }
        if plan.version == 1 {
            plan.stages = (0..plan.segments.len()).map(|i| Stage { index: i, segments: vec![i], group: None }).collect();
            for seg in &mut plan.segments {
                seg.stage = seg.index;
            }
        }
        plan.check_stages().map_err(bad)?;
        Ok(plan)
    }

    /// Checks that the stages cover every segment once, in order, and that each segment reads only model
    /// inputs and tensors made by earlier stages.
    fn check_stages(&self) -> std::result::Result<(), String> {
        let mut next = 0;
        let mut made: Vec<&str> = self.model.inputs.iter().map(|t| t.name.as_str()).collect();
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.index != i || stage.segments.is_empty() {
                return Err(format!("stage {i} is listed with index {} and {} segments", stage.index, stage.segments.len()));
            }
            if stage.group.is_none() && stage.segments.len() != 1 {
                return Err(format!("stage {i} is not a group but lists {} segments", stage.segments.len()));
            }
            for &s in &stage.segments {
                let seg = self.segments.get(s).ok_or_else(|| format!("stage {i} lists segment {s}, which the plan does not have"))?;
                if s != next || seg.stage != i {
                    return Err(format!("stage {i} lists segment {s} out of order (segment {s} says stage {})", seg.stage));
                }
                next += 1;
                if let Some(missing) = seg.inputs.iter().find(|t| !made.contains(&t.name.as_str())) {
                    return Err(format!("{} reads {}, which no earlier stage makes", seg.describe(self), Name(&missing.name)));
                }
            }
            for &s in &stage.segments {
                made.extend(self.segments[s].outputs.iter().map(|t| t.name.as_str()));
            }
        }
        if next != self.segments.len() {
            return Err(format!("the stages list {next} of the {} segments", self.segments.len()));
        }
        if let Some(missing) = self.model.outputs.iter().find(|t| !made.contains(&t.name.as_str())) {
            return Err(format!("no stage makes the model output {}", Name(&missing.name)));
        }
        Ok(())
    }

    /// Whether any stage is a group of shards (such a plan needs a runner that runs the DAG).
    pub fn has_groups(&self) -> bool {
        self.stages.iter().any(|s| s.group.is_some())
    }

    /// Refuses a plan the static composition cannot run: one where a tensor a group's shards read is also
    /// needed after the group (the composed pair hands each tensor on only until a function takes it,
    /// and shards do not pass their input on), naming the tensor and the group.
    pub fn require_composable(&self) -> Result<()> {
        for (i, stage) in self.stages.iter().enumerate() {
            let Some(group) = &stage.group else { continue };
            let read: Vec<&str> = stage.segments.iter().flat_map(|&s| self.segments[s].inputs.iter().map(|t| t.name.as_str())).collect();
            let later = self.stages[i + 1..].iter().flat_map(|st| st.segments.iter().flat_map(|&s| self.segments[s].inputs.iter()));
            if let Some(t) = later.map(|t| t.name.as_str()).chain(self.model.outputs.iter().map(|t| t.name.as_str())).find(|n| read.contains(n)) {
                return Err(Error::Unsupported(format!(
                    "the composed pipeline cannot run this plan: {}, the input of node {}'s shards (stage {i}), is also needed after them; \
                     run it segment by segment (`netless run` without `--composed`), with `netless up` or the Spin app",
                    Name(t),
                    Name(&group.node)
                )));
            }
        }
        Ok(())
    }

    /// Reads segment `index`'s ONNX file from the plan's folder `dir`, checking its sha256.
    pub fn read_segment(&self, dir: &Path, index: usize) -> Result<Vec<u8>> {
        let seg = &self.segments[index];
        let path = dir.join(&seg.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::Plan { path: path.clone(), reason: format!("{}: {e}", seg.describe(self)) })?;
        let actual = crate::onnx::load::hex(&sha2::Sha256::digest(&bytes));
        if actual != seg.sha256 {
            return Err(Error::Plan { path, reason: format!("{}: sha256 is {actual}, the plan says {}", seg.describe(self), seg.sha256) });
        }
        Ok(bytes)
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialise")
    }
}
