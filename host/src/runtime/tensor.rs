//! Tensors as they cross the host/guest boundary: named, typed, little-endian row-major bytes.

use super::bindings::netless::inference::types as wit;

pub use netless_oip::{DType, Tensor};

/// A tensor's declared name, type and shape; `None` marks a dimension fixed only at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the contract.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `None` for a symbolic one.
    pub shape: Vec<Option<u64>>,
}

/// A segment's identity and tensor contract, as its component reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The model the segment was cut from.
    pub model: String,
    /// Position in the pipeline, from 0.
    pub index: u32,
    /// Number of segments in the pipeline.
    pub count: u32,
    /// Declared inputs.
    pub inputs: Vec<TensorSpec>,
    /// Declared outputs, in the order `infer` returns them.
    pub outputs: Vec<TensorSpec>,
}

impl From<wit::TensorType> for DType {
    fn from(t: wit::TensorType) -> DType {
        use wit::TensorType as W;
        match t {
            W::F16 => DType::F16,
            W::F32 => DType::F32,
            W::F64 => DType::F64,
            W::Bf16 => DType::Bf16,
            W::U8 => DType::U8,
            W::I8 => DType::I8,
            W::U16 => DType::U16,
            W::I16 => DType::I16,
            W::U32 => DType::U32,
            W::I32 => DType::I32,
            W::U64 => DType::U64,
            W::I64 => DType::I64,
            W::Boolean => DType::Boolean,
        }
    }
}

impl From<DType> for wit::TensorType {
    fn from(t: DType) -> wit::TensorType {
        use wit::TensorType as W;
        match t {
            DType::F16 => W::F16,
            DType::F32 => W::F32,
            DType::F64 => W::F64,
            DType::Bf16 => W::Bf16,
            DType::U8 => W::U8,
            DType::I8 => W::I8,
            DType::U16 => W::U16,
            DType::I16 => W::I16,
            DType::U32 => W::U32,
            DType::I32 => W::I32,
            DType::U64 => W::U64,
            DType::I64 => W::I64,
            DType::Boolean => W::Boolean,
        }
    }
}

impl From<wit::Tensor> for Tensor {
    fn from(t: wit::Tensor) -> Tensor {
        Tensor {
            name: t.name,
            dtype: t.ty.into(),
            shape: t.shape,
            data: t.data,
        }
    }
}

impl From<Tensor> for wit::Tensor {
    fn from(t: Tensor) -> wit::Tensor {
        wit::Tensor {
            name: t.name,
            ty: t.dtype.into(),
            shape: t.shape,
            data: t.data,
        }
    }
}

impl From<wit::TensorSpec> for TensorSpec {
    fn from(s: wit::TensorSpec) -> TensorSpec {
        TensorSpec {
            name: s.name,
            dtype: s.ty.into(),
            shape: s.shape,
        }
    }
}

impl From<wit::SegmentInfo> for SegmentInfo {
    fn from(i: wit::SegmentInfo) -> SegmentInfo {
        SegmentInfo {
            model: i.model,
            index: i.index,
            count: i.count,
            inputs: i.inputs.into_iter().map(Into::into).collect(),
            outputs: i.outputs.into_iter().map(Into::into).collect(),
        }
    }
}
