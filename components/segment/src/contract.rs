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

/// The contract checks, fuzzed: the blob's contract as decoded from any bytes, and `validate` on
/// any tensors. Runs natively: `cargo test -p netless-segment --lib` (see docs/fuzzing.md).
#[cfg(test)]
mod fuzz {
    use netless_fuzz::{Target, fuzz};
    use prost::Message;
    use tract_onnx::pb::{self, tensor_shape_proto::Dimension};

    use super::*;

    const TYPES: [TensorType; 13] = [
        TensorType::F16, TensorType::F32, TensorType::F64, TensorType::Bf16, TensorType::U8, TensorType::I8, TensorType::U16,
        TensorType::I16, TensorType::U32, TensorType::I32, TensorType::U64, TensorType::I64, TensorType::Boolean,
    ];
    const NAMES: [&str; 4] = ["x", "mask", "ids", "other"];

    fn corpus(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(name)
    }

    fn value(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Some(v) => dimension::Value::DimValue(*v),
                    None => dimension::Value::DimParam("n".into()),
                }),
                ..Default::default()
            })
            .collect();
        let tensor = type_proto::Tensor { elem_type, shape: Some(pb::TensorShapeProto { dim }) };
        pb::ValueInfoProto { name: name.into(), r#type: Some(pb::TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }), ..Default::default() }
    }

    /// A segment's model: three inputs of different types, one dynamic dimension, one weight
    /// listed as an input, metadata.
    fn segment() -> pb::ModelProto {
        let meta = |k: &str, v: &str| pb::StringStringEntryProto { key: k.into(), value: v.into() };
        pb::ModelProto {
            ir_version: 8,
            metadata_props: vec![meta("netless.model", "m"), meta("netless.segment.index", "1"), meta("netless.segment.count", "3")],
            graph: Some(pb::GraphProto {
                name: "m-seg-1".into(),
                input: vec![value("x", 1, &[None, Some(4)]), value("mask", 9, &[Some(2)]), value("ids", 7, &[Some(3)]), value("w", 1, &[Some(4)])],
                output: vec![value("y", 1, &[None, Some(4)]), value("ids", 7, &[Some(3)])],
                initializer: vec![pb::TensorProto { name: "w".into(), dims: vec![4], data_type: 1, float_data: vec![1.0; 4], ..Default::default() }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Tensors as the inputs target reads them: per tensor a name, type, rank, dimensions (255 is
    /// u64::MAX) and a data length byte, then that many data bytes (or 16 times as many).
    fn tensors(input: &[u8]) -> Vec<Tensor> {
        let mut bytes = input.iter().copied();
        let mut out = Vec::new();
        while let (Some(name), Some(ty), Some(rank)) = (bytes.next(), bytes.next(), bytes.next()) {
            let shape = (0..rank % 4).map(|_| bytes.next().map_or(1, |d| if d == 255 { u64::MAX } else { d as u64 })).collect();
            let len = bytes.next().map_or(0, |l| if l & 0x80 != 0 { (l as usize & 0x7f) * 16 } else { l as usize });
            let data = bytes.by_ref().take(len).collect();
            out.push(Tensor { name: NAMES[name as usize % NAMES.len()].into(), ty: TYPES[ty as usize % TYPES.len()], shape, data });
        }
        out
    }

    fn encode(tensors: &[(usize, usize, &[u8], Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, ty, shape, data) in tensors {
            out.extend([*name as u8, *ty as u8, shape.len() as u8]);
            out.extend_from_slice(shape);
            out.push(data.len() as u8);
            out.extend_from_slice(data);
        }
        out
    }

    /// A tensor that fits `spec`, dynamic dimensions taken as 1; `None` if it would be large.
    fn fitting(spec: &TensorSpec) -> Option<Tensor> {
        let shape: Vec<u64> = spec.shape.iter().map(|d| d.unwrap_or(1)).collect();
        let bytes = shape.iter().try_fold(elem_size(spec.ty), |n, &d| n.checked_mul(d)).filter(|&n| n <= 1 << 20)?;
        Some(Tensor { name: spec.name.clone(), ty: spec.ty, shape, data: vec![0; bytes as usize] })
    }

    #[test]
    fn contracts_from_any_blob() {
        let mut plain = segment();
        plain.metadata_props.clear();
        let seeds = vec![segment().encode_to_vec(), plain.encode_to_vec()];
        let dictionary: &[&[u8]] = &[b"netless.segment.index", b"netless.segment.count", b"netless.model", b"\x08\x01", b"\x08\x10"];
        let target = Target { name: "contract-blob", corpus: corpus("contract-blob"), seeds, dictionary, mutators: vec![] };
        let report = fuzz(target, |input| {
            let contract = Contract::from_proto(&decode(input.to_vec())?)?;
            let fitting: Option<Vec<Tensor>> = contract.info.inputs.iter().map(fitting).collect();
            if let Some(inputs) = fitting {
                let names: HashSet<&str> = contract.info.inputs.iter().map(|s| s.name.as_str()).collect();
                if names.len() == inputs.len() {
                    contract.validate(inputs).expect("tensors made to the contract pass it");
                }
            }
            Ok(())
        });
        assert!(report.executions > 100 && report.verdicts > 3, "{report:?}");
    }

    #[test]
    fn inputs_against_a_contract() {
        let contract = Contract::from_proto(&segment()).unwrap();
        assert_eq!(contract.info.inputs.len(), 3, "the weight is not an input");
        let x = (0, 1, &[2u8, 4][..], vec![0u8; 32]);
        let mask = (1, 12, &[2u8][..], vec![1, 0]);
        let ids = (2, 11, &[3u8][..], vec![7u8; 24]);
        let seeds = vec![encode(&[x.clone(), mask.clone(), ids.clone()]), encode(&[ids, mask, x])];
        let target = Target { name: "contract-inputs", corpus: corpus("contract-inputs"), seeds, dictionary: &[], mutators: vec![] };
        let report = fuzz(target, |input| {
            let ordered = contract.validate(tensors(input)).map_err(|e| format!("{e:?}"))?;
            assert_eq!(ordered.len(), contract.info.inputs.len());
            for (spec, t) in contract.info.inputs.iter().zip(&ordered) {
                assert_eq!((&spec.name, spec.ty), (&t.name, t.ty), "inputs come back in declared order");
                let bytes = t.shape.iter().try_fold(elem_size(t.ty), |n, &d| n.checked_mul(d));
                assert_eq!(bytes, Some(t.data.len() as u64), "input `{}` holds its shape's bytes", t.name);
            }
            Ok(())
        });
        assert!(report.executions > 100 && report.verdicts > 5 && report.accepted > 0, "{report:?}");
    }
}
