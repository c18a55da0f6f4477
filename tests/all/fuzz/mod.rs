//! Fuzz targets for every decoder that takes bytes from outside: ONNX files, OIP v2 requests and
//! responses (JSON and binary), `plan.json`, `spin.toml`, `.npy` inputs and the tensors a host hands
//! the segment runtime (its contract checks, in the real component). Each runs for a few seconds in the normal
//! test run (`NETLESS_FUZZ_SECONDS` for longer), starting from seeds of the current formats and the
//! files of `fuzz/corpus/<target>/` (former crashes among them), which all run first. See
//! docs/fuzzing.md.

mod contract;
mod npy;
mod oip;
mod onnx;
mod plan;
mod spin;

use std::path::PathBuf;

/// The kept inputs of target `name`.
pub fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(name)
}
