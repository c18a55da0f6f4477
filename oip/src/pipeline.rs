//! A pipeline as its gateway sees it: the model's tensors, and for each stage the segment model to
//! call and the tensors to send it; and the names a Spin app gives its parts.
//!
//! Spin's ids are words that each start with an ASCII letter (`seg0`, never `seg-0`): component ids
//! are `-`-separated, variable names `_`-separated. The same names serve as `*.spin.internal` hosts,
//! Kubernetes object names (`<app>-seg0`) and OCI repositories (`REPO-seg0`).

use serde::{Deserialize, Serialize};

/// A tensor as OIP model metadata lists it; `-1` marks a dimension fixed only at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// Its OIP datatype (`FP32`, `INT64`...).
    pub datatype: String,
    /// Its dimensions.
    pub shape: Vec<i64>,
}

/// One stage of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// The segment's OIP model name (`{model}-seg-{i}`).
    pub model: String,
    /// The tensors it takes: outputs of earlier stages or inputs of the model.
    pub inputs: Vec<String>,
    /// The plan's stage it belongs to, for a shard of a group: consecutive entries of one group take
    /// the same inputs and are called concurrently. `None` for a segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
}

impl PipelineSpec {
    /// The entries of `stages` as runs called together: each segment alone, a group's shards at once.
    pub fn steps(&self) -> Vec<std::ops::Range<usize>> {
        let mut steps: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            match steps.last_mut() {
                Some(last) if stage.group.is_some() && self.stages[last.start].group == stage.group => last.end = i + 1,
                _ => steps.push(i..i + 1),
            }
        }
        steps
    }
}

/// What a gateway serves: the model's contract and its stages in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineSpec {
    /// The model's OIP name.
    pub model: String,
    /// The model's inputs.
    pub inputs: Vec<TensorMetadata>,
    /// The model's outputs.
    pub outputs: Vec<TensorMetadata>,
    /// The stages, first to last.
    pub stages: Vec<StageSpec>,
}

/// The Spin component id of the gateway.
pub const GATEWAY_COMPONENT: &str = "gateway";

/// The Spin component id of segment `index`: `seg{index}`.
pub fn segment_component(index: usize) -> String {
    format!("seg{index}")
}

/// The segment index of a component id made by [`segment_component`].
pub fn segment_index(component: &str) -> Option<usize> {
    let digits = component.strip_prefix("seg")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    digits.parse().ok()
}

/// The gateway's variable listing where stage `index` is served: `stage{index}_urls`.
pub fn stage_urls_variable(index: usize) -> String {
    format!("stage{index}_urls")
}

/// Where a Spin app reaches segment `index` by service chaining: `http://seg{index}.spin.internal`.
pub fn service_chaining_url(index: usize) -> String {
    format!("http://{}.spin.internal", segment_component(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_of_shards_is_one_step() {
        let stage = |group| StageSpec { model: String::new(), inputs: vec![], group };
        let spec = PipelineSpec {
            model: "m".into(),
            inputs: vec![],
            outputs: vec![],
            stages: vec![stage(None), stage(Some(1)), stage(Some(1)), stage(Some(1)), stage(None), stage(Some(3)), stage(Some(3)), stage(Some(4))],
        };
        assert_eq!(spec.steps(), vec![0..1, 1..4, 4..5, 5..7, 7..8]);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_component(12), "seg12");
        assert_eq!(segment_index("seg12"), Some(12));
        for bad in ["seg", "seg-1", "seg01", "gateway", "segx"] {
            assert_eq!(segment_index(bad), None, "{bad}");
        }
        assert_eq!(stage_urls_variable(3), "stage3_urls");
        assert_eq!(service_chaining_url(0), "http://seg0.spin.internal");
    }
}
