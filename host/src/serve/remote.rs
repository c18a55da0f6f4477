//! A segment served by other hosts (`netless up --only-segments` workers), called over OIP v2 with
//! binary tensors: replicas tried in turn, failures that are safe to retry (unreachable, refused,
//! overloaded) retried on the next replica, every hop bounded by the hop timeout and the request's
//! deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::ServeError;
use super::metrics::Metrics;
use super::oip::{self, HEADER_LENGTH};
use crate::runtime::Tensor;

/// A segment on remote replicas.
pub struct RemoteStage {
    name: String,
    replicas: Vec<String>,
    hop_timeout: Duration,
    next: AtomicUsize,
    /// Keeps connections to the replicas alive between requests.
    agent: ureq::Agent,
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
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(hop_timeout.min(Duration::from_secs(2))))
            .max_idle_connections_per_host(64)
            .build()
            .into();
        RemoteStage { name, replicas, hop_timeout, next: AtomicUsize::new(0), agent, metrics }
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the segment on `inputs`, on one replica after another until one answers.
    pub async fn call(self: &Arc<Self>, id: &str, inputs: Vec<Tensor>, deadline: Instant) -> Result<Vec<Tensor>, ServeError> {
        let this = self.clone();
        let request = oip::encode_request(id, &inputs);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || this.call_blocking(&request, deadline))
            .await
            .map_err(|e| ServeError::Internal(format!("{}: the call did not complete: {e}", self.name)))
            .flatten();
        self.metrics.request(&self.name, result.is_ok(), started.elapsed());
        result
    }

    fn call_blocking(&self, request: &oip::Encoded, deadline: Instant) -> Result<Vec<Tensor>, ServeError> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..self.replicas.len() {
            let replica = &self.replicas[(first + k) % self.replicas.len()];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.attempt(replica, request, remaining.min(self.hop_timeout)) {
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

    fn attempt(&self, replica: &str, request: &oip::Encoded, timeout: Duration) -> Attempt {
        let url = format!("{replica}/v2/models/{}/infer", self.name);
        let mut post = self.agent.post(&url).config().timeout_global(Some(timeout)).build();
        if let Some(n) = request.header_length {
            post = post.header("Inference-Header-Content-Length", n.to_string());
        }
        let mut response = match post.send(&request.body[..]) {
            Ok(response) => response,
            Err(ureq::Error::Timeout(_)) => return Attempt::Retry(format!("no answer within {timeout:?}")),
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        let status = response.status().as_u16();
        let header_length = response.headers().get(HEADER_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = match response.body_mut().with_config().limit(1 << 31).read_to_vec() {
            Ok(body) => body,
            Err(e) => return Attempt::Retry(format!("reading the answer: {e}")),
        };
        let message = || {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect())
        };
        match status {
            200 => match oip::decode_response(&body, header_length) {
                Ok(outputs) => Attempt::Done(outputs),
                Err(e) => Attempt::Retry(format!("a malformed answer: {e}")),
            },
            503 | 404 => Attempt::Retry(format!("{status}: {}", message())),
            504 => Attempt::Fail(ServeError::Deadline { function: self.name.clone(), waited: "inside the segment" }),
            _ => Attempt::Fail(ServeError::Remote { function: self.name.clone(), replica: replica.to_string(), status, message: message() }),
        }
    }
}
