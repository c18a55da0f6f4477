//! `netless up`: a built plan served over the Open Inference Protocol v2 (KServe / Triton REST).
//!
//! The whole pipeline is model `{m}` and each segment is also model `{m}-seg-{i}`. Each segment
//! runs as a serverless [`Function`]: instances on demand, pooled, reclaimed when idle, a bounded
//! queue. A request walks the stages and holds one stage's instance at a time, so concurrent
//! requests are pipelined: stage 2 works on one while stage 1 works on the next. The shards of a
//! group stage are functions of their own, called concurrently.

mod chunks;
mod error;
mod function;
mod grpc;
mod http;
pub mod metrics;
pub use netless_oip as oip;
pub mod prepare;
pub mod spin;
mod remote;
pub mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use error::ServeError;
pub use function::{Function, Scaling};
pub use remote::RemoteStage;
use metrics::Metrics;
use oip::InferRequest;

use crate::package::artifacts;
use crate::plan::Plan;
use crate::plan::file::TensorSpec;
use crate::runtime::{Engine, Tensor};
use crate::{Error, Result};

/// How the service runs its functions.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The pipeline's model name (default: the plan's model name).
    pub name: Option<String>,
    /// Scaling of every segment function.
    pub scaling: Scaling,
    /// Time a request may take end to end, queues included.
    pub deadline: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// Pipeline concurrent requests through the stages (otherwise a request holds an instance
    /// of every stage from start to end).
    pub pipelining: bool,
    /// Serve only these segments, each as its own model (a worker of a distributed pipeline);
    /// `None` serves the pipeline and every segment.
    pub only_segments: Option<Vec<usize>>,
}

/// Where a stage of the pipeline runs.
pub enum Stage {
    /// In this host, as a serverless function.
    Local(Arc<Function>),
    /// On other hosts, called over HTTP.
    Remote(Arc<RemoteStage>),
    /// Not served here (a worker serving other segments).
    Absent,
}

/// A model the service answers to: the pipeline or one segment.
#[derive(Debug, Clone)]
pub struct Served {
    /// Its name in URLs.
    pub name: String,
    /// The stages it runs.
    pub stages: Range<usize>,
    /// Its inputs.
    pub inputs: Vec<TensorSpec>,
    /// Its outputs.
    pub outputs: Vec<TensorSpec>,
}

/// A built plan ready to serve: its functions, models and metrics.
pub struct Service {
    plan: Plan,
    name: String,
    models: Vec<Served>,
    stages: Vec<Stage>,
    metrics: Arc<Metrics>,
    options: ServeOptions,
    ready: AtomicBool,
    next_id: AtomicU64,
}

impl Service {
    /// Loads the built plan in `dir`: compiles (or loads from the cache) every pre-initialised
    /// segment, or else the runtime and every segment's data component. No instance starts until
    /// a request needs one.
    pub fn load(engine: &Engine, dir: &Path, options: ServeOptions) -> Result<Service> {
        let plan = Plan::load(dir)?;
        let source = artifacts::SegmentSource::load(engine, dir)?;
        let name = options.name.clone().unwrap_or_else(|| model_name(&plan.model.name));
        let metrics = Arc::new(Metrics::new());
        let mut stages = Vec::new();
        for seg in &plan.segments {
            if options.only_segments.as_ref().is_some_and(|only| !only.contains(&seg.index)) {
                stages.push(Stage::Absent);
                continue;
            }
            let factory = source.factory(engine, dir, seg, options.deadline)?;
            let function = Function::new(oip::rest::segment_name(&name, seg.index), factory, options.scaling, metrics.clone());
            stages.push(Stage::Local(Arc::new(function)));
        }
        if let Some(missing) = options.only_segments.iter().flatten().find(|&&i| i >= plan.segments.len()) {
            return Err(Error::Plan { path: dir.join(crate::plan::file::FILE_NAME), reason: format!("has no segment {missing}") });
        }
        Ok(Service::new(plan, name, stages, metrics, options))
    }

