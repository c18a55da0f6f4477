//! The wasmtime host: compiles components once (cached on disk), instantiates segments with a
//! memory budget, an epoch deadline per call and no WASI capabilities, and runs them.
//!
//! A segment is either the generic runtime plus the segment's blob ([`Engine::load_segment`]: the
//! big runtime is compiled once for every segment, the small data component per blob, and the host
//! links the two in one store) or a self-contained component ([`Engine::load_composed`],
//! [`Engine::composed_factory`]), such as a pre-initialised segment: a snapshot of the runtime with
//! its model already prepared ([`Snapshotter`]).

mod bindings {
    wasmtime::component::bindgen!({ world: "segment", path: "../wit" });
}
mod function_cache;
mod prune;
mod segment;
mod snapshot;
mod tensor;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use segment::{NodeTime, Segment, SegmentError, SegmentStats};
pub use prune::{Pruned, prune};
pub use snapshot::Snapshotter;
pub(crate) use segment::ticks;
pub use tensor::{DType, SegmentInfo, Tensor, TensorSpec};

use crate::package::data_component;
use segment::{Parts, State};

/// How often the epoch advances; deadlines are rounded up to whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Linear memories (and instances) the pooling allocator keeps slots for.
const POOL_SLOTS: u32 = 128;

/// What one segment instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Budget for all linear memories of the segment's store together (runtime and data).
    pub memory_bytes: u64,
    /// Wall-clock limit for one call into the segment (the first call also prepares the model).
    pub deadline: Duration,
}

/// Why the engine could not be set up or a component not compiled.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime rejected the configuration.
    #[error("configuring wasmtime: {0:#}")]
    Config(wasmtime::Error),
    /// The compiled-code cache could not be read or written.
    #[error("compiled-code cache {path}: {source}")]
    Cache {
        /// The file or folder at fault.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component did not compile or a cached file did not load.
    #[error("compiling component {hash}: {source:#}")]
    Compile {
        /// Hash of the component, also its cache key.
        hash: String,
        /// wasmtime's error.
        source: wasmtime::Error,
    },
}

/// The generic segment runtime, compiled (or loaded from the cache) once for all segments.
#[derive(Clone)]
pub struct Runtime {
    component: Component,
}

