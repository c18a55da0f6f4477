//! NetLess's integration tests, in one binary: real models through the real library and CLI.

mod bad_input;
mod onnx_builder;
mod partition_dp;
mod split_models;
mod support;
