//! Native measurement of model preparation: ONNX (parse, analyse, declutter, optimise) versus
//! tract's NNEF form of the decluttered model (load, optimise), to decide which blob to ship.
//!
//! ```text
//! cargo run --release -p netless --example nnef_bench -- MODEL.onnx...
//! ```

use std::time::{Duration, Instant};

use tract_onnx::WithOnnx;
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable};

const RUNS: usize = 5;

fn best<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed());
    }
    Ok(times.into_iter().min().unwrap_or_default())
}

fn main() -> anyhow::Result<()> {
    for path in std::env::args().skip(1) {
        let onnx = std::fs::read(&path)?;
        let nnef = tract_nnef::nnef().with_onnx();
        let decluttered = tract_onnx::onnx()
            .model_for_read(&mut onnx.as_slice())?
            .into_typed()?
            .into_decluttered()?;
        let tar = nnef.write_to_tar(&decluttered, Vec::new())?;
        let from_onnx = best(|| {
            Ok(tract_onnx::onnx()
                .model_for_read(&mut onnx.as_slice())?
                .into_optimized()?
                .into_runnable()?)
        })?;
        let nnef_load = best(|| Ok(nnef.model_for_read(&mut tar.as_slice())?))?;
        let from_nnef = best(|| {
            Ok(nnef
                .model_for_read(&mut tar.as_slice())?
                .into_optimized()?
                .into_runnable()?)
        })?;
        println!(
            "{path}: onnx {} bytes -> runnable {:.1} ms; nnef tar {} bytes -> load {:.1} ms, runnable {:.1} ms (best of {RUNS})",
            onnx.len(),
            from_onnx.as_secs_f64() * 1e3,
            tar.len(),
            nnef_load.as_secs_f64() * 1e3,
            from_nnef.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
