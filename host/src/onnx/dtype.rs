//! Element types: ONNX's numbering, byte sizes, names and their tract equivalents.

use serde::{Deserialize, Serialize};
use tract_onnx::prelude::DatumType;

/// The element type of a tensor, as ONNX numbers it (`TensorProto.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum ElemType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    Bf16,
}

impl ElemType {
    /// The type its tensors have on the wire and across the WIT boundary; `None` for strings.
    pub fn wire_type(self) -> Option<netless_oip::DType> {
        use netless_oip::DType;
        Some(match self {
            ElemType::F32 => DType::F32,
            ElemType::F64 => DType::F64,
            ElemType::F16 => DType::F16,
            ElemType::Bf16 => DType::Bf16,
            ElemType::U8 => DType::U8,
            ElemType::I8 => DType::I8,
            ElemType::U16 => DType::U16,
            ElemType::I16 => DType::I16,
            ElemType::U32 => DType::U32,
            ElemType::I32 => DType::I32,
            ElemType::U64 => DType::U64,
            ElemType::I64 => DType::I64,
            ElemType::Bool => DType::Boolean,
            ElemType::String => return None,
        })
    }

    /// From ONNX's `TensorProto.DataType` code.
    pub fn from_onnx(code: i32) -> Option<ElemType> {
        use ElemType::*;
        Some(match code {
            1 => F32,
            2 => U8,
            3 => I8,
            4 => U16,
            5 => I16,
            6 => I32,
            7 => I64,
            8 => String,
            9 => Bool,
            10 => F16,
            11 => F64,
            12 => U32,
            13 => U64,
            16 => Bf16,
            _ => return None,
        })
    }

    /// ONNX's `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        use ElemType::*;
        match self {
            F32 => 1,
            U8 => 2,
            I8 => 3,
            U16 => 4,
            I16 => 5,
            I32 => 6,
            I64 => 7,
            String => 8,
            Bool => 9,
            F16 => 10,
            F64 => 11,
            U32 => 12,
            U64 => 13,
            Bf16 => 16,
        }
    }

    /// Bytes per element (strings are counted as 16, a rough pointer-and-length).
    pub fn size(self) -> u64 {
        use ElemType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 | F16 | Bf16 => 2,
            F32 | I32 | U32 => 4,
            F64 | I64 | U64 => 8,
            String => 16,
        }
    }

    /// The type tract computes with. tract keeps shape arithmetic as `TDim` and quantized values as `QU8`
    /// and `QI8`; those map back to ONNX's `int64`, `uint8` and `int8`.
    pub fn from_tract(dt: DatumType) -> Option<ElemType> {
        use ElemType::*;
        Some(match dt {
            DatumType::F32 => F32,
            DatumType::U8 | DatumType::QU8(_) => U8,
            DatumType::I8 | DatumType::QI8(_) => I8,
            DatumType::U16 => U16,
            DatumType::I16 => I16,
            DatumType::I32 | DatumType::QI32(_) => I32,
            DatumType::I64 | DatumType::TDim => I64,
            DatumType::String => String,
            DatumType::Bool => Bool,
            DatumType::F16 => F16,
            DatumType::F64 => F64,
            DatumType::U32 => U32,
            DatumType::U64 => U64,
            _ => return None,
        })
    }

    /// The tract type holding this element type, if tract has one.
    pub fn to_tract(self) -> Option<DatumType> {
        use ElemType::*;
        Some(match self {
            F32 => DatumType::F32,
            U8 => DatumType::U8,
            I8 => DatumType::I8,
            U16 => DatumType::U16,
            I16 => DatumType::I16,
            I32 => DatumType::I32,
            I64 => DatumType::I64,
            String => DatumType::String,
            Bool => DatumType::Bool,
            F16 => DatumType::F16,
            F64 => DatumType::F64,
            U32 => DatumType::U32,
            U64 => DatumType::U64,
            Bf16 => return None,
        })
    }

    /// Whether comparisons of this type are exact (integers, booleans) rather than within a tolerance.
    pub fn is_exact(self) -> bool {
        !matches!(self, ElemType::F32 | ElemType::F16 | ElemType::F64 | ElemType::Bf16)
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("?"))
    }
}
