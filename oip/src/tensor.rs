//! Tensors as NetLess passes them around: named, typed, little-endian row-major bytes.

/// Element type of a tensor (the WIT `tensor-type` of `netless:inference`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// bfloat16.
    Bf16,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// One byte, 0 or 1.
    Boolean,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Boolean => 1,
            DType::F16 | DType::Bf16 | DType::U16 | DType::I16 => 2,
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F64 | DType::U64 | DType::I64 => 8,
        }
    }
}

/// A dense tensor: `data` holds `product(shape) * dtype.size()` little-endian bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The tensor's name in the segment's contract.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Little-endian, row-major elements.
    pub data: Vec<u8>,
}

impl Tensor {
    /// An `f32` tensor from values (written little-endian).
    pub fn from_f32(name: impl Into<String>, shape: Vec<u64>, values: &[f32]) -> Tensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data,
        }
    }

    /// The elements as `f32`, or `None` if the tensor is not `f32`.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
    }
}

