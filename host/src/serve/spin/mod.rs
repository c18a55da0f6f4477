//! `netless up --spin`: a Spin application (`spin.toml`) run in NetLess's own `wasi:http` host, the
//! way `spin up` runs it: HTTP triggers routed by path (private routes unreachable from outside),
//! a fresh instance of the component for every request, application and component variables
//! (`fermyon:spin/variables`), `allowed_outbound_hosts`, and requests to
//! `http://<component>.spin.internal` handed to that component in process (service chaining).
//!
//! On top of Spin, every component gets a memory limit (from the split's plan for NetLess segments)
//! and every request a deadline; a component that traps or runs out of memory answers 500 naming it.

mod outbound;
mod variables;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State as Axum;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::package::spin_app;
use crate::package::spin_manifest::{Manifest, Route};
use crate::plan::Plan;
use crate::runtime::{EngineError, Ticker, compile_cached, new_engine, ticks};
use crate::{Error, Result};
use outbound::{HostPattern, Hooks};

/// Bytes of each linear memory kept resident between the per-request instances of a slot, so a
/// request does not fault in the pages its previous instance already touched (docs/spin.md).
const KEEP_RESIDENT: usize = 8 << 20;

/// How the app is run.
#[derive(Debug, Clone)]
pub struct SpinOptions {
    /// Values of application variables, over their defaults (`--variable`, `SPIN_VARIABLE_*`).
    pub variables: BTreeMap<String, String>,
    /// Time one request may take, chained requests included.
    pub deadline: Duration,
    /// Memory limit of a component the plan does not size (the gateway, foreign components).
    pub default_memory: u64,
    /// Largest request body accepted.
    pub max_body: u64,
}

/// One component, ready to instantiate per request.
struct Loaded {
    pre: ProxyPre<StoreState>,
    variables: Arc<BTreeMap<String, String>>,
    allowed: Arc<Vec<HostPattern>>,
    memory: u64,
}

/// A loaded Spin app.
pub struct SpinApp {
    name: String,
    version: Option<String>,
    components: HashMap<String, Loaded>,
    /// Public routes, longest first: (path or prefix, is a prefix, component).
    routes: Vec<(String, bool, String)>,
    deadline: Duration,
    max_body: u64,
    metrics: Arc<super::metrics::Metrics>,
    _ticker: Arc<Ticker>,
}

/// Per-request store state.
struct StoreState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Hooks,
    budget: Budget,
    variables: Arc<BTreeMap<String, String>>,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Caps the sum of a request's linear memories, remembering a refusal for the error message.
struct Budget {
    limit: u64,
    total: u64,
    refused: Option<u64>,
}

