//! The guest components built into the binary (by `host/build.rs`), written out once so that the
//! commands that take a component's path can use them: a `netless` installed anywhere carries its
//! runtime, composer and Spin components.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The built-in component `name`, as a file under `cache` named by its content's hash (written on
/// first use); `None` if this binary was built without it or the file cannot be written.
pub fn extracted(name: &str, cache: &Path) -> Option<PathBuf> {
    let (_, bytes) = EMBEDDED.iter().find(|(n, _)| *n == name)?;
    let digest: String = Sha256::digest(bytes).iter().take(12).map(|b| format!("{b:02x}")).collect();
    let path = cache.join(digest).join(name);
    if path.metadata().is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Some(path);
    }
    let dir = path.parent()?;
    std::fs::create_dir_all(dir).ok()?;
    let partial = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&partial, bytes).ok()?;
    std::fs::rename(&partial, &path).ok()?;
    Some(path)
}
