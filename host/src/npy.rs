//! Tensors in `.npy` files: reading inputs and writing outputs in the element type the model declares.

use std::path::Path;

use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ndarray::ArrayD;

use crate::onnx::ElemType;
use crate::{Error, Result};

/// Reads `path` as a tensor of element type `dtype`.
pub fn read(path: &Path, name: &str, dtype: ElemType) -> Result<Tensor> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let bad = |e: ndarray_npy::ReadNpyError| Error::Tensor {
        name: name.into(),
        reason: format!("{}: not a {dtype} .npy array: {e}", path.display()),
    };
    Ok(match dtype {
        ElemType::F32 => ArrayD::<f32>::read_npy(file).map_err(bad)?.into(),
        ElemType::F64 => ArrayD::<f64>::read_npy(file).map_err(bad)?.into(),
        ElemType::I64 => ArrayD::<i64>::read_npy(file).map_err(bad)?.into(),
        ElemType::I32 => ArrayD::<i32>::read_npy(file).map_err(bad)?.into(),
        ElemType::I16 => ArrayD::<i16>::read_npy(file).map_err(bad)?.into(),
        ElemType::I8 => ArrayD::<i8>::read_npy(file).map_err(bad)?.into(),
        ElemType::U8 => ArrayD::<u8>::read_npy(file).map_err(bad)?.into(),
        ElemType::U16 => ArrayD::<u16>::read_npy(file).map_err(bad)?.into(),
        ElemType::U32 => ArrayD::<u32>::read_npy(file).map_err(bad)?.into(),
        ElemType::U64 => ArrayD::<u64>::read_npy(file).map_err(bad)?.into(),
        ElemType::Bool => ArrayD::<bool>::read_npy(file).map_err(bad)?.into(),
        other => return Err(Error::Tensor { name: name.into(), reason: format!(".npy input of type {other} is not supported") }),
    })
}

/// Writes a tensor to `path`.
pub fn write(path: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    let file = std::fs::File::create(path).map_err(Error::io(path))?;
    let failed = |e: String| Error::Tensor { name: name.into(), reason: format!("writing {}: {e}", path.display()) };
    macro_rules! write_as {
        ($t:ty) => {
            tensor.to_plain_array_view::<$t>().map_err(|e| failed(e.to_string()))?.write_npy(file).map_err(|e| failed(e.to_string()))
        };
    }
    match tensor.datum_type() {
        DatumType::F32 => write_as!(f32),
        DatumType::F64 => write_as!(f64),
        DatumType::I64 => write_as!(i64),
        DatumType::I32 => write_as!(i32),
        DatumType::I16 => write_as!(i16),
        DatumType::I8 => write_as!(i8),
        DatumType::U8 => write_as!(u8),
        DatumType::U16 => write_as!(u16),
        DatumType::U32 => write_as!(u32),
        DatumType::U64 => write_as!(u64),
        DatumType::Bool => write_as!(bool),
        other => Err(failed(format!("element type {other:?} has no .npy form here"))),
    }
}
