//! NetLess's integration tests, in one binary: real models through the real library, CLI, components
//! and host. See `common` for where prerequisites are found.

mod bad_input;
mod bench;
mod common;
mod deploy;
mod distributed;
mod early_errors;
mod fuzz;
mod install;
mod kernels;
mod memory_bounds;
mod onnx_builder;
mod partition_dp;
mod picture;
mod pipeline;
mod push;
mod runtime;
mod serve;
mod sharding;
mod spin;
mod split_models;
mod wac_text;
