//! What `netless up` serves: a built split's folder as it is, or a model split and built into a
//! cache folder keyed by the model, the options and the runtime, so a second `up` starts at once.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::package::artifacts;
use crate::plan::Plan;
use crate::runtime::Engine;
use crate::split::{Split, SplitOptions};
use crate::{Error, Result};

/// Where a model is split to, and what came of it.
#[derive(Debug)]
pub struct Prepared {
    /// The built split's folder.
    pub dir: PathBuf,
    /// Whether it was reused from an earlier run rather than split and built now.
    pub cached: bool,
}

/// Whether `dir` holds a plan with every segment's components built.
pub fn is_built(dir: &Path) -> bool {
    match Plan::load(dir) {
        Ok(plan) => {
            artifacts::runtime_path(dir).is_file()
                && plan.segments.iter().all(|s| artifacts::data_path(dir, s.index).is_file())
        }
        Err(_) => false,
    }
}

/// Builds the components of the split in `dir` if they are missing.
pub fn built_folder(dir: &Path, runtime: &[u8], engine: &Engine) -> Result<Prepared> {
    if is_built(dir) {
        return Ok(Prepared { dir: dir.to_path_buf(), cached: true });
    }
    let plan = Plan::load(dir)?;
    artifacts::build(dir, &plan, runtime)?;
    artifacts::preinitialize(dir, &plan, engine)?;
    Ok(Prepared { dir: dir.to_path_buf(), cached: false })
}

/// Splits and builds `model` under `cache`, in a folder named by the model's stem and a hash of
/// the model, the options, the runtime and this version of NetLess; reuses it when it is there.
pub fn model(model: &Path, options: &SplitOptions, runtime: &[u8], engine: &Engine, cache: &Path) -> Result<Prepared> {
    let bytes = std::fs::read(model).map_err(Error::io(model))?;
    let mut key = Sha256::new();
    key.update(env!("CARGO_PKG_VERSION"));
    key.update(Sha256::digest(&bytes));
    key.update(Sha256::digest(runtime));
    key.update(format!("{options:?}"));
    let key: String = key.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let dir = cache.join(format!("{stem}-{key}"));
    if is_built(&dir) && artifacts::preinitialized(&dir).is_some() {
        return Ok(Prepared { dir, cached: true });
    }
    std::fs::create_dir_all(cache).map_err(Error::io(cache))?;
    let plan = Split::new(model, options)?.write(&dir)?;
    artifacts::build(&dir, &plan, runtime)?;
    artifacts::preinitialize(&dir, &plan, engine)?;
    Ok(Prepared { dir, cached: false })
}
