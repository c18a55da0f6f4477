//! Reading an ONNX model: the file ([`load`]), its tensors' types and shapes ([`graph`]), the cost of every
//! node ([`cost`]), and the runtime's preparation of it done natively first ([`prepare`]).

pub mod cost;
pub mod dtype;
pub mod graph;
pub mod load;
pub mod prepare;

pub use dtype::ElemType;
pub use graph::{Graph, Node, NodeId, Tensor, TensorId, TensorKind};
pub use load::OnnxModel;
pub use tract_onnx::pb;
