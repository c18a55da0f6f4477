//! Tensors in `.npy` files: reading inputs and writing outputs in the element type the model declares.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ndarray::ArrayD;

use crate::onnx::ElemType;
use crate::{Error, Result};

/// Reads `path` as a tensor of element type `dtype`. A header that declares more data than the file
/// holds is refused before anything is allocated for it.
pub fn read(path: &Path, name: &str, dtype: ElemType) -> Result<Tensor> {
    let mut file = std::fs::File::open(path).map_err(Error::io(path))?;
    let refuse = |reason: String| Error::Tensor { name: name.into(), reason: format!("{}: not a {dtype} .npy array: {reason}", path.display()) };
    let header = Header::from_reader(&mut file).map_err(|e| refuse(e.to_string()))?;
    let data = file.metadata().map_err(Error::io(path))?.len().saturating_sub(file.stream_position().map_err(Error::io(path))?);
    let declared = header.shape.iter().try_fold(dtype.size(), |n, &d| n.checked_mul(d as u64));
    if declared.is_none_or(|bytes| bytes > data) {
        let bytes = declared.map_or("more than 2^64".to_string(), |b| b.to_string());
        return Err(refuse(format!("its header declares shape {:?} ({bytes} bytes of {dtype}), but the file holds {data} bytes of data", header.shape)));
    }
    file.seek(SeekFrom::Start(0)).map_err(Error::io(path))?;
    let bad = |e: ndarray_npy::ReadNpyError| refuse(e.to_string());
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
