//! The OIP v2 REST routes, `/metrics`, and OIP error JSON for everything that fails, unknown
//! routes included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Collected, LengthLimitError, Limited};
use serde_json::json;
use tracing::Instrument;

use super::metrics::VERSION;
use super::chunks::Chunks;
use super::oip::{self, HEADER_LENGTH};
use super::{ServeError, Served, Service};
use crate::plan::file::TensorSpec;

type Shared = State<Arc<Service>>;
type Params = Path<HashMap<String, String>>;

/// The server's routes.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/metrics", get(|State(s): Shared| async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics()) }))
        .fallback(|method: Method, uri: Uri| async move { ServeError::NotFound(format!("no route for {method} {:?}", uri.to_string())) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            let body = Json(json!({ "error": format!("{method} is not allowed on {uri}") }));
            (StatusCode::METHOD_NOT_ALLOWED, body)
        })
        .with_state(service)
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "netless",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn server_ready(State(service): Shared) -> Response {
    match service.is_ready() {
        true => StatusCode::OK.into_response(),
        false => ServeError::ShuttingDown.into_response(),
    }
}

/// The model a path names, with its version checked.
fn find<'a>(service: &'a Service, params: &HashMap<String, String>) -> Result<&'a Served, ServeError> {
    service.find(params.get("model").map(String::as_str).unwrap_or_default(), params.get("version").map(String::as_str))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<serde_json::Value> {
    specs
        .iter()
        .map(|s| json!({ "name": s.name, "datatype": s.dtype.wire_type().map_or("BYTES", oip::datatype), "shape": s.shape }))
        .collect()
}

async fn model_metadata(State(service): Shared, Path(params): Params) -> Result<Json<serde_json::Value>, ServeError> {
    let model = find(&service, &params)?;
    Ok(Json(json!({
        "name": model.name,
        "versions": [VERSION],
        "platform": "netless_wasm",
        "inputs": tensor_metadata(&model.inputs),
        "outputs": tensor_metadata(&model.outputs),
    })))
}

async fn model_ready(State(service): Shared, Path(params): Params) -> Result<StatusCode, ServeError> {
    find(&service, &params)?;
    match service.is_ready() {
        true => Ok(StatusCode::OK),
        false => Err(ServeError::ShuttingDown),
    }
}

async fn infer(State(service): Shared, Path(params): Params, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = async {
        let body = read_body(&headers, body, service.options().max_body).await?;
        let model = find(&service, &params)?.clone();
        let header_length = headers.get(HEADER_LENGTH).map(|v| v.to_str().unwrap_or("(not text)"));
        let request = oip::rest::decode_request(body.aggregate(), header_length).map_err(|refusal| ServeError::BadRequest(refusal.message))?;
        let id = request.id.clone().unwrap_or_else(|| service.next_request_id());
        let span = tracing::info_span!("infer", id = %id, model = %model.name);
        let outputs = service.infer(&model, &id, request).instrument(span.clone()).await;
        let _entered = span.enter();
        match &outputs {
            Ok(_) => tracing::info!(ms = %format!("{:.1}", started.elapsed().as_secs_f64() * 1e3), "ok"),
            Err(e) => tracing::warn!(status = e.status().as_u16(), error = %e, "failed"),
        }
        let outputs = outputs?;
        let header = oip::encode_header(&model.name, VERSION, Some(&id), &outputs);
        Ok::<_, ServeError>((header, outputs))
    }
    .await;
    match result {
        Ok((header, outputs)) => {
            let content_type = header.content_type();
            let header_length = header.header_length;
            let binary = outputs.into_iter().filter(|(_, as_binary)| *as_binary).map(|(tensor, _)| tensor.data);
            let mut response = Response::new(Body::new(Chunks::message(header.body, binary)));
            if let Some(n) = header_length {
                response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
            }
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Reads the whole body in the chunks it arrived in, refusing it as too large as soon as it is known
/// to be over `limit`. `to_bytes()` joins them (a copy); `aggregate()` reads them as they are.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Collected<Bytes>, ServeError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ServeError::TooLarge { limit });
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING).filter(|e| e.as_bytes() != b"identity") {
        return Err(ServeError::BadRequest(format!("Content-Encoding {encoding:?} is not supported; send the body uncompressed")));
    }
    match Limited::new(body, limit as usize).collect().await {
        Ok(collected) => Ok(collected),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ServeError::TooLarge { limit }),
        Err(e) => Err(ServeError::BadRequest(format!("reading the request body: {e}"))),
    }
}
