//! Integration tests: real components under the real host. See `common` for where the built wasm
//! and the reference models are found.

mod common;
mod runtime;
