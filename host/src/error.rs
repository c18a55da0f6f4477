//! The errors of the NetLess library: each names the thing at fault.

use netless_oip::Name;
use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, planning, writing or verifying a split.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The file is not an ONNX model (or is truncated or corrupt).
    #[error("{}: not a valid ONNX model: {reason}", path.display())]
    NotOnnx {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model uses an operator that the runtime cannot run.
    #[error("node {} uses operator {}, which NetLess's runtime (tract) does not support", Name(.node), Name(.op))]
    UnsupportedOperator {
        /// The node's name.
        node: String,
        /// The operator, with its domain when not the default one.
        op: String,
    },
    /// An input's shape is missing, dynamic or malformed.
    #[error("input {}: {reason}", Name(.input))]
    InputShape {
        /// The model input.
        input: String,
        /// What is wrong and what to pass instead.
        reason: String,
    },
    /// Shapes or types could not be resolved for the given inputs.
    #[error("shape inference failed: {0}")]
    ShapeInference(String),
    /// tract cannot type, optimise or plan the model (or one of its segments) for these input shapes,
    /// so the segment runtime could not prepare it.
    #[error("{what} cannot be prepared by NetLess's runtime (tract) for these input shapes: {}{reason}", at_node(.node, .within))]
    Unpreparable {
        /// The model or segment.
        what: String,
        /// The innermost node tract names (empty when it names none).
        node: String,
        /// The nodes (If, Scan) whose subgraphs hold it, outermost first.
        within: Vec<String>,
        /// Why, from tract.
        reason: String,
    },
    /// One node alone needs more memory than the limit allows.
    #[error(
        "node `{node}` ({op}) alone needs an estimated {needed} bytes ({needed_mib:.1} MiB), over the limit of {limit} bytes, and it cannot be cut into shards (NetLess shards MatMul, Gemm, Conv and Gather with constant weights); the smallest limit that works is {smallest} bytes ({smallest_mib:.1} MiB)"
    )]
    NodeTooLarge {
        /// The node's name.
        node: String,
        /// Its operator.
        op: String,
        /// The estimate for a segment holding only this node.
        needed: u64,
        /// `needed` in MiB, for the message.
        needed_mib: f64,
        /// The memory limit asked for.
        limit: u64,
        /// The smallest limit for which any partition exists.
        smallest: u64,
        /// `smallest` in MiB, for the message.
        smallest_mib: f64,
    },
    /// A node over the limit that is cut into shards still does not fit, even one unit per shard.
    #[error(
        "node `{node}` ({op}) needs an estimated {needed_mib:.1} MiB whole, over the limit of {limit} bytes ({limit_mib:.1} MiB), and even cut into shards of one {unit} each a shard needs {shard_mib:.1} MiB; the smallest limit that works is {smallest} bytes ({smallest_mib:.1} MiB)"
    )]
    ShardTooLarge {
        /// The node's name.
        node: String,
        /// Its operator.
        op: String,
        /// What one unit of the cut is (`output column`, `table row`...).
        unit: String,
        /// The estimate for the node whole, in MiB.
        needed_mib: f64,
        /// The estimate for a shard of one unit, in MiB.
        shard_mib: f64,
        /// The memory limit asked for.
        limit: u64,
        /// `limit` in MiB.
        limit_mib: f64,
        /// The smallest limit for which any partition exists.
        smallest: u64,
        /// `smallest` in MiB, for the message.
        smallest_mib: f64,
    },
    /// The job does not support this plan yet.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// No partition satisfies the request.
    #[error("no partition fits: {0}")]
    Infeasible(String),
    /// A plan file or output folder is missing, malformed or inconsistent.
    #[error("{}: {reason}", path.display())]
    Plan {
        /// The plan file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Running a model in native tract failed.
    #[error("running {what} in tract: {reason}")]
    Tract {
        /// The model or segment.
        what: String,
        /// tract's error chain.
        reason: String,
    },
    /// Building or composing components failed.
    #[error("{what}: {reason}")]
    Package {
        /// The artifact being built.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A segment failed in the wasm runtime.
    #[error("segment {index} ({file}) failed: {cause}")]
    Stage {
        /// The segment's index (0 for the composed pipeline).
        index: usize,
        /// Its ONNX file, or `pipeline.wasm`.
        file: String,
        /// What the runtime reported.
        cause: crate::runtime::SegmentError,
    },
    /// A segment failed in the wasm runtime (the message names the segment).
    #[error(transparent)]
    Segment(#[from] crate::runtime::SegmentError),
    /// The wasmtime engine could not be set up or a component not compiled.
    #[error(transparent)]
    Engine(#[from] crate::runtime::EngineError),
    /// A tensor given by the user does not fit the model.
    #[error("tensor {}: {reason}", Name(.name))]
    Tensor {
        /// The tensor.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn at_node(node: &str, within: &[String]) -> String {
    match (node.is_empty(), within.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("node {}: ", Name(node)),
        (false, false) => format!("node {} (inside {}): ", Name(node), within.iter().map(|w| Name(w).to_string()).collect::<Vec<_>>().join(" > ")),
    }
}

impl Error {
    /// Wraps an I/O failure with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
