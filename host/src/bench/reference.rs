//! The reference engines `netless bench` runs beside NetLess, each in a process of its own on the same
//! inputs: onnxruntime (native, through Python) and onnxruntime-web (its wasm backend, on Node.js).
//! Both print one JSON line with their timings and the paths of the `.npy` outputs they wrote, which
//! are checked against native tract like every other runtime's.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use tract_onnx::prelude::Tensor as TractTensor;

use super::{BenchOptions, OrtResult, Timing, check_one, failed_check};
use crate::npy;
use crate::plan::file::TensorSpec;

/// onnxruntime's script (Python): argv = model, runs, output folder, JSON list of [name, .npy path].
/// Prints one JSON line: version, prepare_ms, times_ms, outputs ([name, .npy path]), or error.
const ORT_SCRIPT: &str = r#"
import json, os, sys, time
try:
    import numpy as np
    import onnxruntime as ort
except Exception as e:
    print(json.dumps({"error": "cannot import onnxruntime: %s: %s" % (type(e).__name__, e)}))
    sys.exit(0)
model, runs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
feeds = {name: np.load(path) for name, path in json.loads(sys.argv[4])}
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
t = time.perf_counter()
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
prepare = (time.perf_counter() - t) * 1e3
outs = sess.run(None, feeds)
times = []
for _ in range(runs):
    t = time.perf_counter()
    sess.run(None, feeds)
    times.append((time.perf_counter() - t) * 1e3)
paths = []
for i, (o, v) in enumerate(zip(sess.get_outputs(), outs)):
    p = os.path.join(out, "ort-output-%d.npy" % i)
    np.save(p, v)
    paths.append([o.name, p])
print(json.dumps({"version": ort.__version__, "prepare_ms": prepare, "times_ms": times, "outputs": paths}))
"#;

/// onnxruntime-web's script (Node.js, CommonJS): argv = the folder the npm package resolves from,
/// model, runs, output folder, JSON list of [name, .npy path]; prints the same JSON line.
const ORT_WEB_SCRIPT: &str = include_str!("ort_web.cjs");

#[derive(serde::Deserialize)]
struct EngineOutput {
    error: Option<String>,
    version: Option<String>,
    prepare_ms: Option<f64>,
    #[serde(default)]
    times_ms: Vec<f64>,
    #[serde(default)]
    outputs: Vec<(String, PathBuf)>,
}

/// A reference engine: what to run and how it is named in errors.
struct External {
    name: &'static str,
    program: String,
    args: Vec<OsString>,
}

/// The inputs as the engines read them: each written once as `.npy` into `OUT/inputs`, listed as
/// the JSON `[name, path]` pairs both scripts take; `Err` says why they could not be written.
pub(super) fn feeds(options: &BenchOptions, specs: &[TensorSpec], inputs: &HashMap<String, TractTensor>) -> Result<String, String> {
    let folder = options.out.join("inputs");
    std::fs::create_dir_all(&folder).map_err(|e| format!("creating {}: {e}", folder.display()))?;
    let mut feeds = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let path = folder.join(format!("input-{i}.npy"));
        npy::write(&path, &spec.name, &inputs[&spec.name]).map_err(|e| e.to_string())?;
        feeds.push((spec.name.clone(), absolute(&path)));
    }
    serde_json::to_string(&feeds).map_err(|e| e.to_string())
}

/// Runs onnxruntime (native, 1 thread) through `options.python`.
pub(super) fn onnxruntime(options: &BenchOptions, feeds: &Result<String, String>, outputs: &[TensorSpec], expected: &[(String, TractTensor)]) -> OrtResult {
    let engine = External { name: "onnxruntime", program: options.python.clone(), args: vec!["-c".into(), ORT_SCRIPT.into()] };
    run(&engine, options, feeds, outputs, expected)
}

/// Runs onnxruntime-web's wasm backend (1 thread) on `options.node`, with the npm package
/// `onnxruntime-web` resolved from `options.ort_web`.
pub(super) fn onnxruntime_web(options: &BenchOptions, feeds: &Result<String, String>, outputs: &[TensorSpec], expected: &[(String, TractTensor)]) -> OrtResult {
    let script = options.out.join("inputs").join("ort_web.cjs");
    if let Err(e) = std::fs::write(&script, ORT_WEB_SCRIPT) {
        return unavailable(format!("writing {}: {e}", script.display()));
    }
    let engine = External { name: "onnxruntime-web", program: options.node.clone(), args: vec![absolute(&script).into(), absolute(&options.ort_web).into()] };
    run(&engine, options, feeds, outputs, expected)
}

/// Why the engine did not run, on one line (engines' messages may span several).
fn unavailable(reason: String) -> OrtResult {
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    OrtResult { version: None, prepare_ms: None, timing: None, checks: vec![], unavailable: Some(reason) }
}

fn run(engine: &External, options: &BenchOptions, feeds: &Result<String, String>, outputs: &[TensorSpec], expected: &[(String, TractTensor)]) -> OrtResult {
    let feeds = match feeds {
        Ok(feeds) => feeds,
        Err(e) => return unavailable(e.clone()),
    };
    let output = Command::new(&engine.program)
        .args(&engine.args)
        .arg(absolute(&options.model))
        .arg(options.runs.to_string())
        .arg(absolute(&options.out.join("inputs")))
        .arg(feeds)
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => return unavailable(format!("cannot run `{}`: {e}", engine.program)),
    };
    let name = engine.name;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return unavailable(format!("{name} failed ({}): {last}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parsed: EngineOutput = match stdout.lines().rev().find(|l| l.starts_with('{')).map(serde_json::from_str) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return unavailable(format!("unreadable output of the {name} script: {e}")),
        None => return unavailable(format!("the {name} script printed nothing")),
    };
    if let Some(error) = parsed.error {
        return unavailable(error);
    }
    let checks = expected
        .iter()
        .map(|(output, want)| match (parsed.outputs.iter().find(|(n, _)| n == output), outputs.iter().find(|s| &s.name == output)) {
            (Some((_, path)), Some(spec)) => check_one(output, want, npy::read(path, output, spec.dtype)),
            _ => failed_check(output, format!("{name} did not return it")),
        })
        .collect();
    OrtResult { version: parsed.version, prepare_ms: parsed.prepare_ms, timing: Timing::from_ms(&parsed.times_ms), checks, unavailable: None }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
