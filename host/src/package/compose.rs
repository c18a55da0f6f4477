//! Composing the generic runtime with a data component into one self-contained segment component.

use wac_graph::{CompositionGraph, EncodeOptions, types::Package};

use super::{INFER_SEGMENT, SEGMENT_DATA};

/// Why the composition failed.
#[derive(Debug, thiserror::Error)]
#[error("composing the segment runtime with its data component: {step}: {message}")]
pub struct ComposeError {
    /// What was being done.
    pub step: &'static str,
    /// The composer's message.
    pub message: String,
}

fn step<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> ComposeError {
    move |e| ComposeError {
        step,
        message: format!("{e:#}"),
    }
}

/// Links `data`'s `segment-data` export into `runtime`'s import and exports `infer-segment`.
///
/// The result still imports whatever WASI interfaces the runtime needs; the data component's bytes
/// become part of it, so it is deployable by itself.
pub fn segment(runtime: &[u8], data: &[u8]) -> Result<Vec<u8>, ComposeError> {
    let mut graph = CompositionGraph::new();
    let runtime = Package::from_bytes("netless:segment-runtime", None, runtime, graph.types_mut())
        .map_err(step("reading the runtime component"))?;
    let runtime = graph
        .register_package(runtime)
        .map_err(step("registering the runtime"))?;
    let data = Package::from_bytes("netless:segment-data", None, data, graph.types_mut())
        .map_err(step("reading the data component"))?;
    let data = graph
        .register_package(data)
        .map_err(step("registering the data component"))?;

    let data = graph.instantiate(data);
    let runtime = graph.instantiate(runtime);
    let blob = graph
        .alias_instance_export(data, SEGMENT_DATA)
        .map_err(step("finding the data component's export"))?;
    graph
        .set_instantiation_argument(runtime, SEGMENT_DATA, blob)
        .map_err(step("linking segment-data into the runtime"))?;
    let infer = graph
        .alias_instance_export(runtime, INFER_SEGMENT)
        .map_err(step("finding the runtime's export"))?;
    graph
        .export(infer, INFER_SEGMENT)
        .map_err(step("exporting infer-segment"))?;
    graph
        .encode(EncodeOptions::default())
        .map_err(step("encoding"))
}
