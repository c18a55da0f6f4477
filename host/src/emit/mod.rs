//! Writing segments and shards: each one a standalone ONNX model (its nodes, only the weights it reads,
//! typed inputs and outputs, the source's operator sets, the joins of the partial outputs it receives),
//! and the output folder written all at once or not at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::{
    self, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::onnx::{Graph, OnnxModel, TensorKind};
use crate::plan::Planned;
use crate::plan::dag::{Body, Unit};
use crate::plan::file::{JoinSpec, TensorSpec};
use crate::plan::shard::{Join, Strategy};
use crate::{Error, Result, progress};

mod bands;
mod shard;

/// Metadata keys carried by every segment model, read by the segment runtime.
pub mod keys {
    /// The source model's name.
    pub const MODEL: &str = "netless.model";
    /// The segment's index in the pipeline.
    pub const INDEX: &str = "netless.segment.index";
    /// The number of segments.
    pub const COUNT: &str = "netless.segment.count";
    /// sha256 of the source model.
    pub const SOURCE_SHA256: &str = "netless.source.sha256";
}

/// The ONNX model of function `index` of `count` (a segment or a shard), with the joins it runs first.
pub fn unit_model(model: &OnnxModel, graph: &Graph, planned: &Planned, unit: &Unit, index: usize, count: usize) -> Result<ModelProto> {
    let source = model.graph();
    let mut node_protos: Vec<NodeProto> = unit.joins.iter().map(join_node).collect();
    let mut initializers = Vec::new();
    match &unit.body {
        Body::Segment { .. } => {
            let nodes = unit.nodes(planned);
            let weights: BTreeSet<usize> =
                nodes.iter().flat_map(|&n| graph.nodes[n].inputs.iter().copied()).filter(|&t| graph.tensors[t].is_weight()).collect();
            for &w in &weights {
                match (weight_initializer(model, graph, w), graph.tensors[w].kind) {
                    (Some(initializer), _) => initializers.push(initializer),
                    (None, TensorKind::Constant(i)) => node_protos.push(source.node[i].clone()),
                    (None, _) => unreachable!("only a Constant may have no tensor value"),
                }
            }
            node_protos.extend(nodes.iter().map(|&n| source.node[graph.nodes[n].proto_index].clone()));
        }
        Body::Shard { plan, index } => {
            let (nodes, weights) = match plan.layout.strategy {
                Strategy::Bands => bands::band_graph(model, graph, plan, *index)?,
                _ => shard::shard_graph(model, graph, plan, *index)?,
            };
            node_protos.extend(nodes);
            initializers.extend(weights);
        }
    }
    let metadata = [
        (keys::MODEL, model.name()),
        (keys::INDEX, index.to_string()),
        (keys::COUNT, count.to_string()),
        (keys::SOURCE_SHA256, model.sha256.clone()),
    ];
    Ok(ModelProto {
        ir_version: model.proto.ir_version.max(4),
        opset_import: model.proto.opset_import.clone(),
        producer_name: "netless".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        functions: model.proto.functions.clone(),
        metadata_props: metadata
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: key.into(), value })
            .collect(),
        graph: Some(GraphProto {
            name: format!("{}-seg-{index}", model.name()),
            node: node_protos,
            initializer: initializers,
            input: unit.inputs.iter().map(value_info).collect(),
            output: unit.outputs.iter().map(value_info).collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The node making a joined tensor from its partials: `Concat` on the axis, or `Sum`.
fn join_node(join: &JoinSpec) -> NodeProto {
    let (op_type, attribute) = match join.join {
        Join::Concat { axis } => ("Concat", vec![shard::int_attribute("axis", axis)]),
        Join::Sum => ("Sum", vec![]),
    };
    NodeProto {
        name: format!("netless.join.{}", join.tensor),
        op_type: op_type.into(),
        input: join.partials.clone(),
        output: vec![join.tensor.clone()],
        attribute,
        ..Default::default()
    }
}

/// The weight `t` as an initializer with its values in `raw_data` ([`with_raw_data`]), whatever holds it in
/// the source: an initializer, a `Constant` node's `value`, or a value folded from weights. `None` for a
/// `Constant` of another form (`value_floats`...), which stays a node.
pub(crate) fn weight_initializer(model: &OnnxModel, graph: &Graph, t: usize) -> Option<pb::TensorProto> {
    let source = model.graph();
    let tensor = &graph.tensors[t];
    let mut proto = match tensor.kind {
        TensorKind::Initializer(i) => source.initializer[i].clone(),
        TensorKind::Constant(i) => source.node[i].attribute.iter().find_map(|a| if a.name == "value" { a.t.clone() } else { None })?,
        TensorKind::Folded(i) => folded_initializer(graph, t, &graph.folded[i]),
        _ => unreachable!("weights are initializers, constants or folded"),
    };
    proto.name = tensor.name.clone();
    Some(with_raw_data(proto))
}

/// `tensor` with its values in `raw_data` (little-endian) rather than in the typed fields
/// (`float_data`, `int32_data`...), which some exporters write: the segment runtime reads a large
/// `raw_data` straight from the blob into its tensor, while a typed field is decoded whole with the
/// model, held beside the tensor made from it (mtcnn_onet's 1.1 MiB dense layer cost 8 MiB more to
/// prepare). String tensors and tensors already raw are returned as they are.
pub(crate) fn with_raw_data(mut tensor: pb::TensorProto) -> pb::TensorProto {
    use pb::tensor_proto::DataType as D;
    if !tensor.raw_data.is_empty() {
        return tensor;
    }
    let narrow = |values: &[i32], bytes: usize| values.iter().flat_map(|v| v.to_le_bytes()[..bytes].to_vec()).collect::<Vec<u8>>();
    let raw: Vec<u8> = match D::try_from(tensor.data_type) {
        Ok(D::Float) => tensor.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Ok(D::Double) => tensor.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Ok(D::Int64) => tensor.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Ok(D::Uint64) => tensor.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Ok(D::Uint32) => tensor.uint64_data.iter().flat_map(|v| (*v as u32).to_le_bytes()).collect(),
        Ok(D::Int32) => narrow(&tensor.int32_data, 4),
        Ok(D::Int16 | D::Uint16 | D::Float16 | D::Bfloat16) => narrow(&tensor.int32_data, 2),
        Ok(D::Int8 | D::Uint8 | D::Bool) => narrow(&tensor.int32_data, 1),
        _ => return tensor,
    };
    if raw.is_empty() {
        return tensor;
    }
    tensor.raw_data = raw;
    tensor.float_data.clear();
    tensor.double_data.clear();
    tensor.int32_data.clear();
    tensor.int64_data.clear();
    tensor.uint64_data.clear();
    tensor
}

/// An initializer holding a folded value, in the tensor's declared element type.
pub(crate) fn folded_initializer(graph: &Graph, t: usize, value: &tract_onnx::prelude::Tensor) -> pb::TensorProto {
    let tensor = &graph.tensors[t];
    let dt = tensor.dtype.to_tract().expect("folded tensors have tract types");
    let cast = value.cast_to_dt(dt).expect("folded values cast to their declared type");
    pb::TensorProto {
        name: tensor.name.clone(),
        dims: tensor.shape.iter().map(|&d| d as i64).collect(),
        data_type: tensor.dtype.onnx_code(),
        raw_data: cast.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The name, type and shape of a tensor of the graph.
pub fn tensor_spec(graph: &Graph, t: usize) -> TensorSpec {
    let tensor = &graph.tensors[t];
    TensorSpec { name: tensor.name.clone(), dtype: tensor.dtype, shape: tensor.shape.clone() }
}

fn value_info(spec: &TensorSpec) -> ValueInfoProto {
    let dim = spec
        .shape
        .iter()
        .map(|&d| pb::tensor_shape_proto::Dimension {
            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: spec.name.clone(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: spec.dtype.onnx_code(),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Encodes a model to bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `files` (name, bytes) into `out` all at once: into a sibling folder first, renamed into place
/// when every file is written. An existing `out` is replaced only if it is empty or a previous NetLess
/// output (it holds a plan.json).
pub fn write_folder(out: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    if out.exists() {
        let is_ours = out.join(crate::plan::file::FILE_NAME).is_file();
        let is_empty = out.read_dir().map_err(Error::io(out))?.next().is_none();
        if !out.is_dir() || !(is_ours || is_empty) {
            return Err(Error::Plan {
                path: out.to_owned(),
                reason: "exists and is not a NetLess output folder; refusing to overwrite it".into(),
            });
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io(&parent))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let result = write_staged(&staging, files).and_then(|()| {
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(Error::io(out))?;
        }
        std::fs::rename(&staging, out).map_err(Error::io(out))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn write_staged(staging: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    std::fs::create_dir_all(staging).map_err(Error::io(staging))?;
    let total = files.iter().map(|(_, b)| b.len() as u64).sum();
    let bar = progress::bytes(total, "writing");
    for (name, bytes) in files {
        let path = staging.join(name);
        std::fs::write(&path, bytes).map_err(Error::io(&path))?;
        bar.inc(bytes.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}
