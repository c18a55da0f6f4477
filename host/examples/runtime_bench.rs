//! Measures the segment runtime: compile and load of the runtime component, instantiation, model
//! preparation, inference in wasm versus native tract, and peak linear memory.
//!
//! ```text
//! cargo run --release -p netless --example runtime_bench -- RUNTIME.wasm MODEL.onnx...
//! ```
//! Each model gets a 1x3x224x224 f32 input of 0.5 (the reference models' input shape).

use std::time::{Duration, Instant};

use anyhow::Context;
use netless::runtime::{Engine, Limits, Tensor};
use tract_onnx::prelude::{
    Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor as TractTensor, tvec,
};

const RUNS: usize = 10;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (runtime_path, models) = args
        .split_first()
        .context("usage: runtime_bench RUNTIME.wasm MODEL.onnx...")?;
    let wasm = std::fs::read(runtime_path).with_context(|| format!("reading {runtime_path}"))?;
    let cache = tempfile::tempdir()?;

    let started = Instant::now();
    Engine::new(cache.path())?.load_runtime(&wasm)?;
    println!(
        "runtime component: {} bytes, compile {}",
        wasm.len(),
        ms(started.elapsed())
    );
    let engine = Engine::new(cache.path())?;
    let started = Instant::now();
    let runtime = engine.load_runtime(&wasm)?;
    println!(
        "runtime component: precompiled load {}",
        ms(started.elapsed())
    );

    for path in models {
        let blob = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let limits = Limits {
            memory_bytes: 4 << 30,
            deadline: Duration::from_secs(600),
        };
        let started = Instant::now();
        let mut segment = engine.load_segment(&runtime, &blob, limits)?;
        let load = started.elapsed();
        let stats = segment.stats();
        let name = segment.info().inputs[0].name.clone();
        let input = Tensor::from_f32(name, vec![1, 3, 224, 224], &vec![0.5; 3 * 224 * 224]);
        let wasm_times = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                segment
                    .infer(vec![input.clone()])
                    .map(|_| started.elapsed())
            })
            .collect::<Result<Vec<_>, _>>()?;

        let started = Instant::now();
        let native = tract_onnx::onnx()
            .model_for_path(path)?
            .into_optimized()?
            .into_runnable()?;
        let native_prepare = started.elapsed();
        let native_input =
            TractTensor::from_shape(&[1, 3, 224, 224], &vec![0.5f32; 3 * 224 * 224])?;
        let native_times = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                native
                    .run(tvec![native_input.clone().into_tvalue()])
                    .map(|_| started.elapsed())
            })
            .collect::<Result<Vec<_>, _>>()?;

        println!(
            "{path}: blob {} bytes; load_segment {} (instantiate {}, first call/prepare {}); \
             infer wasm {} vs native {} (median of {RUNS}); native prepare {}; peak linear memory {} bytes ({:.2}x blob)",
            blob.len(),
            ms(load),
            ms(stats.instantiate),
            ms(stats.first_call),
            ms(median(wasm_times)),
            ms(median(native_times)),
            ms(native_prepare),
            segment.peak_memory(),
            segment.peak_memory() as f64 / blob.len() as f64,
        );
    }
    Ok(())
}
