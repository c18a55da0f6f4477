//! Small ONNX models built in code, for cases no shipped model covers.

use netless::onnx::pb::{self, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use prost::Message;

/// A float tensor type of the given shape.
pub fn value(name: &str, shape: &[i64]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| pb::tensor_shape_proto::Dimension { value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)), ..Default::default() })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: 1, shape: Some(pb::TensorShapeProto { dim }) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float initializer with deterministic values.
pub fn weight(name: &str, shape: &[i64], seed: u32) -> TensorProto {
    let len: i64 = shape.iter().product();
    let float_data = (0..len).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0) - 0.5).collect();
    TensorProto { name: name.into(), dims: shape.to_vec(), data_type: 1, float_data, ..Default::default() }
}

/// A node.
pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: outputs[0].to_string(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A graph-valued attribute.
pub fn graph_attribute(name: &str, graph: GraphProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 5, g: Some(graph), ..Default::default() }
}

/// A model (opset 17) around a graph.
pub fn model(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// Writes a model to a file and returns its path.
pub fn save(dir: &std::path::Path, name: &str, model: &ModelProto) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, model.encode_to_vec()).expect("write model");
    path
}

/// A tensor type of any element type (`TensorProto.DataType`); `None` leaves the shape unknown.
pub fn typed_value(name: &str, elem_type: i32, shape: Option<&[i64]>) -> ValueInfoProto {
    let mut info = value(name, shape.unwrap_or(&[]));
    if let Some(pb::type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.elem_type = elem_type;
        if shape.is_none() {
            t.shape = None;
        }
    }
    info
}

/// An integer-list attribute.
pub fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 7, ints: values.to_vec(), ..Default::default() }
}

/// An integer attribute.
pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 2, i: value, ..Default::default() }
}

/// An int8 initializer with deterministic values, as raw bytes.
pub fn int8_weight(name: &str, shape: &[i64], seed: u32) -> TensorProto {
    let len: i64 = shape.iter().product();
    let raw_data = (0..len).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 24) as u8).collect();
    TensorProto { name: name.into(), dims: shape.to_vec(), data_type: 3, raw_data, ..Default::default() }
}
