//! Pre-initialised segments: the runtime's state after preparing a segment's model, snapshotted
//! at build time (Wizer) so that a new instance starts with the model already prepared.
//!
//! The snapshot is the runtime component with its linear memory and globals replaced by those of
//! a prepared instance. wasmtime maps that memory image copy-on-write from the compiled file, so
//! an instance costs an `mmap` instead of decoding ONNX and optimising the graph.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

use super::segment::State;
use super::{Engine, Limits, Runtime, SegmentError};

/// The generic runtime instrumented for snapshots, compiled once for every segment of a build.
pub struct Snapshotter<'a> {
    engine: &'a Engine,
    context: ComponentContext<'a>,
    instrumented: Runtime,
}

impl Engine {
    /// Instruments the generic runtime (`runtime`, the component's bytes) so that prepared
    /// instances of it can be snapshotted, and compiles (or loads) the instrumented runtime.
    pub fn snapshotter<'a>(&'a self, runtime: &'a [u8]) -> Result<Snapshotter<'a>, SegmentError> {
        let load = |message: String| SegmentError::Load { segment: "(the segment runtime)".into(), message };
        let (context, instrumented) = Wizer::new()
            .instrument_component(runtime)
            .map_err(|e| load(format!("instrumenting the runtime: {e:#}")))?;
        let instrumented = self.load_runtime(&instrumented).map_err(|e| load(e.to_string()))?;
        Ok(Snapshotter { engine: self, context, instrumented })
    }
}

impl Snapshotter<'_> {
    /// Snapshots the runtime after it has prepared the segment in `data` (a data component)
    /// under `limits`: the result is a runtime component whose memory already holds the
    /// prepared model. It still imports `segment-data`, which it no longer reads.
    pub fn snapshot(&self, data: &[u8], limits: Limits) -> Result<Vec<u8>, SegmentError> {
        let load = |message: String| SegmentError::Load {
            segment: format!("(snapshot of a {} byte data component)", data.len()),
            message,
        };
        let mut segment = self.engine.segment_factory(&self.instrumented, data, limits)?.start()?;
        let snapshot = segment.with_instance(|store, instance| {
            // Wizer reads each memory whole, past the default cap on one call's data.
            store.set_hostcall_fuel(usize::MAX);
            let mut state = Prepared {
                store,
                instance,
                failed: None,
            };
            let snapshot = complete(Wizer::new().snapshot_component(&self.context, &mut state));
            match state.failed {
                Some(e) => Err(e),
                None => snapshot,
            }
        });
        snapshot
            .ok_or_else(|| load("the prepared instance is gone".into()))?
            .map_err(|e| load(format!("snapshotting the prepared runtime: {e:#}")))
    }
}

/// Drives a future that never waits: Wizer's snapshot calls into a synchronous store.
fn complete<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("snapshot calls are synchronous"),
    }
}

/// A prepared instance, read by Wizer through the accessors its instrumentation exported.
struct Prepared<'a> {
    store: &'a mut Store<State>,
    instance: Instance,
    /// The first failed read; Wizer's callbacks cannot return errors, so the snapshot is
    /// discarded afterwards instead.
    failed: Option<wasmtime::Error>,
}

impl Prepared<'_> {
    fn call<R: Lift + 'static, T: Default>(
        &mut self,
        interface: &str,
        func: &str,
        read: impl FnOnce(&Store<State>, R) -> T,
    ) -> T {
        if self.failed.is_some() {
            return T::default();
        }
        let call = || -> wasmtime::Result<T> {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, interface)
                .ok_or_else(|| wasmtime::format_err!("no export `{interface}`"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or_else(|| wasmtime::format_err!("no export `{interface}#{func}`"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            let (value,) = typed.call(&mut *self.store, ())?;
            Ok(read(self.store, value))
        };
        call().unwrap_or_else(|e| {
            self.failed = Some(e.context(format!("reading `{interface}#{func}`")));
            T::default()
        })
    }
}

impl ComponentInstanceState for Prepared<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let mut contents = Some(contents);
        self.call(instance, func, |store, list: WasmList<u8>| {
            if let Some(contents) = contents.take() {
                contents(list.as_le_slice(store))
            }
        });
        // After a failed read Wizer still needs an answer; the snapshot is discarded anyway.
        if let Some(contents) = contents {
            contents(&[]);
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, v| v)
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, v| v)
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, v: f32| v.to_bits())
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, v: f64| v.to_bits())
    }
}