/// Advances the engine's epoch until the last engine or segment using it is dropped.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    pub(crate) fn start(engine: wasmtime::Engine) -> Arc<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
        Arc::new(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A wasmtime engine configured for segments, with its compiled-code cache.
pub struct Engine {
    engine: wasmtime::Engine,
    cache_dir: PathBuf,
    ticker: Arc<Ticker>,
    /// WASI (no capabilities) plus the `segment-data` import served from a data instance.
    runtime_linker: Linker<State>,
    /// WASI only, for self-contained components.
    composed_linker: Linker<State>,
    /// Nothing: data components import nothing.
    data_linker: Linker<State>,
}

impl Engine {
    /// An engine with the pooling allocator and epoch interruption, caching compiled code in
    /// `cache_dir` (created if missing).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Result<Engine, EngineError> {
        let cache_dir = cache_dir.into();
        std::fs::create_dir_all(&cache_dir).map_err(|source| EngineError::Cache {
            path: cache_dir.clone(),
            source,
        })?;
        let engine = new_engine(&cache_dir, 0)?;
        let mut composed_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut composed_linker).map_err(EngineError::Config)?;
        let mut runtime_linker = composed_linker.clone();
        segment::link_segment_data(&mut runtime_linker).map_err(EngineError::Config)?;
        Ok(Engine {
            ticker: Ticker::start(engine.clone()),
            data_linker: Linker::new(&engine),
            engine,
            cache_dir,
            runtime_linker,
            composed_linker,
        })
    }

    /// Compiles a component, or loads its compiled code from the cache.
    ///
    /// The cache key is the SHA-256 of wasmtime's compatibility hash (version, target, settings)
    /// and the component's bytes, so a changed engine or component never loads stale code.
    pub fn component(&self, wasm: &[u8]) -> Result<Component, EngineError> {
        compile_cached(&self.engine, &self.cache_dir, wasm)
    }

    /// [`Engine::component`] for a file; a file compiled before is neither read nor hashed again
    /// (it is found by path, size, modification time and inode), so loading it is one `mmap`.
    pub fn component_file(&self, path: &Path) -> Result<Component, EngineError> {
        compile_file_cached(&self.engine, &self.cache_dir, path)
    }

    /// Loads the generic runtime component (`netless-segment`, world `segment-runtime`).
    pub fn load_runtime(&self, wasm: &[u8]) -> Result<Runtime, EngineError> {
        Ok(Runtime {
            component: self.component(wasm)?,
        })
    }

    /// A segment running `blob` (an ONNX model with `netless.*` metadata) in the generic runtime.
    ///
    /// Builds the blob's data component, then loads it as [`Engine::load_segment_data`] does.
    pub fn load_segment(
        &self,
        runtime: &Runtime,
        blob: &[u8],
        limits: Limits,
    ) -> Result<Segment, SegmentError> {
        let data = data_component::build(blob).map_err(|e| SegmentError::Load {
            segment: format!("(blob of {} bytes)", blob.len()),
            message: e.to_string(),
        })?;
        self.load_segment_data(runtime, &data, limits)
    }

    /// A segment from the generic runtime and a prebuilt data component (`seg-NN.data.wasm`).
    ///
    /// Instantiates both in one store and prepares the model (the first call into the guest), so
    /// the returned segment answers its first request at full speed.
    pub fn load_segment_data(
        &self,
        runtime: &Runtime,
        data: &[u8],
        limits: Limits,
    ) -> Result<Segment, SegmentError> {
        self.segment_factory(runtime, data, limits)?.start()
    }

    /// Compiles (or loads from the cache) and links a segment once, so that any number of its
    /// instances can then be started without touching the disk or the compiler.
    pub fn segment_factory(
        &self,
        runtime: &Runtime,
        data: &[u8],
        limits: Limits,
    ) -> Result<SegmentFactory, SegmentError> {
        let label = format!("(data component of {} bytes)", data.len());
        let data = self.component(data).map_err(|e| SegmentError::Load {
            segment: label.clone(),
            message: e.to_string(),
        })?;
        let pre = |linker: &Linker<State>, component: &Component| {
            linker
                .instantiate_pre(component)
                .map_err(|e| SegmentError::Load {
                    segment: label.clone(),
                    message: format!("{e:#}"),
                })
        };
        let parts = Parts::Linked {
            runtime: pre(&self.runtime_linker, &runtime.component)?,
            data: pre(&self.data_linker, &data)?,
        };
        Ok(SegmentFactory {
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            parts,
            limits,
            label,
        })
    }

    /// Compiles (or loads from the cache) a self-contained segment component file, such as a
    /// pre-initialised `seg-NN.wasm`, and links it once for any number of instances.
    pub fn composed_factory(&self, path: &Path, limits: Limits) -> Result<SegmentFactory, SegmentError> {
        let label = path.display().to_string();
        let load = |message: String| SegmentError::Load { segment: label.clone(), message };
        let component = self.component_file(path).map_err(|e| load(e.to_string()))?;
        let pre = self.composed_linker.instantiate_pre(&component).map_err(|e| load(format!("{e:#}")))?;
        Ok(SegmentFactory {
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            parts: Parts::Composed(pre),
            limits,
            label,
        })
    }

    /// A segment from a self-contained component exporting `infer-segment`.
    pub fn load_composed(&self, wasm: &[u8], limits: Limits) -> Result<Segment, SegmentError> {
        let label = format!("(component of {} bytes)", wasm.len());
        let component = self.component(wasm).map_err(|e| SegmentError::Load {
            segment: label.clone(),
            message: e.to_string(),
        })?;
        let pre = self
            .composed_linker
            .instantiate_pre(&component)
            .map_err(|e| SegmentError::Load {
                segment: label.clone(),
                message: format!("{e:#}"),
            })?;
        Segment::start(
            self.engine.clone(),
            self.ticker.clone(),
            Parts::Composed(pre),
            limits,
            label,
        )
    }
}

/// A compiled and linked segment from which instances start cheaply (a cold start is an
/// instantiation plus the guest's model preparation).
#[derive(Clone)]
pub struct SegmentFactory {
    engine: wasmtime::Engine,
    ticker: Arc<Ticker>,
    parts: Parts,
    limits: Limits,
    label: String,
}

impl SegmentFactory {
    /// Starts a new instance and prepares its model, as [`Engine::load_segment_data`] does.
    pub fn start(&self) -> Result<Segment, SegmentError> {
        Segment::start(
            self.engine.clone(),
            self.ticker.clone(),
            self.parts.clone(),
            self.limits,
            self.label.clone(),
        )
    }