    /// A gateway: serves the pipeline of the plan in `dir` (only `plan.json` is read) by calling
    /// segment `i` on the hosts `replicas[i]` (base URLs of `netless up --only-segments` workers).
    pub fn gateway(dir: &Path, replicas: Vec<Vec<String>>, hop_timeout: Duration, options: ServeOptions) -> Result<Service> {
        let plan = Plan::load(dir)?;
        if replicas.len() != plan.segments.len() || replicas.iter().any(Vec::is_empty) {
            return Err(Error::Plan {
                path: dir.join(crate::plan::file::FILE_NAME),
                reason: format!("has {} segments; give at least one host for each (got hosts for {})", plan.segments.len(), replicas.iter().filter(|r| !r.is_empty()).count()),
            });
        }
        let name = options.name.clone().unwrap_or_else(|| model_name(&plan.model.name));
        let metrics = Arc::new(Metrics::new());
        let stages = replicas
            .into_iter()
            .enumerate()
            .map(|(i, hosts)| Stage::Remote(Arc::new(RemoteStage::new(oip::rest::segment_name(&name, i), hosts, hop_timeout, metrics.clone()))))
            .collect();
        let options = ServeOptions { only_segments: None, ..options };
        let mut service = Service::new(plan, name, stages, metrics, options);
        service.models.truncate(1);
        Ok(service)
    }

    fn new(plan: Plan, name: String, stages: Vec<Stage>, metrics: Arc<Metrics>, options: ServeOptions) -> Service {
        let mut models = Vec::new();
        if stages.iter().all(|s| !matches!(s, Stage::Absent)) {
            metrics.add_model(&name);
            models.push(Served { name: name.clone(), stages: 0..plan.segments.len(), inputs: plan.model.inputs.clone(), outputs: plan.model.outputs.clone() });
        }
        for (seg, stage) in plan.segments.iter().zip(&stages) {
            if !matches!(stage, Stage::Absent) {
                models.push(Served {
                    name: oip::rest::segment_name(&name, seg.index),
                    stages: seg.index..seg.index + 1,
                    inputs: seg.inputs.clone(),
                    outputs: seg.outputs.clone(),
                });
            }
        }
        Service { plan, name, models, stages, metrics, options, ready: AtomicBool::new(true), next_id: AtomicU64::new(1) }
    }

    /// The pipeline's model name (served only when every segment is).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plan being served.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The models served: the pipeline first (when every segment is here), then each segment.
    pub fn models(&self) -> &[Served] {
        &self.models
    }

    /// The segment functions running in this host, in pipeline order.
    pub fn functions(&self) -> Vec<Arc<Function>> {
        self.stages.iter().filter_map(|s| match s { Stage::Local(f) => Some(f.clone()), _ => None }).collect()
    }

    /// The metrics, in the Prometheus text format.
    pub fn metrics(&self) -> String {
        self.metrics.render()
    }

    /// The options the service runs with.
    pub fn options(&self) -> &ServeOptions {
        &self.options
    }

