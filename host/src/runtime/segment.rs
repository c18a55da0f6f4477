//! One segment: its instance (re-created after a trap), its limits, and calls into it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{ComponentType, Instance, InstancePre, Lift, Linker, ResourceTable, TypedFunc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, netless::inference::types as wit};
use super::{EPOCH_TICK, Limits, SegmentInfo, Tensor, Ticker};
use crate::package::SEGMENT_DATA;

/// Why a call into a segment failed. Every variant names the segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The segment could not be built, compiled or instantiated.
    #[error("segment {segment}: loading: {message}")]
    Load {
        /// The segment.
        segment: String,
        /// What went wrong.
        message: String,
    },
    /// The guest rejected the inputs (name, type, shape or byte count).
    #[error("segment {segment}: invalid input: {message}")]
    InvalidInput {
        /// The segment.
        segment: String,
        /// The guest's message, naming the tensor.
        message: String,
    },
    /// The model needs something the runtime does not implement.
    #[error("segment {segment}: unsupported: {message}")]
    Unsupported {
        /// The segment.
        segment: String,
        /// The guest's message.
        message: String,
    },
    /// The segment needs more than a limit allows: the memory budget, or a guest-side limit.
    #[error("segment {segment}: too large: {message}")]
    TooLarge {
        /// The segment.
        segment: String,
        /// Which limit, and by how much.
        message: String,
    },
    /// The guest reported an internal error.
    #[error("segment {segment}: internal error: {message}")]
    Internal {
        /// The segment.
        segment: String,
        /// The guest's message.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("segment {segment}: deadline of {deadline:?} exceeded")]
    DeadlineExceeded {
        /// The segment.
        segment: String,
        /// The limit that was hit.
        deadline: Duration,
    },
    /// The guest trapped (a bug or a broken artifact); the instance was discarded.
    #[error("segment {segment}: trapped: {message}")]
    Trap {
        /// The segment.
        segment: String,
        /// The trap and its wasm backtrace.
        message: String,
    },
}

/// The runtime's profiling interface.
const PROFILE: &str = "netless:inference/profile@0.1.0";

/// The time one node of a segment's plan took in one profiled inference, and the guest heap it used.
#[derive(Debug, Clone, PartialEq, Eq, ComponentType, Lift)]
#[component(record)]
pub struct NodeTime {
    /// The node's name in tract's optimised plan.
    pub name: String,
    /// Its operator, as tract names it.
    pub op: String,
    /// Wall-clock time of its evaluation.
    pub nanos: u64,
    /// The most bytes the guest's allocator held while it ran.
    #[component(name = "peak-bytes")]
    pub peak_bytes: u64,
    /// Bytes the guest's allocator held once it was done.
    #[component(name = "live-bytes")]
    pub live_bytes: u64,
}

/// How a segment's instance is put together.
#[derive(Clone)]
pub(crate) enum Parts {
    /// The generic runtime and a data component, instantiated side by side and linked by the host.
    Linked {
        runtime: InstancePre<State>,
        data: InstancePre<State>,
    },
    /// One self-contained component.
    Composed(InstancePre<State>),
}

/// `segment-data` exports of the data instance in the same store.
#[derive(Clone, Copy)]
struct DataFuncs {
    size: TypedFunc<(), (u64,)>,
    read: TypedFunc<(u64, u32), (Vec<u8>,)>,
}

/// Per-store host state: an empty WASI context, the memory budget, the linked data instance.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    budget: MemoryBudget,
    data: Option<DataFuncs>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps the sum of the linear memories an instance owns and remembers the peak and any refusal.
///
/// A linked data instance's memory is not counted: it is the segment's read-only blob, one
/// copy-on-write image shared by every instance, which the runtime reads from and never holds.
struct MemoryBudget {
    limit: u64,
    total: u64,
    /// False while the data instance is being instantiated: its memory is not counted.
    counting: bool,
    peak: u64,
    /// The total a refused growth asked for.
    refused: Option<u64>,
}

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if !self.counting {
            return Ok(true);
        }
        let wanted = (self.total + desired as u64).saturating_sub(current as u64);
        if wanted > self.limit {
            self.refused = Some(wanted);
            return Ok(false);
        }
        self.total = wanted;
        self.peak = self.peak.max(wanted);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// Defines `segment-data` in the runtime's linker as calls into the store's data instance.
pub(crate) fn link_segment_data(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    let mut instance = linker.instance(SEGMENT_DATA)?;
    instance.func_wrap("size", |mut store, (): ()| {
        let data = linked(store.data().data)?;
        data.size.call(&mut store, ())
    })?;
    instance.func_wrap("read", |mut store, (offset, len): (u64, u32)| {
        let data = linked(store.data().data)?;
        data.read.call(&mut store, (offset, len))
    })?;
    Ok(())
}

