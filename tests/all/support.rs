//! Where tests find models and the CLI, and how they skip when something is missing.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_owned()
}

/// A model fetched by scripts/fetch_models.py, or `None` (with a message) when absent outside CI.
pub fn model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NETLESS_MODELS").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing under CI: scripts/fetch_models.py must run first", path.display());
    }
    eprintln!("skipping: {} is missing (run scripts/fetch_models.py)", path.display());
    None
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
