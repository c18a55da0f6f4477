//! A pipeline as its gateway sees it: the model's tensors, and for each stage the segment model to
//! call and the tensors to send it.

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
