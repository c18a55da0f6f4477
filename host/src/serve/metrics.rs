//! Prometheus metrics in the style of Triton's: per model (the pipeline and each segment), request
//! counts and cumulative durations in microseconds, plus the serverless figures of each segment
//! function (cold starts, live instances, queued requests).

use std::time::Duration;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The server's metrics, labelled by `model` and `version`.
pub struct Metrics {
    registry: Registry,
    success: IntCounterVec,
    failure: IntCounterVec,
    inferences: IntCounterVec,
    request_us: IntCounterVec,
    queue_us: IntCounterVec,
    compute_us: IntCounterVec,
    cold_starts: IntCounterVec,
    cold_start_us: IntCounterVec,
    live: IntGaugeVec,
    queued: IntGaugeVec,
    reclaimed: IntCounterVec,
}

/// The version label of every model: NetLess serves one version of each.
pub const VERSION: &str = "1";

impl Metrics {
    /// A registry holding every metric, all at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["model", "version"]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model", "version"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        Metrics {
            success: counter("nv_inference_request_success", "Number of successful inference requests"),
            failure: counter("nv_inference_request_failure", "Number of failed inference requests"),
            inferences: counter("nv_inference_count", "Number of inferences performed"),
            request_us: counter("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds"),
            queue_us: counter("nv_inference_queue_duration_us", "Cumulative time requests spent waiting for an instance, in microseconds"),
            compute_us: counter("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds"),
            cold_starts: counter("netless_cold_starts", "Instances started (instantiation and model preparation)"),
            cold_start_us: counter("netless_cold_start_duration_us", "Cumulative time spent starting instances, in microseconds"),
            live: gauge("netless_live_instances", "Instances alive, busy or idle"),
            queued: gauge("netless_queued_requests", "Requests waiting for an instance"),
            reclaimed: counter("netless_reclaimed_instances", "Idle instances reclaimed after the idle timeout"),
            registry,
        }
    }

    /// Registers `model` so that its request series show, at zero, before its first request.
    pub fn add_model(&self, model: &str) {
        let labels = [model, VERSION];
        for c in [&self.success, &self.failure, &self.inferences, &self.request_us] {
            c.with_label_values(&labels);
        }
    }

    /// Registers a segment function: its request series and its serverless ones.
    pub fn add_function(&self, function: &str) {
        self.add_model(function);
        let labels = [function, VERSION];
        for c in [&self.queue_us, &self.compute_us, &self.cold_starts, &self.cold_start_us, &self.reclaimed] {
            c.with_label_values(&labels);
        }
        self.live.with_label_values(&labels);
        self.queued.with_label_values(&labels);
    }

    /// A request to `model` ended after `total`.
    pub fn request(&self, model: &str, ok: bool, total: Duration) {
        let labels = [model, VERSION];
        if ok {
            self.success.with_label_values(&labels).inc();
            self.inferences.with_label_values(&labels).inc();
        } else {
            self.failure.with_label_values(&labels).inc();
        }
        self.request_us.with_label_values(&labels).inc_by(micros(total));
    }

    /// A request to `model` waited `queue` for an instance, then computed for `compute`.
    pub fn execution(&self, model: &str, queue: Duration, compute: Duration) {
        let labels = [model, VERSION];
        self.queue_us.with_label_values(&labels).inc_by(micros(queue));
        self.compute_us.with_label_values(&labels).inc_by(micros(compute));
    }

    /// An instance of `model` was started in `took`.
    pub fn cold_start(&self, model: &str, took: Duration) {
        let labels = [model, VERSION];
        self.cold_starts.with_label_values(&labels).inc();
        self.cold_start_us.with_label_values(&labels).inc_by(micros(took));
    }

    /// `model` now has `live` instances and `queued` waiting requests.
    pub fn instances(&self, model: &str, live: usize, queued: usize) {
        let labels = [model, VERSION];
        self.live.with_label_values(&labels).set(live as i64);
        self.queued.with_label_values(&labels).set(queued as i64);
    }

    /// `count` idle instances of `model` were reclaimed.
    pub fn reclaimed(&self, model: &str, count: usize) {
        self.reclaimed.with_label_values(&[model, VERSION]).inc_by(count as u64);
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