    /// Whether the service accepts requests (false once shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Stops reporting ready, for a graceful shutdown.
    pub fn drain(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Option<&Served> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model called `name`, with `version` checked if given; otherwise a 404 naming what is served.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&Served, ServeError> {
        let model = self.model(name).ok_or_else(|| {
            let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            ServeError::NotFound(format!("unknown model `{name}`; this server serves {}", known.join(", ")))
        })?;
        match version {
            Some(v) if v != metrics::VERSION => Err(ServeError::NotFound(format!("model {name:?} has no version {v:?}; it serves version {}", metrics::VERSION))),
            _ => Ok(model),
        }
    }

    /// Runs an inference request on `model`; returns the outputs to send, each with whether it
    /// goes as binary data, and records the request in the metrics.
    pub async fn infer(&self, model: &Served, id: &str, request: InferRequest) -> Result<Vec<(Tensor, bool)>, ServeError> {
        let started = Instant::now();
        let result = self.run(model, id, request, started + self.options.deadline).await;
        // A segment model's function records its own calls; the rest are recorded here.
        let by_function = matches!(
            result,
            Err(ServeError::Overloaded { .. } | ServeError::Deadline { .. } | ServeError::Segment { .. } | ServeError::ShuttingDown | ServeError::Unavailable { .. } | ServeError::Remote { .. })
        );
        if model.stages.len() > 1 || model.name == self.name() || (result.is_err() && !by_function) {
            self.metrics.request(&model.name, result.is_ok(), started.elapsed());
        }
        result
    }

    /// A request id for requests that bring none.
    pub fn next_request_id(&self) -> String {
        format!("netless-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn run(&self, model: &Served, id: &str, request: InferRequest, deadline: Instant) -> Result<Vec<(Tensor, bool)>, ServeError> {
        let wanted = requested_outputs(model, &request)?;
        let mut env = check_inputs(model, request.inputs)?;
        let stages = model.stages.clone();
        let mut slots: HashMap<usize, function::Slot> = HashMap::new();
        if !self.options.pipelining {
            for index in stages.clone() {
                if let Stage::Local(function) = &self.stages[index] {
                    slots.insert(index, function.reserve(deadline).await?);
                }
            }
        }
        let groups: Vec<Vec<usize>> = self
            .plan
            .stages
            .iter()
            .map(|s| s.segments.iter().copied().filter(|i| stages.contains(i)).collect::<Vec<_>>())
            .filter(|g| !g.is_empty())
            .collect();
        for group in groups {
            let calls = group.iter().map(|&index| {
                let inputs = self.plan.segments[index].inputs.iter().filter_map(|s| env.get(&s.name).cloned()).collect();
                self.call_stage(index, id, inputs, slots.remove(&index), deadline)
            });
            let results = futures_util::future::join_all(calls).await;
            for outputs in results {
                env.extend(outputs?.into_iter().map(|t| (t.name.clone(), t)));
            }
            tracing::debug!(segments = ?group, "stage done");
        }
        wanted
            .into_iter()
            .map(|(name, binary)| {
                let tensor = env.remove(&name).ok_or_else(|| ServeError::Internal(format!("no segment returned output `{name}`")))?;
                Ok((tensor, binary))
            })
            .collect()
    }
}

impl Service {
    /// Calls function `index` (a segment or a shard) with `inputs`, on a reserved slot if given.
    async fn call_stage(&self, index: usize, id: &str, inputs: Vec<Tensor>, slot: Option<function::Slot>, deadline: Instant) -> Result<Vec<Tensor>, ServeError> {
        match &self.stages[index] {
            Stage::Local(function) => {
                let slot = match slot {
                    Some(slot) => slot,
                    None => function.reserve(deadline).await?,
                };
                function.call(slot, inputs, deadline).await
            }
            Stage::Remote(remote) => remote.call(id, inputs, deadline).await,
            Stage::Absent => Err(ServeError::Internal(format!("segment {index} is not served here"))),
        }
    }
}

/// The outputs to return and whether each goes as binary data; an unknown name is a bad request.
fn requested_outputs(model: &Served, request: &InferRequest) -> Result<Vec<(String, bool)>, ServeError> {
    let Some(requested) = &request.outputs else {
        return Ok(model.outputs.iter().map(|o| (o.name.clone(), request.binary_output)).collect());
    };
    requested
        .iter()
        .map(|r| match model.outputs.iter().any(|o| o.name == r.name) {
            true => Ok((r.name.clone(), r.binary.unwrap_or(request.binary_output))),
            false => Err(ServeError::BadRequest(format!(
                "unknown output `{}`; model `{}` has outputs {}",
                r.name,
                model.name,
                names(&model.outputs)
            ))),
        })
        .collect()
}

/// Checks the inputs against the model's: every one given once, with its datatype and shape.
fn check_inputs(model: &Served, inputs: Vec<Tensor>) -> Result<HashMap<String, Tensor>, ServeError> {
    let mut env = HashMap::new();
    for tensor in inputs {
        let Some(spec) = model.inputs.iter().find(|s| s.name == tensor.name) else {
            return Err(ServeError::BadRequest(format!(
                "unknown input `{}`; model `{}` takes {}",
                tensor.name,
                model.name,
                names(&model.inputs)
            )));
        };
        let want = spec.dtype.wire_type().map_or("BYTES", oip::datatype);
        if oip::datatype(tensor.dtype) != want {
            return Err(ServeError::BadRequest(format!(
                "input `{}`: datatype {}, but model `{}` takes {want}",
                tensor.name,
                oip::datatype(tensor.dtype),
                model.name
            )));
        }
        if tensor.shape != spec.shape {
            return Err(ServeError::BadRequest(format!(
                "input `{}`: shape {:?}, but model `{}` takes {:?}",
                tensor.name, tensor.shape, model.name, spec.shape
            )));
        }
        if env.insert(tensor.name.clone(), tensor).is_some() {
            return Err(ServeError::BadRequest(format!("input `{}` is given twice", spec.name)));
        }
    }
    if let Some(missing) = model.inputs.iter().find(|s| !env.contains_key(&s.name)) {
        return Err(ServeError::BadRequest(format!(
            "missing input `{}` ({} {:?}) of model `{}`",
            missing.name,
            missing.dtype.wire_type().map_or("BYTES", oip::datatype),
            missing.shape,
            model.name
        )));
    }
    Ok(env)
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ")
}

pub use netless_oip::rest::model_name;

/// A server on its own thread and tokio runtime, stopped (requests in flight finished) on drop.
pub(crate) struct Background {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Background {
    /// Binds `listen` and runs `serve(listener, stopped)` until stopped.
    pub(crate) fn start<F, Fut>(listen: SocketAddr, serve: F) -> std::io::Result<Background>
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<()>>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(listen))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || runtime.block_on(serve(listener, stopped)));
        Ok(Background { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes what is in flight, and returns.
    pub(crate) fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| Err(std::io::Error::other("the server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A server running on its own thread and runtime, for tests, benchmarks and embedding.
pub struct Handle {
    background: Background,
    service: Arc<Service>,
}

impl Handle {
    /// Binds `listen` and serves `service` until [`Handle::stop`] (or drop).
    pub fn start(service: Service, listen: SocketAddr) -> std::io::Result<Handle> {
        let service = Arc::new(service);
        let served = service.clone();
        let background = Background::start(listen, move |listener, stopped| {
            serve(served, listener, async {
                let _ = stopped.await;
            })
        })?;
        Ok(Handle { background, service })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.background.addr()
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Stops accepting, finishes what is in flight, and returns.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.background.shutdown()
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then finishes the requests in
/// flight. Idle instances are reclaimed in the background.
pub async fn serve(service: Arc<Service>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let warm = service.clone();
    tokio::task::spawn_blocking(move || {
        for function in warm.functions() {
            if let Err(e) = function.warm_up() {
                tracing::error!(function = function.name(), error = %e, "warming up");
            }
        }
    });
    let reaper = tokio::spawn(reclaim_idle(service.clone()));
    let drained = service.clone();
    use axum::serve::ListenerExt;
    // Small answers must not wait for the peer's delayed ACK (Nagle's algorithm).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let result = axum::serve(listener, http::router(service.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            drained.drain();
            tracing::info!("shutting down: no new connections; finishing requests in flight");
        })
        .await;
    reaper.abort();
    result
}

/// Serves `service` over gRPC (OIP's `inference.GRPCInferenceService`) on `listener` until
/// `shutdown` completes, beside [`serve`] on its own port.
pub async fn serve_grpc(service: Arc<Service>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let router = tonic::service::Routes::new(grpc::server(service)).prepare().into_axum_router();
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn reclaim_idle(service: Arc<Service>) {
    let period = (service.options.scaling.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let service = service.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let reclaimed: usize = service.functions().iter().map(|f| f.reclaim()).sum();
            if reclaimed > 0 {
                release_freed_memory();
            }
        })
        .await;
    }
}

/// Returns memory freed by reclaimed instances and finished requests to the system now, from every
/// arena, rather than after jemalloc's decay time. Linked into a binary with another global allocator (the
/// tests), it purges jemalloc's unused arenas and so changes nothing.
fn release_freed_memory() {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes and returns nothing, so every pointer is null;
    // it only returns unused pages the allocator holds to the system.
    unsafe {
        tikv_jemalloc_sys::mallctl(c"arena.4096.purge".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
    }
}
