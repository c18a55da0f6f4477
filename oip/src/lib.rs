//! What the NetLess host and its HTTP components share: tensors, the Open Inference Protocol v2 REST
//! wire format (KServe / Triton) with the binary tensor extension, and the gateway's description of a
//! pipeline. Pure Rust with no I/O, so it builds for the host and for `wasm32-wasip2` alike; the `wasi`
//! feature adds reading a body from a `wasi:io` stream, and the `spin` feature a whole Spin request, for
//! the components.
#![deny(missing_docs)]

mod codec;
pub mod rest;
pub mod pipeline;
#[cfg(feature = "wasi")]
pub mod wasi_body;
mod tensor;

pub use codec::*;
pub use tensor::{DType, Tensor};
