//! The NetLess gateway as a Spin HTTP component: it serves the whole model over OIP v2 (JSON and
//! binary tensors) and runs it by calling each stage's segment over outbound HTTP with binary
//! tensors.
//!
//! Configuration comes from Spin variables:
//! - `pipeline`: the model's contract and its stages (JSON, `netless_oip::pipeline::PipelineSpec`),
//!   written by `netless build --spin`;
//! - `stage{i}_urls`: where stage `i` is served, comma-separated replicas; under Spin
//!   `http://seg{i}.spin.internal` (service chaining), elsewhere any base URLs;
//! - `deadline_ms`: the time a request may take end to end; `hop_timeout_ms`: the time one call to
//!   one replica may take before the next replica is tried.
//!
//! The shards of a group (entries of `pipeline` with the same `group`) are called concurrently: every
//! request is sent before any answer is read.
//!
//! Failures that are safe to retry (no connection, a timeout, 503, 404, a malformed answer) move on
//! to the next replica; a segment that fails or rejects its inputs fails the request, naming it.

mod outbound;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use netless_oip::pipeline::PipelineSpec;
use netless_oip::rest::{self, Refusal, Route};
use netless_oip::{HEADER_LENGTH, Tensor};
use netless_oip::wasi_body;
use spin_sdk::http::{IncomingRequest, Request, Response};
use spin_sdk::http_component;

use outbound::Answer;

#[http_component]
fn handle(incoming: IncomingRequest) -> Response {
    let started = Instant::now();
    let mut response = match wasi_body::read_request(incoming).and_then(|request| serve(&request, started)) {
        Ok(response) => response,
        Err(refusal) => {
            let mut builder = Response::builder();
            builder.status(refusal.status).header("content-type", "application/json");
            if refusal.status == 503 {
                builder.header("retry-after", "1");
            }
            builder.body(refusal.body()).build()
        }
    };
    response.set_header("x-netless-gateway-ms", format!("{:.1}", started.elapsed().as_secs_f64() * 1e3));
    response
}

/// The gateway's configuration, read from its Spin variables.
struct Config {
    pipeline: PipelineSpec,
    replicas: Vec<Vec<String>>,
    deadline: Duration,
    hop_timeout: Duration,
}

fn variable(name: &str) -> Result<String, Refusal> {
    spin_sdk::variables::get(name).map_err(|e| Refusal::new(500, format!("the gateway's variable `{name}` is not available: {e}")))
}

fn millis(name: &str) -> Result<Duration, Refusal> {
    let value = variable(name)?;
    value.trim().parse().map(Duration::from_millis).map_err(|_| Refusal::new(500, format!("the gateway's variable `{name}` is `{value}`, not a number of milliseconds")))
}

impl Config {
    fn load() -> Result<Config, Refusal> {
        let pipeline: PipelineSpec = serde_json::from_str(&variable("pipeline")?)
            .map_err(|e| Refusal::new(500, format!("the gateway's variable `pipeline` is malformed: {e}")))?;
        let mut replicas = Vec::new();
        for i in 0..pipeline.stages.len() {
            let name = netless_oip::pipeline::stage_urls_variable(i);
            let urls: Vec<String> = variable(&name)?.split(',').map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()).collect();
            if urls.is_empty() {
                return Err(Refusal::new(500, format!("the gateway's variable `{name}` lists no URL")));
            }
            replicas.push(urls);
        }
        Ok(Config { pipeline, replicas, deadline: millis("deadline_ms")?, hop_timeout: millis("hop_timeout_ms")? })
    }
}

fn serve(request: &Request, started: Instant) -> Result<Response, Refusal> {
    let route = rest::route(&request.method().to_string(), request.path())?;
    if matches!(route, Route::Live) {
        return Ok(Response::new(200, ()));
    }
    let config = Config::load()?;
    let spec = &config.pipeline;
    let model = match route {
        Route::Server => return Ok(json(200, &rest::server_metadata(env!("CARGO_PKG_VERSION")))),
        Route::Live | Route::Ready => return Ok(Response::new(200, ())),
        Route::Metadata(m) | Route::ModelReady(m) | Route::Infer(m) => m,
    };
    if model != spec.model {
        return Err(Refusal::new(404, format!("unknown model `{model}`; this gateway serves `{}`", spec.model)));
    }
    match route {
        Route::Metadata(_) => Ok(json(200, &rest::model_metadata(&spec.model, "netless_gateway", &spec.inputs, &spec.outputs))),
        Route::ModelReady(_) => Ok(Response::new(200, ())),
        _ => infer(request, &config, started + config.deadline),
    }
}

