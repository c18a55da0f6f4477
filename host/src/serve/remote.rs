//! A segment served by other hosts (`netless up --only-segments` workers), called over OIP v2 with
//! binary tensors: replicas tried in turn, failures that are safe to retry (unreachable, refused,
//! overloaded) retried on the next replica, every hop bounded by the hop timeout and the request's
//! deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::ServeError;
use super::chunks::Chunks;
use super::metrics::Metrics;
use super::oip::{self, HEADER_LENGTH};
use crate::runtime::Tensor;

/// The largest answer a segment may send (the OIP body of its outputs).
const MAX_ANSWER: usize = 1 << 31;

/// A segment on remote replicas.
pub struct RemoteStage {
    name: String,
    replicas: Vec<String>,
    hop_timeout: Duration,
    next: AtomicUsize,
    /// Keeps connections to the replicas alive between requests; runs on the server's own runtime.
    client: Client<HttpConnector, Chunks>,
    metrics: Arc<Metrics>,
}

/// How one attempt on a replica ended.
enum Attempt {
    Done(Vec<Tensor>),
    /// Nothing was computed, or it does not matter: try another replica.
    Retry(String),
    /// A final answer (the segment failed, or rejected what it was sent).
    Fail(ServeError),
}

impl RemoteStage {
    /// Segment `name` (`{m}-seg-{i}`) served at each of `replicas` (base URLs, `http://host:port`).
    pub fn new(name: String, replicas: Vec<String>, hop_timeout: Duration, metrics: Arc<Metrics>) -> RemoteStage {
        metrics.add_model(&name);
        let replicas = replicas.into_iter().map(|r| r.trim_end_matches('/').to_string()).collect();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(hop_timeout.min(Duration::from_secs(2))));
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(connector);
        RemoteStage { name, replicas, hop_timeout, next: AtomicUsize::new(0), client, metrics }
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the segment on `inputs`, on one replica after another until one answers.
    pub async fn call(&self, id: &str, inputs: Vec<Tensor>, deadline: Instant) -> Result<Vec<Tensor>, ServeError> {
        let header = oip::encode_request_header(id, &inputs);
        let request = Request {
            header_length: header.header_length.unwrap_or_default(),
            body: Chunks::message(header.body, inputs.into_iter().map(|t| t.data)),
        };
        let started = Instant::now();
        let result = self.call_replicas(&request, deadline).await;
        self.metrics.request(&self.name, result.is_ok(), started.elapsed());
        result
    }

    async fn call_replicas(&self, request: &Request, deadline: Instant) -> Result<Vec<Tensor>, ServeError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..self.replicas.len() {
            let replica = &self.replicas[(first + k) % self.replicas.len()];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.attempt(replica, request, remaining.min(self.hop_timeout)).await {
                Attempt::Done(outputs) => return Ok(outputs),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(why) => {
                    tracing::warn!(function = %self.name, replica = %replica, error = %why, "replica failed; trying the next");
                    failures.push(format!("{replica}: {why}"));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(ServeError::Deadline { function: self.name.clone(), waited: "calling its replicas" });
        }
        Err(ServeError::Unavailable { function: self.name.clone(), reasons: failures.join("; ") })
    }

    async fn attempt(&self, replica: &str, request: &Request, timeout: Duration) -> Attempt {
        let url = format!("{replica}/v2/models/{}/infer", self.name);
        let post = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(HEADER_LENGTH, request.header_length)
            .body(request.body.clone());
        let post = match post {
            Ok(post) => post,
            Err(e) => return Attempt::Fail(ServeError::Internal(format!("{}: a request to {url:?}: {e}", self.name))),
        };
        let exchange = async {
            let response = self.client.request(post).await.map_err(|e| describe(&e))?;
            let (head, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await.map_err(|e| format!("reading the answer: {}", describe(&*e)))?;
            Ok::<_, String>((head, body))
        };
        let (head, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => return Attempt::Retry(why),
            Err(_) => return Attempt::Retry(format!("no answer within {timeout:?}")),
        };
        let status = head.status.as_u16();
        let header_length = head.headers.get(HEADER_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if status == 200 {
            return match oip::decode_response(body.aggregate(), header_length) {
                Ok(outputs) => Attempt::Done(outputs),
                Err(e) => Attempt::Retry(format!("a malformed answer: {e}")),
            };
        }
        let message = message(&body.to_bytes());
        match status {
            503 | 404 => Attempt::Retry(format!("{status}: {message}")),
            504 => Attempt::Fail(ServeError::Deadline { function: self.name.clone(), waited: "inside the segment" }),
            _ => Attempt::Fail(ServeError::Remote { function: self.name.clone(), replica: replica.to_string(), status, message }),
        }
    }
}

/// One hop's request: the body's chunks are shared by every replica tried, never copied.
struct Request {
    header_length: usize,
    body: Chunks,
}

/// An error answer's `error` field, or the start of its body.
fn message(body: &Bytes) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection refused ...").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
