//! Cranelift's incremental cache on disk: compiled functions keyed by their IR, so a component
//! that repeats another's code (a pre-initialised segment repeats the runtime's) compiles in a
//! fraction of the time.

use std::borrow::Cow;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::CacheStore;

/// One file per compiled function under a folder of the compiled-code cache.
#[derive(Debug)]
pub(crate) struct FunctionCache {
    dir: PathBuf,
}

impl FunctionCache {
    pub(crate) fn new(dir: PathBuf) -> FunctionCache {
        FunctionCache { dir }
    }

    fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(super::hex(&Sha256::digest(key)))
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        std::fs::read(self.path(key)).ok().map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        std::fs::create_dir_all(&self.dir).is_ok()
            && super::write_atomically(&self.path(key), &value).is_ok()
    }
}
