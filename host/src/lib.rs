//! NetLess: split an ONNX model into segments that each fit a serverless function's memory limit, and run
//! them as one pipeline.
//!
//! Data flows one way through the modules: [`onnx`] (load, shapes, costs) -> [`plan`] (topological order,
//! partition, plan file) -> [`emit`] (segment ONNX files) -> [`verify`] (segments against the unsplit model).
#![deny(missing_docs)]

pub mod emit;
pub mod error;
pub mod native;
pub mod npy;
pub mod onnx;
pub mod plan;
pub mod progress;
pub mod split;
pub mod verify;

pub use error::{Error, Result};