fn infer(request: &Request, config: &Config, deadline: Instant) -> Result<Response, Refusal> {
    let spec = &config.pipeline;
    let header_length = request.header(HEADER_LENGTH).map(|v| v.as_str().unwrap_or("(not text)"));
    let bad = |message| Refusal::new(400, message);
    let decoded = rest::decode_request(request.body(), header_length)?;
    let wanted = rest::requested_outputs(&spec.model, &spec.outputs, &decoded).map_err(bad)?;
    let id = decoded.id.clone().unwrap_or_else(|| "gateway".to_string());
    let mut env: HashMap<String, Tensor> = rest::check_inputs(&spec.model, &spec.inputs, decoded.inputs).map_err(bad)?;
    for step in spec.steps() {
        let calls: Vec<Call> = step
            .map(|i| {
                let stage = &spec.stages[i];
                let inputs: Vec<Tensor> = stage.inputs.iter().filter_map(|name| env.get(name).cloned()).collect();
                Call { model: &stage.model, replicas: &config.replicas[i], request: netless_oip::encode_request(&id, &inputs) }
            })
            .collect();
        for outputs in fan_out(&calls, config.hop_timeout, deadline) {
            env.extend(outputs?.into_iter().map(|t| (t.name.clone(), t)));
        }
    }
    let outputs = wanted
        .into_iter()
        .map(|(name, binary)| env.remove(&name).map(|t| (t, binary)).ok_or_else(|| Refusal::new(500, format!("no stage returned output `{name}`"))))
        .collect::<Result<Vec<_>, _>>()?;
    let encoded = netless_oip::encode(&spec.model, rest::VERSION, Some(&id), &outputs);
    let mut builder = Response::builder();
    builder.status(200);
    if let Some(n) = encoded.header_length {
        builder.header(HEADER_LENGTH, n.to_string());
    }
    builder.header("content-type", encoded.content_type());
    Ok(builder.body(encoded.body).build())
}

/// One function to call: its OIP model, its replicas, the encoded request.
struct Call<'a> {
    model: &'a str,
    replicas: &'a [String],
    request: netless_oip::Encoded,
}

/// What one answer from one replica means.
enum Outcome {
    Done(Vec<Tensor>),
    /// Safe to try the next replica, for this reason.
    Retry(String),
    Fail(Refusal),
}

fn outcome(model: &str, replica: &str, answer: Result<Answer, String>) -> Outcome {
    match answer {
        Err(why) => Outcome::Retry(format!("{replica}: {why}")),
        Ok(Answer { status: 200, header_length, body }) => match netless_oip::decode_response(&body[..], header_length) {
            Ok(outputs) => Outcome::Done(outputs),
            Err(e) => Outcome::Retry(format!("{replica}: a malformed answer: {e}")),
        },
        Ok(answer @ Answer { status: 503 | 404, .. }) => Outcome::Retry(format!("{replica}: {}: {}", answer.status, answer.message())),
        Ok(Answer { status: 504, .. }) => Outcome::Fail(Refusal::new(504, format!("{model}: the request's deadline passed inside the segment"))),
        Ok(answer) => Outcome::Fail(Refusal::new(500, format!("{model} at {replica} answered {}: {}", answer.status, answer.message()))),
    }
}

/// Calls every function of one step: the first try of each at once (a group's shards run
/// concurrently), then any retries one replica after another.
fn fan_out(calls: &[Call], hop_timeout: Duration, deadline: Instant) -> Vec<Result<Vec<Tensor>, Refusal>> {
    let firsts: Vec<usize> = calls.iter().map(|c| outbound::spread(c.replicas.len())).collect();
    let pending: Vec<_> = calls
        .iter()
        .zip(&firsts)
        .map(|(c, &first)| {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let url = format!("{}/v2/models/{}/infer", c.replicas[first], c.model);
            outbound::send(&url, &c.request, remaining.min(hop_timeout))
        })
        .collect();
    calls
        .iter()
        .zip(firsts)
        .zip(pending)
        .map(|((c, first), sent)| {
            let answer = sent.and_then(outbound::Pending::answer);
            match outcome(c.model, &c.replicas[first], answer) {
                Outcome::Done(outputs) => Ok(outputs),
                Outcome::Fail(refusal) => Err(refusal),
                Outcome::Retry(why) => call(c, first + 1, vec![why], hop_timeout, deadline),
            }
        })
        .collect()
}

/// Calls a function on its replicas in turn from `next`, after `failures` of earlier tries.
fn call(c: &Call, next: usize, mut failures: Vec<String>, hop_timeout: Duration, deadline: Instant) -> Result<Vec<Tensor>, Refusal> {
    let count = c.replicas.len();
    for k in 0..count.saturating_sub(failures.len()) {
        let replica = &c.replicas[(next + k) % count];
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let url = format!("{replica}/v2/models/{}/infer", c.model);
        match outcome(c.model, replica, outbound::post(&url, &c.request, remaining.min(hop_timeout))) {
            Outcome::Done(outputs) => return Ok(outputs),
            Outcome::Fail(refusal) => return Err(refusal),
            Outcome::Retry(why) => failures.push(why),
        }
    }
    if Instant::now() >= deadline {
        return Err(Refusal::new(504, format!("{}: the request's deadline passed calling its replicas", c.model)));
    }
    Err(Refusal::new(503, format!("{} is unavailable: no replica answered ({})", c.model, failures.join("; "))))
}

fn json(status: u16, value: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(value).expect("a JSON value always serialises");
    Response::builder().status(status).header("content-type", "application/json").body(body).build()
}
