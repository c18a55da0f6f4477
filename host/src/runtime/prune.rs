//! Keeping the compiled-code cache within a size: compiled components and Cranelift's function
//! cache are evicted least recently used first (every load refreshes a component's modification
//! time; a compile that adds functions refreshes the function cache's).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What pruning a cache folder did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Bytes in the cache before.
    pub before: u64,
    /// Bytes in the cache after.
    pub after: u64,
    /// Files removed.
    pub removed: usize,
}

/// Removes compiled components and the function cache (as one item, as old as its newest entry),
/// least recently used first, until the cache folder `dir` holds at most `max_bytes`; drops index
/// entries whose component is gone.
pub fn prune(dir: &Path, max_bytes: u64) -> std::io::Result<Pruned> {
    let mut items: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && entry.path().extension().is_some_and(|e| e == "cwasm") {
            items.push((meta.modified()?, meta.len(), entry.path()));
        }
    }
    let functions = dir.join("functions");
    if functions.is_dir() {
        items.push((std::fs::metadata(&functions)?.modified()?, folder_bytes(&functions)?, functions));
    }
    let before = items.iter().map(|i| i.1).sum();
    let mut pruned = Pruned { before, after: before, removed: 0 };
    items.sort();
    for (_, bytes, path) in items {
        if pruned.after <= max_bytes {
            break;
        }
        if path.is_dir() {
            pruned.removed += std::fs::read_dir(&path)?.count();
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
            pruned.removed += 1;
        }
        pruned.after -= bytes;
    }
    let index = dir.join("files");
    if index.is_dir() {
        for entry in std::fs::read_dir(&index)? {
            let path = entry?.path();
            let target = std::fs::read_to_string(&path).unwrap_or_default();
            if !dir.join(format!("{target}.cwasm")).is_file() {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(pruned)
}

/// Marks a compiled component as just used, for [`prune`]'s order.
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn folder_bytes(dir: &Path) -> std::io::Result<u64> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
