//! Finding prerequisites (the built guest components, the models) and running the CLI.
//!
//! - `NETLESS_RUNTIME_WASM`: the generic runtime, default
//!   `$CARGO_TARGET_DIR/wasm32-wasip2/release/netless_segment.wasm` (else `<workspace>/target/...`),
//!   built by `cargo build --target wasm32-wasip2 --release -p netless-segment`.
//! - `NETLESS_PROBE_WASM`: the capability probe, same folder, `netless_capability_probe.wasm`.
//! - `NETLESS_MODELS`: the test models fetched by scripts/fetch_models.py, default `<workspace>/models`.
//! - `NETLESS_SHARED_MODELS`: the reference models with logits, default `<workspace>/../shared/models`.
//!
//! A missing prerequisite skips the test with a message, and fails it when `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use netless::runtime::{Engine, Limits, Runtime};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

pub fn wasm_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| workspace().join("target"))
        .join("wasm32-wasip2/release")
}

/// The file at `path`, or `None` (after saying why) when it is missing outside CI.
pub fn prerequisite(path: PathBuf, how: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let message = format!("missing {}: {how}", path.display());
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// The generic runtime component.
pub fn runtime_wasm() -> Option<PathBuf> {
    let path = std::env::var_os("NETLESS_RUNTIME_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| wasm_dir().join("netless_segment.wasm"));
    prerequisite(
        path,
        "cargo build --target wasm32-wasip2 --release -p netless-segment",
    )
}

/// The capability probe component.
pub fn probe_wasm() -> Option<PathBuf> {
    let path = std::env::var_os("NETLESS_PROBE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| wasm_dir().join("netless_capability_probe.wasm"));
    prerequisite(
        path,
        "cargo build --target wasm32-wasip2 --release -p netless-capability-probe",
    )
}

/// A reference model file (`squeezenet1_1_rand.onnx`, `..._input.npy`, ...).
pub fn model_file(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NETLESS_SHARED_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/models"));
    prerequisite(
        dir.join(name),
        "set NETLESS_SHARED_MODELS to the folder of reference models",
    )
}

/// A test model fetched by scripts/fetch_models.py.
pub fn model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NETLESS_MODELS").map(PathBuf::from).unwrap_or_else(|| workspace().join("models"));
    prerequisite(dir.join(name), "run scripts/fetch_models.py")
}

/// Runs the `netless` binary.
pub fn netless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netless")).args(args).output().expect("netless runs")
}

/// The standard error of a failed run, asserting that it failed cleanly (an error, not a panic).
pub fn failure(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "expected a failure, got success: {}", String::from_utf8_lossy(&output.stdout));
    assert!(matches!(output.status.code(), Some(1 | 2)), "expected exit code 1 (or clap's 2 for usage): {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(stderr.starts_with("error: "), "no error message: {stderr}");
    stderr
}

/// One engine for the whole test binary, caching compiled code under the target folder.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(wasm_dir().join("netless-test-cache")).expect("engine"))
}

/// The runtime component, compiled once per test binary (and cached across runs).
pub fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let path = runtime_wasm()?;
            let wasm = std::fs::read(&path).expect("read runtime wasm");
            Some(engine().load_runtime(&wasm).expect("compile runtime"))
        })
        .as_ref()
}

/// Generous limits for the reference models.
pub fn roomy() -> Limits {
    Limits {
        memory_bytes: 1 << 30,
        deadline: Duration::from_secs(60),
    }
}

/// The HTTP segment component (Spin).
pub fn http_segment_wasm() -> Option<PathBuf> {
    let path = std::env::var_os("NETLESS_HTTP_SEGMENT_WASM").map(PathBuf::from).unwrap_or_else(|| wasm_dir().join("netless_http_segment.wasm"));
    prerequisite(path, "cargo build --target wasm32-wasip2 --release -p netless-http-segment")
}

/// The gateway component (Spin).
pub fn gateway_wasm() -> Option<PathBuf> {
    let path = std::env::var_os("NETLESS_GATEWAY_WASM").map(PathBuf::from).unwrap_or_else(|| wasm_dir().join("netless_gateway.wasm"));
    prerequisite(path, "cargo build --target wasm32-wasip2 --release -p netless-gateway")
}
