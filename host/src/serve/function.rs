//! One segment served as a serverless function: instances start on demand from precompiled code,
//! are pooled and reused, and are reclaimed once idle for the idle timeout (scale to zero). At most
//! `max_instances` run at once; up to `queue_size` more requests wait for one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ServeError;
use super::metrics::Metrics;
use crate::runtime::{Segment, SegmentFactory, Tensor};

/// How a function scales.
#[derive(Debug, Clone, Copy)]
pub struct Scaling {
    /// Instances started with the server and never reclaimed (0: scale to zero).
    pub min_instances: usize,
    /// Instances that may run at once.
    pub max_instances: usize,
    /// Requests that may wait for an instance; more are refused as overloaded.
    pub queue_size: usize,
    /// An instance idle this long is reclaimed.
    pub idle_timeout: Duration,
}

/// A segment function and its instance pool.
pub struct Function {
    name: String,
    factory: SegmentFactory,
    scaling: Scaling,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    pool: Mutex<Pool>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Pool {
    idle: Vec<(Segment, Instant)>,
    live: usize,
}

/// The right to run one call on the function, held from the queue until the call ends.
pub struct Slot {
    permit: OwnedSemaphorePermit,
    queued: Duration,
}

/// Counts a waiting request for as long as it waits.
struct Waiting<'a>(&'a Function);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.report();
    }
}

impl Function {
    /// A function with no instances yet, named `name` in errors and metrics.
    pub fn new(name: String, factory: SegmentFactory, scaling: Scaling, metrics: Arc<Metrics>) -> Function {
        metrics.add_function(&name);
        Function {
            slots: Arc::new(Semaphore::new(scaling.max_instances)),
            name,
            factory,
            scaling,
            waiting: AtomicUsize::new(0),
            pool: Mutex::new(Pool::default()),
            metrics,
        }
    }

    /// The function's name (`{model}-seg-{i}`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for a free instance slot: at once if one is free, in the queue otherwise. Fails as
    /// overloaded when the queue is full, and at the deadline.
    pub async fn reserve(&self, deadline: Instant) -> Result<Slot, ServeError> {
        let result = self.wait_for_slot(deadline).await;
        if result.is_err() {
            self.metrics.request(&self.name, false, Duration::ZERO);
        }
        result
    }

    async fn wait_for_slot(&self, deadline: Instant) -> Result<Slot, ServeError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { permit, queued: Duration::ZERO });
        }
        let started = Instant::now();
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        self.report();
        if ahead >= self.scaling.queue_size {
            return Err(ServeError::Overloaded { function: self.name.clone() });
        }
        match tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { permit, queued: started.elapsed() }),
            Ok(Err(_)) => Err(ServeError::ShuttingDown),
            Err(_) => Err(ServeError::Deadline {
                function: self.name.clone(),
                waited: "waiting for an instance",
            }),
        }
    }

    /// Runs the segment on `inputs` in an idle instance, or a new one, within what is left
    /// before `deadline`.
    pub async fn call(self: &Arc<Self>, slot: Slot, inputs: Vec<Tensor>, deadline: Instant) -> Result<Vec<Tensor>, ServeError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ServeError::Deadline { function: self.name.clone(), waited: "before it could start" });
        }
        let this = self.clone();
        let queued = slot.queued;
        let span = tracing::Span::current();
        let (result, compute) = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let _permit = slot.permit;
            let mut segment = match this.take_idle() {
                Some(segment) => segment,
                None => this.cold_start()?,
            };
            segment.set_deadline(remaining);
            let started = Instant::now();
            let result = segment.infer(inputs);
            let compute = started.elapsed();
            this.give_back(segment);
            Ok::<_, ServeError>((result, compute))
        })
        .await
        .map_err(|e| ServeError::Internal(format!("{}: the call did not complete: {e}", self.name)))
        .flatten()
        .inspect_err(|_| self.metrics.request(&self.name, false, queued))?;
        self.metrics.execution(&self.name, queued, compute);
        self.metrics.request(&self.name, result.is_ok(), queued + compute);
        result.map_err(|error| ServeError::Segment { function: self.name.clone(), error })
    }

    /// Starts instances until `min_instances` are alive (blocking: a cold start each).
    pub fn warm_up(&self) -> Result<(), ServeError> {
        while self.live_instances() < self.scaling.min_instances.min(self.scaling.max_instances) {
            let segment = self.cold_start()?;
            self.pool.lock().expect("pool lock").idle.push((segment, Instant::now()));
        }
        Ok(())
    }

    /// Drops the instances idle for longer than the idle timeout, keeping `min_instances`
    /// alive; returns how many were dropped.
    pub fn reclaim(&self) -> usize {
        let expired: Vec<Segment> = {
            let mut pool = self.pool.lock().expect("pool lock");
            let mut spare = pool.live.saturating_sub(self.scaling.min_instances);
            let idle_timeout = self.scaling.idle_timeout;
            // Oldest first, so the instances kept are the most recently used.
            let (old, fresh) = std::mem::take(&mut pool.idle).into_iter().partition(|(_, since)| {
                let drop = spare > 0 && since.elapsed() >= idle_timeout;
                spare -= drop as usize;
                drop
            });
            pool.idle = fresh;
            pool.live -= old.len();
            old.into_iter().map(|(segment, _)| segment).collect()
        };
        let count = expired.len();
        drop(expired);
        if count > 0 {
            self.metrics.reclaimed(&self.name, count);
            self.report();
            tracing::info!(function = %self.name, count, "reclaimed idle instances");
        }
        count
    }

    /// Instances alive now, busy or idle.
    pub fn live_instances(&self) -> usize {
        self.pool.lock().expect("pool lock").live
    }

    fn take_idle(&self) -> Option<Segment> {
        self.pool.lock().expect("pool lock").idle.pop().map(|(segment, _)| segment)
    }

    fn cold_start(&self) -> Result<Segment, ServeError> {
        let started = Instant::now();
        let segment = self
            .factory
            .start()
            .map_err(|error| ServeError::Segment { function: self.name.clone(), error })?;
        let took = started.elapsed();
        self.pool.lock().expect("pool lock").live += 1;
        self.metrics.cold_start(&self.name, took);
        self.report();
        tracing::info!(function = %self.name, ms = %format!("{:.1}", took.as_secs_f64() * 1e3), "cold start");
        Ok(segment)
    }

    /// Returns a healthy instance to the pool; one whose instance died (trap, deadline, memory)
    /// is dropped.
    fn give_back(&self, segment: Segment) {
        let mut pool = self.pool.lock().expect("pool lock");
        if segment.is_live() {
            pool.idle.push((segment, Instant::now()));
        } else {
            pool.live -= 1;
            drop(pool);
            drop(segment);
            self.report();
        }
    }

    fn report(&self) {
        let live = self.pool.lock().map(|p| p.live).unwrap_or(0);
        self.metrics.instances(&self.name, live, self.waiting.load(Ordering::SeqCst));
    }
}