fn linked(data: Option<DataFuncs>) -> wasmtime::Result<DataFuncs> {
    data.ok_or_else(|| wasmtime::format_err!("segment-data called before its instance was linked"))
}

/// A live instance: its store, the guest's exports, and whether it has been called yet.
struct Live {
    store: Store<State>,
    instance: Instance,
    guest: bindings::Segment,
    called: bool,
}

/// What a segment has cost so far, for pools and for calibrating memory estimates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Instances created (the first, plus one after every trap).
    pub instances: u32,
    /// Time the latest instantiation took (both components, linking included).
    pub instantiate: Duration,
    /// Time the latest instance's first call took; it includes reading and preparing the model.
    pub first_call: Duration,
}

/// One loaded segment. Calls are sequential (`&mut self`); after a trap the next call gets a fresh
/// instance, so a failure never poisons later requests.
pub struct Segment {
    engine: wasmtime::Engine,
    _ticker: Arc<Ticker>,
    parts: Parts,
    limits: Limits,
    label: String,
    info: SegmentInfo,
    live: Option<Live>,
    peak: u64,
    stats: SegmentStats,
}

impl Segment {
    /// Instantiates the parts and asks the guest for its info (which prepares the model).
    pub(crate) fn start(
        engine: wasmtime::Engine,
        ticker: Arc<Ticker>,
        parts: Parts,
        limits: Limits,
        label: String,
    ) -> Result<Segment, SegmentError> {
        let info = SegmentInfo {
            model: String::new(),
            index: 0,
            count: 0,
            inputs: vec![],
            outputs: vec![],
        };
        let mut segment = Segment {
            engine,
            _ticker: ticker,
            parts,
            limits,
            label,
            info,
            live: None,
            peak: 0,
            stats: SegmentStats::default(),
        };
        let info = segment.call(|guest, store, _| guest.call_info(store))?;
        segment.label = format!(
            "{} of {} ({}/{})",
            info.index,
            info.model,
            info.index + 1,
            info.count
        );
        segment.info = info.into();
        Ok(segment)
    }

    /// The segment's identity and tensor contract.
    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// How this segment is named in errors: index, model and position.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs the segment; outputs come back in the contract's output order.
    pub fn infer(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, SegmentError> {
        let inputs: Vec<wit::Tensor> = inputs.into_iter().map(Into::into).collect();
        let result = self.call(|guest, store, _| guest.call_infer(store, &inputs))?;
        match result {
            Ok(outputs) => Ok(outputs.into_iter().map(Into::into).collect()),
            Err(e) => Err(self.guest_error(e)),
        }
    }

    /// Runs the segment timing every node of its plan: the generic runtime's `profile` export,
    /// so only a segment of the runtime and a data component ([`super::Engine::load_segment`]) has it.
    pub fn profile(&mut self, inputs: Vec<Tensor>) -> Result<Vec<NodeTime>, SegmentError> {
        let inputs: Vec<wit::Tensor> = inputs.into_iter().map(Into::into).collect();
        let result = self.call(|_, store, instance| {
            let missing = || wasmtime::format_err!("the segment does not export {PROFILE}#infer-profiled");
            let interface = instance.get_export_index(&mut *store, None, PROFILE).ok_or_else(missing)?;
            let func = instance.get_export_index(&mut *store, Some(&interface), "infer-profiled").ok_or_else(missing)?;
            let func = instance.get_typed_func::<(&[wit::Tensor],), (Result<Vec<NodeTime>, wit::Error>,)>(&mut *store, func)?;
            Ok(func.call(&mut *store, (&inputs,))?.0)
        })?;
        result.map_err(|e| self.guest_error(e))
    }

    /// Whether the segment holds a live instance (it has none after a trap, a deadline or a memory
    /// refusal until the next call starts one).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Sets the deadline of the next calls (a server gives each call what is left of its
    /// request's deadline).
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.limits.deadline = deadline;
    }

    /// The largest total linear memory any instance of this segment has reached, in bytes.
    pub fn peak_memory(&self) -> u64 {
        let live = self.live.as_ref().map_or(0, |l| l.store.data().budget.peak);
        self.peak.max(live)
    }

    /// Instances created and what the latest one cost.
    pub fn stats(&self) -> SegmentStats {
        self.stats
    }

    /// Runs `f` on the live instance's store and component instance (for snapshotting it).
    pub(crate) fn with_instance<R>(&mut self, f: impl FnOnce(&mut Store<State>, Instance) -> R) -> Option<R> {
        let live = self.live.as_mut()?;
        Some(f(&mut live.store, live.instance))
    }

