//! Reading an ONNX file: protobuf decoding with progress, sanity checks, and inlining of external data.

use netless_oip::Name;
use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::{GraphProto, ModelProto, TensorProto};

use crate::{Error, Result, progress};

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// An ONNX model as read from disk, with external data already inlined.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    /// Where it was read from.
    pub path: PathBuf,
    /// The decoded protobuf.
    pub proto: ModelProto,
    /// sha256 of the file's bytes, lower-case hex.
    pub sha256: String,
    /// Size of the file in bytes.
    pub file_bytes: u64,
}

impl OnnxModel {
    /// Reads, decodes and checks an ONNX file, showing a progress bar on a terminal.
    pub fn load(path: &Path) -> Result<OnnxModel> {
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        let bar = progress::bytes(len, "loading");
        let mut bytes = Vec::with_capacity(len as usize);
        bar.wrap_read(file).read_to_end(&mut bytes).map_err(Error::io(path))?;
        bar.finish_and_clear();
        let mut model = Self::from_bytes(path, &bytes)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        inline_external_data(path, dir, &mut model.proto)?;
        Ok(model)
    }

    /// Decodes and checks ONNX bytes; `path` only names the model in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<OnnxModel> {
        let not_onnx = |reason: String| Error::NotOnnx { path: path.to_owned(), reason };
        let proto = ModelProto::decode(bytes).map_err(|e| {
            not_onnx(format!("protobuf decoding failed ({e}); the file is truncated, corrupt or not ONNX"))
        })?;
        if proto.ir_version <= 0 {
            return Err(not_onnx("it has no ir_version".into()));
        }
        if proto.opset_import.is_empty() {
            return Err(not_onnx("it imports no operator set".into()));
        }
        let graph = proto.graph.as_ref().ok_or_else(|| not_onnx("it has no graph".into()))?;
        if graph.node.is_empty() {
            return Err(not_onnx("its graph has no nodes".into()));
        }
        if graph.output.is_empty() {
            return Err(not_onnx("its graph has no outputs".into()));
        }
        if let Some(reason) = malformed_node(graph) {
            return Err(not_onnx(reason));
        }
        Ok(OnnxModel {
            path: path.to_owned(),
            sha256: hex(&Sha256::digest(bytes)),
            file_bytes: bytes.len() as u64,
            proto,
        })
    }

    /// The graph (checked to be present when the model was loaded).
    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    /// The model's name: the file stem.
    pub fn name(&self) -> String {
        self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces every tensor stored in an external file (`.onnx.data`) with its bytes, so that segments are
/// self-contained.
fn inline_external_data(path: &Path, dir: &Path, proto: &mut ModelProto) -> Result<()> {
    let Some(graph) = proto.graph.as_mut() else { return Ok(()) };
    let tensors = graph.initializer.iter_mut().chain(
        graph.node.iter_mut().flat_map(|n| n.attribute.iter_mut()).filter_map(|a| a.t.as_mut()),
    );
    for tensor in tensors {
        if tensor.data_location == Some(EXTERNAL) {
            tensor.raw_data = read_external(path, dir, tensor)?;
            tensor.data_location = None;
            tensor.external_data.clear();
        }
    }
    Ok(())
}

fn read_external(path: &Path, dir: &Path, tensor: &TensorProto) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::NotOnnx {
        path: path.to_owned(),
        reason: format!("tensor {}: external data {reason}", Name(&tensor.name)),
    };
    let entry = |key: &str| tensor.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str());
    let location = entry("location").ok_or_else(|| bad("has no location".into()))?;
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key).map(|v| v.parse::<u64>().map_err(|_| bad(format!("has a bad {key} {}", Name(v))))).transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let file = dir.join(location);
    if Path::new(location).is_absolute() || location.split(['/', '\\']).any(|p| p == "..") {
        return Err(bad(format!("location {} leaves the model's folder", Name(location))));
    }
    let data = std::fs::read(&file).map_err(Error::io(&file))?;
    let length = number("length")?.unwrap_or(data.len() as u64 - offset.min(data.len() as u64));
    let end = offset.checked_add(length).filter(|&e| e <= data.len() as u64).ok_or_else(|| {
        bad(format!("range {offset}+{length} is past the end of {} ({} bytes)", file.display(), data.len()))
    })?;
    Ok(data[offset as usize..end as usize].to_vec())
}

/// Most positions a pooling or convolution window may have (4096 x 4096). tract lists every position
/// while it prepares a node, before anything checks the window against its input (and while it folds a
/// node on constants, before NetLess sees the typed model): a kernel of 2^31 kept it busy for hours.
const MAX_WINDOW: u64 = 1 << 24;

/// Why a node, in the graph or a subgraph, cannot be prepared, if one cannot: a `kernel_shape` with
/// a dimension below 1 or more than [`MAX_WINDOW`] positions, or a Transpose `perm` that is not a
/// permutation (tract's typing of `perm` [0, 3, 0, 2] ran for minutes).
fn malformed_node(graph: &GraphProto) -> Option<String> {
    for node in &graph.node {
        let name = if node.name.is_empty() { node.output.first().map(String::as_str).unwrap_or_default() } else { &node.name };
        if let Some(kernel) = node.attribute.iter().find(|a| a.name == "kernel_shape") {
            let positions = kernel.ints.iter().try_fold(1u64, |n, &d| u64::try_from(d).ok().filter(|&d| d > 0).and_then(|d| n.checked_mul(d)));
            if !positions.is_some_and(|p| p <= MAX_WINDOW) {
                return Some(format!("node {} ({}) has kernel_shape {:?}: a window needs dimensions above 0 and at most {MAX_WINDOW} positions", Name(name), node.op_type, kernel.ints));
            }
        }
        if let Some(perm) = node.attribute.iter().find(|a| a.name == "perm").filter(|_| node.op_type == "Transpose") {
            let mut sorted = perm.ints.clone();
            sorted.sort_unstable();
            if !sorted.iter().zip(0..).all(|(&axis, i)| axis == i) {
                return Some(format!("node {} (Transpose) has perm {:?}: it must list every axis from 0 to {} once", Name(name), perm.ints, perm.ints.len().saturating_sub(1)));
            }
        }
        if let Some(reason) = node.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs)).find_map(malformed_node) {
            return Some(reason);
        }
    }
    None
}
