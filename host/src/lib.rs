#![deny(missing_docs)]
//! NetLess: split ONNX models into memory-bounded WebAssembly segments and run them as one pipeline.
//!
//! Data flows one way: `package` assembles components from the generic runtime and a segment's
//! blob, `runtime` instantiates and runs them under wasmtime.

pub mod package;
pub mod runtime;
