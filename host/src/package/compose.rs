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

/// The interface names the pair combinator imports its two stages under.
const FIRST: &str = "netless:inference/first@0.1.0";
const SECOND: &str = "netless:inference/second@0.1.0";

/// Links segments into one pipeline component: the runtime is defined once and instantiated once per
/// function with that function's data component, and the pair combinator is folded over the shards of
/// each group, then over the stages: `pair(pair(s0, pair(s1, s2)), s3)`... `stages` lists each stage's
/// functions (indices into `datas`). The result exports `infer-segment` for the whole model and holds one
/// copy of the runtime's code, so it compiles in the time of one segment. The same composition with the
/// `wac` CLI is in docs/composition.md.
pub fn pipeline(runtime: &[u8], composer: &[u8], datas: &[Vec<u8>], stages: &[Vec<usize>]) -> Result<Vec<u8>, ComposeError> {
    let mut graph = CompositionGraph::new();
    let runtime = Package::from_bytes("netless:segment-runtime", None, runtime, graph.types_mut())
        .map_err(step("reading the runtime component"))?;
    let runtime = graph.register_package(runtime).map_err(step("registering the runtime"))?;
    let composer = Package::from_bytes("netless:pair", None, composer, graph.types_mut())
        .map_err(step("reading the composer component"))?;
    let composer = graph.register_package(composer).map_err(step("registering the composer"))?;
    let mut functions = Vec::with_capacity(datas.len());
    for (index, data) in datas.iter().enumerate() {
        let package = Package::from_bytes(&format!("netless:seg{index}-data"), None, data.clone(), graph.types_mut())
            .map_err(step("reading a data component"))?;
        let package = graph.register_package(package).map_err(step("registering a data component"))?;
        let data = graph.instantiate(package);
        let blob = graph.alias_instance_export(data, SEGMENT_DATA).map_err(step("finding a data component's export"))?;
        let stage = graph.instantiate(runtime);
        graph.set_instantiation_argument(stage, SEGMENT_DATA, blob).map_err(step("linking segment-data into a runtime"))?;
        functions.push(graph.alias_instance_export(stage, INFER_SEGMENT).map_err(step("finding a runtime's export"))?);
    }
    let pair = |graph: &mut CompositionGraph, first, second| -> Result<_, ComposeError> {
        let pair = graph.instantiate(composer);
        graph.set_instantiation_argument(pair, FIRST, first).map_err(step("linking the first stage"))?;
        graph.set_instantiation_argument(pair, SECOND, second).map_err(step("linking the second stage"))?;
        graph.alias_instance_export(pair, INFER_SEGMENT).map_err(step("finding the composer's export"))
    };
    let mut current = None;
    for members in stages {
        let mut stage = None;
        for &i in members {
            let function = *functions.get(i).ok_or_else(|| ComposeError { step: "composing", message: format!("no function {i}") })?;
            stage = Some(match stage {
                None => function,
                Some(previous) => pair(&mut graph, previous, function)?,
            });
        }
        let Some(stage) = stage else { continue };
        current = Some(match current {
            None => stage,
            Some(previous) => pair(&mut graph, previous, stage)?,
        });
    }
    let last = current.ok_or_else(|| ComposeError { step: "composing", message: "no segments".into() })?;
    graph.export(last, INFER_SEGMENT).map_err(step("exporting infer-segment"))?;
    graph.encode(EncodeOptions::default()).map_err(step("encoding"))
}

/// The interface a Spin HTTP component exports.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.0";

/// Plugs a self-contained segment into the HTTP face (`netless-http-segment`, which imports
/// `infer-segment`): one component exporting `wasi:http/incoming-handler`, as Spin runs it.
pub fn http_segment(http: &[u8], segment: &[u8]) -> Result<Vec<u8>, ComposeError> {
    let mut graph = CompositionGraph::new();
    let http = Package::from_bytes("netless:http-segment", None, http, graph.types_mut()).map_err(step("reading the HTTP segment component"))?;
    let http = graph.register_package(http).map_err(step("registering the HTTP segment component"))?;
    let segment = Package::from_bytes("netless:segment", None, segment, graph.types_mut()).map_err(step("reading the segment component"))?;
    let segment = graph.register_package(segment).map_err(step("registering the segment component"))?;
    let segment = graph.instantiate(segment);
    let infer = graph.alias_instance_export(segment, INFER_SEGMENT).map_err(step("finding the segment's export"))?;
    let http = graph.instantiate(http);
    graph.set_instantiation_argument(http, INFER_SEGMENT, infer).map_err(step("linking infer-segment into the HTTP component"))?;
    let handler = graph.alias_instance_export(http, INCOMING_HANDLER).map_err(step("finding the HTTP component's export"))?;
    graph.export(handler, INCOMING_HANDLER).map_err(step("exporting the HTTP handler"))?;
    graph.encode(EncodeOptions::default()).map_err(step("encoding"))
}