impl ResourceLimiter for Budget {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let wanted = self.total - current as u64 + desired as u64;
        if wanted > self.limit {
            self.refused = Some(wanted);
            return Ok(false);
        }
        self.total = wanted;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl SpinApp {
    /// Loads the app of `manifest_path`: compiles (or loads from `cache_dir`) every component,
    /// resolves variables, and sizes NetLess segments from their split's `plan.json`.
    pub fn load(manifest_path: &Path, cache_dir: &Path, options: SpinOptions) -> Result<Arc<SpinApp>> {
        let manifest = Manifest::read(manifest_path)?;
        std::fs::create_dir_all(cache_dir).map_err(Error::io(cache_dir))?;
        let base = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let values = variables::application_values(&manifest, &options.variables).map_err(|reason| Error::Plan { path: manifest_path.into(), reason })?;

        let engine = new_engine(cache_dir, KEEP_RESIDENT)?;
        let mut linker: Linker<StoreState> = Linker::new(&engine);
        let link = |e: wasmtime::Error| Error::Engine(EngineError::Config(e));
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
        variables::add_to_linker(&mut linker).map_err(link)?;

        let metrics = Arc::new(super::metrics::Metrics::new());
        let mut components = HashMap::new();
        let mut sources = Vec::new();
        for (id, component) in &manifest.component {
            let source = base.join(&component.source);
            let wasm = std::fs::read(&source).map_err(|e| Error::Package { what: format!("Spin component `{id}`"), reason: format!("{}: {e}", source.display()) })?;
            sources.push((id, component, source, wasm));
        }
        let bar = crate::progress::bytes(sources.iter().map(|s| s.3.len() as u64).sum(), "compiling");
        for (id, component, source, wasm) in sources {
            let what = |reason: String| Error::Package { what: format!("Spin component `{id}`"), reason };
            let compiled = compile_cached(&engine, cache_dir, &wasm)?;
            let pre = linker.instantiate_pre(&compiled).map_err(|e| what(format!("{}: {e:#}", source.display())))?;
            let pre = ProxyPre::new(pre).map_err(|e| what(format!("it does not export wasi:http/incoming-handler: {e:#}")))?;
            let variables = component
                .variables
                .iter()
                .map(|(name, template)| Ok((name.clone(), variables::expand(template, &values)?)))
                .collect::<Result<BTreeMap<_, _>, String>>()
                .map_err(|e| what(format!("variables: {e}")))?;
            let allowed = component
                .allowed_outbound_hosts
                .iter()
                .map(|entry| variables::expand(entry, &values))
                .filter(|e| !matches!(e.as_deref(), Ok("" | "http://" | "https://")))
                .map(|e| e.and_then(|e| HostPattern::parse(&e)))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| what(format!("allowed_outbound_hosts: {e}")))?;
            let memory = segment_memory(&source, id).unwrap_or(options.default_memory);
            metrics.add_model(id);
            components.insert(id.clone(), Loaded { pre, variables: Arc::new(variables), allowed: Arc::new(allowed), memory });
            bar.inc(wasm.len() as u64);
        }
        bar.finish_and_clear();
        let mut routes: Vec<(String, bool, String)> = manifest
            .trigger
            .http
            .iter()
            .filter_map(|t| match &t.route {
                Route::Path(path) => Some(match path.strip_suffix("/...") {
                    Some(prefix) => (prefix.to_string(), true, t.component.clone()),
                    None => (path.trim_end_matches('/').to_string(), false, t.component.clone()),
                }),
                Route::Private { .. } => None,
            })
            .collect();
        routes.sort_by_key(|(path, prefix, _)| std::cmp::Reverse((path.len(), !*prefix)));
        Ok(Arc::new(SpinApp {
            name: manifest.application.name,
            version: manifest.application.version,
            components,
            routes,
            deadline: options.deadline,
            max_body: options.max_body,
            metrics,
            _ticker: Ticker::start(engine),
        }))
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public routes and their components, longest first.
    pub fn routes(&self) -> impl Iterator<Item = (String, &str)> {
        self.routes.iter().map(|(path, prefix, id)| (if *prefix { format!("{path}/...") } else { path.clone() }, id.as_str()))
    }

    /// Requests, failures and instantiations per component, in the Prometheus text format (the
    /// Triton names `netless up` uses; every request is a cold start, as under Spin).
    pub fn metrics(&self) -> String {
        self.metrics.render()
    }

    /// The component a public route sends `path` to.
    fn route(&self, path: &str) -> Option<&str> {
        let path = path.trim_end_matches('/');
        self.routes
            .iter()
            .find(|(route, prefix, _)| match prefix {
                true => path == route || path.starts_with(&format!("{route}/")) || route.is_empty(),
                false => path == route,
            })
            .map(|(_, _, id)| id.as_str())
    }

    /// Runs component `id` on `request` in a fresh instance, within `deadline`.
    async fn handle<B>(self: &Arc<Self>, id: &str, request: axum::http::Request<B>, deadline: Instant) -> axum::http::Response<HyperOutgoingBody>
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let response = self.run(id, request, deadline).await;
        if self.components.contains_key(id) {
            self.metrics.request(id, response.status().is_success(), started.elapsed());
        }
        response
    }

    async fn run<B>(self: &Arc<Self>, id: &str, request: axum::http::Request<B>, deadline: Instant) -> axum::http::Response<HyperOutgoingBody>
    where
        B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Some(component) = self.components.get(id) else {
            return error_response(StatusCode::NOT_FOUND, &format!("the app has no component `{id}`"));
        };
        let state = StoreState {
            wasi: WasiCtx::builder().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Hooks { app: self.clone(), component: id.to_string(), allowed: component.allowed.clone(), deadline },
            budget: Budget { limit: component.memory, total: 0, refused: None },
            variables: component.variables.clone(),
        };
        let mut store = Store::new(component.pre.engine(), state);
        store.limiter(|s| &mut s.budget);
        store.set_epoch_deadline(ticks(deadline.saturating_duration_since(Instant::now())));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| {
            let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok::<_, wasmtime::Error>((request, out))
        })();
        let (request, out) = match prepared {
            Ok(handles) => handles,
            Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("{id}: {e:#}")),
        };
        let pre = component.pre.clone();
        let (metrics, name) = (self.metrics.clone(), id.to_string());
        let task = tokio::spawn(async move {
            let result = async {
                let instantiating = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                metrics.cold_start(&name, instantiating.elapsed());
                proxy.wasi_http_incoming_handler().call_handle(&mut store, request, out).await
            }
            .await;
            result.map_err(|e| (e, store.data().budget.refused))
        });
        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("component `{id}` failed: {code:?}")),
            Err(_) => {
                let why = match task.await {
                    Ok(Ok(())) => "it returned without setting a response".to_string(),
                    Ok(Err((e, refused))) => describe_trap(&e, refused, component.memory),
                    Err(e) => format!("its task failed: {e}"),
                };
                tracing::warn!(component = id, error = %why, "component failed");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("component `{id}` failed: {why}"))
            }
        }
    }
}