    /// The limits every instance gets.
    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// Feeds `Hash` output into SHA-256, for a cache key stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// A wasmtime engine for NetLess's components: the component model, SIMD (tract's kernels), epoch
/// interruption (deadlines) and the pooling allocator.
///
/// A freed instance's linear memory is returned to the system, except its first `keep_resident`
/// bytes, which are zeroed in place for the next instance of that slot: this saves a host that
/// instantiates per request (the Spin host) the page faults of every request, at the cost of that
/// much resident memory per slot used; a host that keeps instances warm and scales to zero
/// (`netless up`) keeps none.
pub(crate) fn new_engine(cache_dir: &Path, keep_resident: usize) -> Result<wasmtime::Engine, EngineError> {
    let mut config = Config::new();
    let functions = function_cache::FunctionCache::new(cache_dir.join("functions"));
    config
        .enable_incremental_compilation(Arc::new(functions))
        .map_err(EngineError::Config)?
        .wasm_component_model(true)
        .wasm_simd(true)
        .wasm_relaxed_simd(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(keep_resident)));
    wasmtime::Engine::new(&config).map_err(EngineError::Config)
}

/// The pooling allocator's configuration: slots for many instances of segment-sized components, each
/// memory keeping up to `keep_resident` bytes resident when its instance is freed.
fn pooling(keep_resident: usize) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_SLOTS)
        .total_core_instances(POOL_SLOTS * 8)
        .total_memories(POOL_SLOTS * 4)
        .total_tables(POOL_SLOTS * 8)
        .total_stacks(POOL_SLOTS)
        .table_elements(1 << 18)
        .max_component_instance_size(64 << 20)
        .max_core_instances_per_component(4096)
        .max_memories_per_component(1024)
        .max_tables_per_component(4096)
        .linear_memory_keep_resident(keep_resident);
    pool
}

/// Compiles a component with `engine`, or loads its compiled code from `cache_dir`.
///
/// The cache key is the SHA-256 of wasmtime's compatibility hash (version, target, settings)
/// and the component's bytes, so a changed engine or component never loads stale code.
pub(crate) fn compile_cached(engine: &wasmtime::Engine, cache_dir: &Path, wasm: &[u8]) -> Result<Component, EngineError> {
    let hash = cache_key(engine, wasm);
    load_or_compile(engine, &cache_dir.join(format!("{hash}.cwasm")), &hash, wasm)
}

/// [`compile_cached`] for a component file, without reading or hashing the file when it was
/// compiled before: an index under `cache_dir/files/`, keyed by the file's path, size,
/// modification time and inode, remembers its cache key.
pub(crate) fn compile_file_cached(engine: &wasmtime::Engine, cache_dir: &Path, path: &Path) -> Result<Component, EngineError> {
    let io = |source| EngineError::Cache { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mut key = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut key);
    let mut id = key.0;
    id.update(std::path::absolute(path).map_err(io)?.as_os_str().as_encoded_bytes());
    id.update(meta.len().to_le_bytes());
    let modified = meta.modified().map_err(io)?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    id.update(modified.as_nanos().to_le_bytes());
    #[cfg(unix)]
    id.update(std::os::unix::fs::MetadataExt::ino(&meta).to_le_bytes());
    let index = cache_dir.join("files").join(hex(&id.finalize()));
    if let Ok(hash) = std::fs::read_to_string(&index) {
        let compiled = cache_dir.join(format!("{hash}.cwasm"));
        if compiled.is_file() {
            return deserialize(engine, &compiled, &hash);
        }
    }
    let wasm = std::fs::read(path).map_err(io)?;
    let hash = cache_key(engine, &wasm);
    let component = load_or_compile(engine, &cache_dir.join(format!("{hash}.cwasm")), &hash, &wasm)?;
    let files = cache_dir.join("files");
    std::fs::create_dir_all(&files).map_err(|source| EngineError::Cache { path: files, source })?;
    write_atomically(&index, hash.as_bytes())?;
    Ok(component)
}

fn cache_key(engine: &wasmtime::Engine, wasm: &[u8]) -> String {
    let mut key = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut key);
    key.0.update(wasm);
    hex(&key.0.finalize())
}

fn load_or_compile(engine: &wasmtime::Engine, path: &Path, hash: &str, wasm: &[u8]) -> Result<Component, EngineError> {
    if !path.exists() {
        let code = engine.precompile_component(wasm).map_err(|source| EngineError::Compile { hash: hash.to_string(), source })?;
        write_atomically(path, &code)?;
    }
    deserialize(engine, path, hash)
}

fn deserialize(engine: &wasmtime::Engine, path: &Path, hash: &str) -> Result<Component, EngineError> {
    prune::touch(path);
    // SAFETY: the file was written by `precompile_component` of an engine with the same
    // compatibility hash (it is in the file name), into a cache folder this process owns.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|source| EngineError::Compile { hash: hash.to_string(), source })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let cache = |source| EngineError::Cache {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(cache)?;
    std::fs::rename(&tmp, path).map_err(cache)
}
