//! A `netless` binary away from its build folder (as `cargo install` puts it) works with no
//! variables: its guest components are built into it.

use std::process::Command;

use crate::onnx_builder::{model, node, save, value};
use netless::onnx::pb::GraphProto;

/// The binary, hard-linked into an empty folder, with no component variables and its own HOME:
/// `--version` names the built-in runtime, and `build` and `compose` find the runtime and composer.
#[test]
fn a_binary_outside_its_build_folder_carries_its_components() {
    if crate::common::runtime_wasm().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("netless");
    std::fs::hard_link(env!("CARGO_BIN_EXE_netless"), &binary).or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_netless"), &binary).map(|_| ())).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&binary).args(args).current_dir(dir.path()).env_remove("NETLESS_RUNTIME_WASM").env_remove("NETLESS_COMPOSER_WASM").env("HOME", dir.path()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "netless {args:?}: {text}");
        text
    };
    let version = run(&["--version"]);
    assert!(version.contains("segment runtime netless_segment.wasm sha256"), "{version}");
    let chain = GraphProto {
        name: "chain".into(),
        node: vec![node("Relu", &["x"], &["a"]), node("Relu", &["a"], &["y"])],
        input: vec![value("x", &[1, 8])],
        output: vec![value("y", &[1, 8])],
        ..Default::default()
    };
    let path = save(dir.path(), "chain.onnx", &model(chain));
    run(&["split", path.to_str().unwrap(), "--max-memory", "64MiB", "--segments", "2", "-o", "out"]);
    run(&["build", "out", "--lazy"]);
    run(&["compose", "out"]);
    assert!(dir.path().join("out/pipeline.wasm").exists() && dir.path().join("out/components/seg-01.wasm").exists());
    assert!(dir.path().join(".cache/netless/components").read_dir().unwrap().count() >= 2, "the runtime and composer were written out");
}