/// The memory limit of a NetLess segment component (`OUT/spin/seg{i}.wasm`) from `OUT/plan.json`.
fn segment_memory(source: &Path, id: &str) -> Option<u64> {
    let dir = source.parent()?.parent()?;
    let plan = Plan::load(dir).ok()?;
    let preinitialized = crate::package::artifacts::preinitialized(dir).is_some();
    let segment = plan.segments.iter().find(|s| spin_app::segment_component(s.index) == id)?;
    Some(spin_app::http_segment_memory(segment, preinitialized))
}

fn describe_trap(e: &wasmtime::Error, refused: Option<u64>, limit: u64) -> String {
    if let Some(wanted) = refused {
        return format!("out of memory: it needed {wanted} bytes of linear memory, over its limit of {limit} bytes ({e:#})");
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "the request's deadline passed while it ran".into(),
        _ => format!("it trapped: {e:#}"),
    }
}

/// An OIP-style JSON error response.
fn error_response(status: StatusCode, message: &str) -> axum::http::Response<HyperOutgoingBody> {
    let body = Full::new(axum::body::Bytes::from(netless_oip::rest::error_body(message))).map_err(|never| match never {}).boxed_unsync();
    let mut response = axum::http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    response
}

/// Serves the app on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(app: Arc<SpinApp>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let router = axum::Router::new().fallback(dispatch).with_state(app);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// The path prefix Spin keeps for itself: no app route is reached below it.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/spin/";

/// Where this host serves its metrics: under Spin's reserved prefix, so no app route is shadowed.
pub const METRICS_PATH: &str = "/.well-known/spin/metrics";

async fn dispatch(Axum(app): Axum<Arc<SpinApp>>, request: Request<Body>) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_string();
    if let Some(well_known) = path.strip_prefix(WELL_KNOWN_PREFIX) {
        return match well_known {
            "health" => "OK".into_response(),
            "info" => axum::Json(serde_json::json!({ "name": app.name, "version": app.version })).into_response(),
            "metrics" => ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics()).into_response(),
            _ => (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": format!("no route for {path:?}") }))).into_response(),
        };
    }
    let Some(id) = app.route(&path).map(str::to_string) else {
        return (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": format!("no route for {path:?}") }))).into_response();
    };
    let (parts, body) = request.into_parts();
    let body = match super::http::read_body(&parts.headers, body, app.max_body).await {
        Ok(body) => body.to_bytes(),
        Err(e) => return e.into_response(),
    };
    let mut parts = parts;
    if parts.uri.authority().is_none() {
        let host = host_of(&parts.headers);
        if let Ok(uri) = format!("http://{host}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str())).parse() {
            parts.uri = uri;
        }
    }
    let request = axum::http::Request::from_parts(parts, Full::new(body));
    let response = app.handle(&id, request, started + app.deadline).await;
    tracing::info!(component = %id, path = %path, status = response.status().as_u16(), ms = %format!("{:.1}", started.elapsed().as_secs_f64() * 1e3), "request");
    response.map(Body::new).into_response()
}

fn host_of(headers: &HeaderMap) -> String {
    headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string()
}

/// The `spin.toml` of a split's folder, or the manifest file given.
pub fn manifest_path(target: &Path) -> PathBuf {
    if target.is_dir() { target.join("spin.toml") } else { target.to_path_buf() }
}

/// A Spin app served on its own thread and runtime, for tests, benchmarks and embedding.
pub struct SpinHandle {
    background: super::Background,
}

impl SpinHandle {
    /// Binds `listen` and serves `app` until [`SpinHandle::stop`] (or drop).
    pub fn start(app: Arc<SpinApp>, listen: std::net::SocketAddr) -> std::io::Result<SpinHandle> {
        let background = super::Background::start(listen, move |listener, stopped| {
            serve(app, listener, async {
                let _ = stopped.await;
            })
        })?;
        Ok(SpinHandle { background })
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.background.addr())
    }

    /// Stops accepting, finishes what is in flight, and returns.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.background.shutdown()
    }
}
