//! Assembling deployable components from the generic runtime and a segment's blob.

pub mod artifacts;
pub mod compose;
pub mod data_component;
pub mod spin_app;
pub mod spin_manifest;

/// The `netless:inference` WIT package every component is built against.
pub const INFERENCE_WIT: &str = include_str!("../../../wit/inference.wit");

/// The interface a data component exports and the runtime imports.
pub const SEGMENT_DATA: &str = "netless:inference/segment-data@0.1.0";

/// The interface every segment exports.
pub const INFER_SEGMENT: &str = "netless:inference/infer-segment@0.1.0";
