//! The segment's tensor contract: its metadata, and validating inputs.

use std::collections::HashSet;

use tract_onnx::pb::{self, tensor_shape_proto::dimension, type_proto};

use crate::netless::inference::types::{Error, SegmentInfo, Tensor, TensorSpec, TensorType};

/// The segment's identity and tensor contract, taken from the ONNX graph and metadata.
pub struct Contract {
    /// What `info` reports.
    pub info: SegmentInfo,
}

impl Contract {
    /// Reads the `netless.*` metadata and the graph's declared inputs and outputs.
    ///
    /// Without metadata the model name is the graph's name and the segment is the only one (0 of 1).
    /// Graph inputs that are initializers (older exporters list weights as inputs) are not inputs.
    pub fn from_proto(proto: &pb::ModelProto) -> Result<Contract, String> {
        let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
        let meta = |key: &str| {
            proto
                .metadata_props
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.as_str())
        };
        let number = |key: &str, default: u32| match meta(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .map_err(|e| format!("metadata `{key}` = `{v}`: {e}")),
        };
        let weights: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|v| !weights.contains(v.name.as_str()))
            .map(spec)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph
            .output
            .iter()
            .map(spec)
            .collect::<Result<Vec<_>, _>>()?;
        let info = SegmentInfo {
            model: meta("netless.model").unwrap_or(&graph.name).to_string(),
            index: number("netless.segment.index", 0)?,
            count: number("netless.segment.count", 1)?,
            inputs,
            outputs,
        };
        Ok(Contract { info })
    }

    /// Checks `inputs` against the declared inputs and returns them in declared order.
    pub fn validate(&self, mut inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let invalid = |msg: String| Error::InvalidInput(msg);
        for (i, t) in inputs.iter().enumerate() {
            if !self.info.inputs.iter().any(|s| s.name == t.name) {
                let declared: Vec<&str> =
                    self.info.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid(format!(
                    "unknown input `{}` (declared: {declared:?})",
                    t.name
                )));
            }
            if inputs[..i].iter().any(|u| u.name == t.name) {
                return Err(invalid(format!("input `{}` given more than once", t.name)));
            }
        }
        let mut ordered = Vec::with_capacity(self.info.inputs.len());
        for spec in &self.info.inputs {
            let at = inputs
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| invalid(format!("missing input `{}`", spec.name)))?;
            let t = inputs.swap_remove(at);
            check(spec, &t).map_err(|m| invalid(format!("input `{}`: {m}", spec.name)))?;
            ordered.push(t);
        }
        Ok(ordered)
    }
}

/// Checks one tensor's type, shape and byte count against its spec.
fn check(spec: &TensorSpec, t: &Tensor) -> Result<(), String> {
    if t.ty != spec.ty {
        return Err(format!(
            "type {}, declared {}",
            type_name(t.ty),
            type_name(spec.ty)
        ));
    }
    let dims_ok = t.shape.len() == spec.shape.len()
        && t.shape
            .iter()
            .zip(&spec.shape)
            .all(|(d, s)| s.is_none_or(|s| s == *d));
    if !dims_ok {
        return Err(format!(
            "shape {:?}, declared {}",
            t.shape,
            show_shape(&spec.shape)
        ));
    }
    let expected = t
        .shape
        .iter()
        .try_fold(elem_size(t.ty), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", t.shape))?;
    if t.data.len() as u64 != expected {
        return Err(format!(
            "{} data bytes, shape {:?} of {} needs {expected}",
            t.data.len(),
            t.shape,
            type_name(t.ty)
        ));
    }
    if t.ty == TensorType::Boolean && t.data.iter().any(|&b| b > 1) {
        return Err("boolean data holds a byte other than 0 or 1".to_string());
    }
    Ok(())
}

fn show_shape(shape: &[Option<u64>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

/// The WIT name of a tensor type, for messages.
pub fn type_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::F16 => "f16",
        TensorType::F32 => "f32",
        TensorType::F64 => "f64",
        TensorType::Bf16 => "bf16",
        TensorType::U8 => "u8",
        TensorType::I8 => "i8",
        TensorType::U16 => "u16",
        TensorType::I16 => "i16",
        TensorType::U32 => "u32",
        TensorType::I32 => "i32",
        TensorType::U64 => "u64",
        TensorType::I64 => "i64",
        TensorType::Boolean => "boolean",
    }
}

/// Bytes per element of a tensor type.
pub fn elem_size(ty: TensorType) -> u64 {
    match ty {
        TensorType::U8 | TensorType::I8 | TensorType::Boolean => 1,
        TensorType::F16 | TensorType::Bf16 | TensorType::U16 | TensorType::I16 => 2,
        TensorType::F32 | TensorType::U32 | TensorType::I32 => 4,
        TensorType::F64 | TensorType::U64 | TensorType::I64 => 8,
    }
}

fn spec(value: &pb::ValueInfoProto) -> Result<TensorSpec, String> {
    let tensor = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => return Err(format!("`{}` is not a tensor", value.name)),
    };
    let ty = onnx_type(tensor.elem_type).ok_or_else(|| {
        format!(
            "`{}` has ONNX element type {}, not supported",
            value.name, tensor.elem_type
        )
    })?;
    let shape = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) => u64::try_from(v).ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(TensorSpec {
        name: value.name.clone(),
        ty,
        shape,
    })
}

/// Maps an ONNX `TensorProto.DataType` to the WIT tensor type.
fn onnx_type(elem_type: i32) -> Option<TensorType> {
    Some(match elem_type {
        1 => TensorType::F32,
        2 => TensorType::U8,
        3 => TensorType::I8,
        4 => TensorType::U16,
        5 => TensorType::I16,
        6 => TensorType::I32,
        7 => TensorType::I64,
        9 => TensorType::Boolean,
        10 => TensorType::F16,
        11 => TensorType::F64,
        12 => TensorType::U32,
        13 => TensorType::U64,
        16 => TensorType::Bf16,
        _ => return None,
    })
}