    /// Calls into the live instance (creating it first if needed) under the deadline; a trap,
    /// deadline or memory refusal discards the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(
            &bindings::exports::netless::inference::infer_segment::Guest,
            &mut Store<State>,
            Instance,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, SegmentError> {
        let mut live = match self.live.take() {
            Some(live) => live,
            None => self.instantiate()?,
        };
        live.store.set_epoch_deadline(ticks(self.limits.deadline));
        live.store.data_mut().budget.refused = None;
        let started = Instant::now();
        let result = f(
            live.guest.netless_inference_infer_segment(),
            &mut live.store,
            live.instance,
        );
        if !live.called {
            live.called = true;
            self.stats.first_call = started.elapsed();
        }
        match result {
            Ok(r) => {
                self.live = Some(live);
                Ok(r)
            }
            Err(e) => {
                let budget = &live.store.data().budget;
                self.peak = self.peak.max(budget.peak);
                Err(self.wasm_error(e, budget.refused))
            }
        }
    }

    fn instantiate(&mut self) -> Result<Live, SegmentError> {
        let started = Instant::now();
        self.stats.instances += 1;
        let state = State {
            wasi: WasiCtx::builder()
                .secure_random(StdRng::seed_from_u64(0))
                .insecure_random(StdRng::seed_from_u64(1))
                .insecure_random_seed(0)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            table: ResourceTable::new(),
            budget: MemoryBudget {
                limit: self.limits.memory_bytes,
                total: 0,
                counting: matches!(self.parts, Parts::Composed(_)),
                peak: 0,
                refused: None,
            },
            data: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.budget);
        // Outputs may be as large as the segment's memory, past wasmtime's 128 MiB default.
        store.set_hostcall_fuel(usize::try_from(self.limits.memory_bytes).unwrap_or(usize::MAX));
        store.set_epoch_deadline(ticks(self.limits.deadline));
        let instance = match &self.parts {
            Parts::Composed(pre) => pre.instantiate(&mut store),
            Parts::Linked { runtime, data } => data.instantiate(&mut store).and_then(|data| {
                store.data_mut().budget.counting = true;
                let interface = data
                    .get_export_index(&mut store, None, SEGMENT_DATA)
                    .ok_or_else(|| {
                        wasmtime::format_err!("the data component does not export {SEGMENT_DATA}")
                    })?;
                let func = |store: &mut Store<State>, name| {
                    data.get_export_index(&mut *store, Some(&interface), name)
                        .ok_or_else(|| wasmtime::format_err!("{SEGMENT_DATA} has no `{name}`"))
                };
                let size = func(&mut store, "size")?;
                let read = func(&mut store, "read")?;
                let funcs = DataFuncs {
                    size: data.get_typed_func(&mut store, &size)?,
                    read: data.get_typed_func(&mut store, &read)?,
                };
                store.data_mut().data = Some(funcs);
                runtime.instantiate(&mut store)
            }),
        };
        let guest = instance.and_then(|instance| {
            bindings::Segment::new(&mut store, &instance).map(|guest| (instance, guest))
        });
        match guest {
            Ok((instance, guest)) => {
                self.stats.instantiate = started.elapsed();
                Ok(Live {
                    store,
                    instance,
                    guest,
                    called: false,
                })
            }
            Err(e) => {
                let budget = &store.data().budget;
                self.peak = self.peak.max(budget.peak);
                Err(self.wasm_error(e, budget.refused))
            }
        }
    }

    /// Classifies a wasmtime error: memory refusal first (a failed growth usually ends in an
    /// abort trap), then the deadline, then any other trap.
    fn wasm_error(&self, e: wasmtime::Error, refused: Option<u64>) -> SegmentError {
        let segment = self.label.clone();
        if let Some(wanted) = refused {
            return SegmentError::TooLarge {
                segment,
                message: format!(
                    "linear memory would grow to {wanted} bytes, over the limit of {} bytes",
                    self.limits.memory_bytes
                ),
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => SegmentError::DeadlineExceeded {
                segment,
                deadline: self.limits.deadline,
            },
            _ => SegmentError::Trap {
                segment,
                message: format!("{e:?}"),
            },
        }
    }

    fn guest_error(&self, e: wit::Error) -> SegmentError {
        let segment = self.label.clone();
        match e {
            wit::Error::InvalidInput(message) => SegmentError::InvalidInput { segment, message },
            wit::Error::Unsupported(message) => SegmentError::Unsupported { segment, message },
            wit::Error::TooLarge(message) => SegmentError::TooLarge { segment, message },
            wit::Error::Internal(message) => SegmentError::Internal { segment, message },
        }
    }
}

/// Epoch ticks covering `deadline`, plus one because the current tick may be nearly over.
pub(crate) fn ticks(deadline: Duration) -> u64 {
    (deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).saturating_add(1)
}
