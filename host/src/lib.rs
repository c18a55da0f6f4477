//! NetLess: split an ONNX model into segments that each fit a serverless function's memory limit, and run
//! them as one pipeline of WebAssembly components.
//!
//! Data flows one way through the modules: [`onnx`] (load, shapes, costs) -> [`plan`] (topological order,
//! partition, plan file) -> [`emit`] (segment ONNX files) -> [`package`] (components from the generic
//! runtime and each segment's blob) -> [`runtime`] (wasmtime: instances, limits, deadlines). [`verify`]
//! checks segments against the unsplit model in native tract. [`push`] sends a built Spin app to an OCI
//! registry and [`deploy`] writes the Kubernetes (SpinKube) manifests that run it.
#![deny(missing_docs)]

pub mod bench;
pub mod calibrate;
pub mod deploy;
pub mod emit;
pub mod error;
pub mod native;
pub mod npy;
pub mod onnx;
pub mod picture;
pub mod package;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod push;
pub mod runtime;
pub mod serve;
pub mod split;
pub mod verify;

pub use error::{Error, Result};
