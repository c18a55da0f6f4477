//! The split model as a Spin application (`netless build --spin`): one HTTP component per segment
//! (the segment plugged into `netless-http-segment`), the gateway component, and a `spin.toml` that
//! routes the model to the gateway, keeps the segments private and chains them in process
//! (`http://seg{i}.spin.internal`). Names follow Spin's rules (`netless_oip::pipeline`): component
//! `seg{i}`, variable `stage{i}_urls`.
//!
//! Layout of a built split: `OUT/spin.toml`, `OUT/spin/seg{i}.wasm`, `OUT/spin/gateway.wasm`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netless_oip::pipeline::{PipelineSpec, StageSpec, TensorMetadata, service_chaining_url, stage_urls_variable};
pub use netless_oip::pipeline::{GATEWAY_COMPONENT, segment_component};
use netless_oip::rest::{model_name, segment_name};

use super::spin_manifest::{Application, Build, Component, HttpTrigger, Manifest, Route, Triggers, Variable};
use super::{artifacts, compose};
use crate::plan::Plan;
use crate::plan::file::{Segment, TensorSpec};
use crate::{Error, Result};

/// The folder of a built split that holds the Spin components.
pub const DIR: &str = "spin";

/// The gateway's first `allowed_outbound_hosts` entry: the app's own components, by service chaining.
/// Its second is the `outbound_hosts` variable (empty by default; an empty entry allows nothing, in
/// Spin as here), for stages served elsewhere.
pub const SERVICE_CHAINING_HOSTS: &str = "http://*.spin.internal";

/// The memory limit of a segment's Spin component: the segment's budget, what its HTTP face adds (the
/// request and response bodies, their decoded tensors, and the Spin SDK's own heap), and, for a build
/// that is not pre-initialised, the segment's data blob: the component is one composition, so its data
/// component's memory counts against the same limit.
pub fn http_segment_memory(segment: &Segment, preinitialized: bool) -> u64 {
    let blob = if preinitialized { 0 } else { (segment.bytes + 8).div_ceil(1 << 16) << 16 };
    segment.estimated_memory + 3 * segment.io_bytes + (4 << 20) + blob
}

/// How the generated manifest is laid out and configured.
#[derive(Debug, Clone)]
pub struct SpinOptions {
    /// Path from the manifest's folder to the split's folder, ending in `/` (empty: the same folder).
    pub prefix: String,
    /// The build command of every component (`spin build`), run in the manifest's folder.
    pub build_command: String,
    /// Default of the `deadline_ms` variable.
    pub deadline: Duration,
    /// Default of the `hop_timeout_ms` variable.
    pub hop_timeout: Duration,
}

impl SpinOptions {
    /// A manifest in the split's own folder, rebuilt there with `netless build --spin .`.
    pub fn in_split() -> SpinOptions {
        SpinOptions { prefix: String::new(), build_command: "netless build --spin .".into(), deadline: Duration::from_secs(30), hop_timeout: Duration::from_secs(10) }
    }
}

/// The gateway's view of the pipeline.
pub fn pipeline_spec(plan: &Plan) -> Result<PipelineSpec> {
    let model = model_name(&plan.model.name);
    Ok(PipelineSpec {
        inputs: plan.model.inputs.iter().map(metadata).collect::<Result<_>>()?,
        outputs: plan.model.outputs.iter().map(metadata).collect::<Result<_>>()?,
        stages: plan
            .segments
            .iter()
            .map(|s| StageSpec {
                model: segment_name(&model, s.index),
                inputs: s.inputs.iter().map(|t| t.name.clone()).collect(),
                group: s.shard.as_ref().map(|r| r.stage),
            })
            .collect(),
        model,
    })
}

fn metadata(spec: &TensorSpec) -> Result<TensorMetadata> {
    let dtype = spec.dtype.wire_type().ok_or_else(|| Error::Tensor { name: spec.name.clone(), reason: format!("type {} cannot be served over OIP", spec.dtype) })?;
    Ok(TensorMetadata { name: spec.name.clone(), datatype: netless_oip::datatype(dtype).into(), shape: spec.shape.iter().map(|&d| d as i64).collect() })
}

/// The Spin manifest of a split.
pub fn manifest(plan: &Plan, options: &SpinOptions) -> Result<Manifest> {
    let spec = serde_json::to_string(&pipeline_spec(plan)?).expect("a pipeline spec always serialises");
    let build = || Some(Build { command: options.build_command.clone(), workdir: None, watch: Vec::new() });
    let source = |id: &str| format!("{}{DIR}/{id}.wasm", options.prefix);
    let variable = |description: &str, default: String| Variable { description: Some(description.into()), default: Some(default), required: false, secret: false };

    let mut variables = BTreeMap::new();
    let mut gateway_variables = BTreeMap::from([("pipeline".to_string(), spec)]);
    for name in ["deadline_ms", "hop_timeout_ms"] {
        gateway_variables.insert(name.into(), format!("{{{{ {name} }}}}"));
    }
    variables.insert("deadline_ms".into(), variable("time one request may take end to end, in milliseconds", options.deadline.as_millis().to_string()));
    variables.insert("hop_timeout_ms".into(), variable("time one call to one segment replica may take, in milliseconds", options.hop_timeout.as_millis().to_string()));
    variables.insert("outbound_hosts".into(), variable("where else the gateway may send requests (scheme://host:port, `*` wildcards), for stages served outside this app; empty: nowhere", String::new()));
    let mut components = BTreeMap::new();
    let mut triggers = vec![HttpTrigger { route: Route::Path("/...".into()), component: GATEWAY_COMPONENT.into() }];
    for seg in &plan.segments {
        let id = segment_component(seg.index);
        let name = stage_urls_variable(seg.index);
        variables.insert(name.clone(), variable(&format!("where segment {} is served: base URLs, comma-separated replicas", seg.index), service_chaining_url(seg.index)));
        gateway_variables.insert(name.clone(), format!("{{{{ {name} }}}}"));
        triggers.push(HttpTrigger { route: Route::Private { private: true }, component: id.clone() });
        let oip_model = segment_name(&model_name(&plan.model.name), seg.index);
        let description = match seg.shard {
            Some(_) => format!("{} of {}, OIP model {oip_model}", seg.describe(plan), plan.model.name),
            None => format!("segment {} of {} ({} to {}), OIP model {oip_model}", seg.index, plan.segments.len(), seg.first_node, seg.last_node),
        };
        components.insert(id.clone(), Component { description: Some(description), source: source(&id), allowed_outbound_hosts: Vec::new(), variables: BTreeMap::new(), environment: BTreeMap::new(), build: build() });
    }
    components.insert(
        GATEWAY_COMPONENT.into(),
        Component {
            description: Some(format!("OIP v2 gateway for model {}, chaining its {} segments", model_name(&plan.model.name), plan.segments.len())),
            source: source(GATEWAY_COMPONENT),
            allowed_outbound_hosts: vec![SERVICE_CHAINING_HOSTS.into(), "{{ outbound_hosts }}".into()],
            variables: gateway_variables,
            environment: BTreeMap::new(),
            build: build(),
        },
    );
    let manifest = Manifest {
        spin_manifest_version: 2,
        application: Application {
            name: model_name(&plan.model.name).replace('.', "_"),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            description: Some(format!("{} split by NetLess into {} segments, served over the Open Inference Protocol v2", plan.model.name, plan.segments.len())),
            authors: Vec::new(),
            trigger: BTreeMap::new(),
        },
        variables,
        trigger: Triggers { http: triggers },
        component: components,
    };
    manifest.check().map_err(|reason| Error::Package { what: "the Spin manifest".into(), reason })?;
    Ok(manifest)
}

/// What `build` wrote.
#[derive(Debug, Clone)]
pub struct SpinBuilt {
    /// The manifest, `dir/spin.toml`.
    pub manifest: PathBuf,
    /// Each component's id and size.
    pub components: Vec<(String, u64)>,
}

/// Builds the Spin app of a built split into `dir/spin/` and writes `dir/spin.toml`, plus
/// `extra_manifest` (another manifest, e.g. at the repository's root) if given.
pub fn build(dir: &Path, plan: &Plan, http_segment: &[u8], gateway: &[u8], extra: Option<(&Path, &SpinOptions)>) -> Result<SpinBuilt> {
    artifacts::validate("the HTTP segment component", http_segment)?;
    artifacts::validate("the gateway component", gateway)?;
    let out = dir.join(DIR);
    std::fs::create_dir_all(&out).map_err(Error::io(&out))?;
    let mut components = Vec::new();
    for seg in &plan.segments {
        let path = artifacts::segment_path(dir, seg.index);
        let segment = std::fs::read(&path).map_err(|e| Error::Package { what: format!("segment {}", seg.index), reason: format!("{}: {e} (run `netless build` first)", path.display()) })?;
        let id = segment_component(seg.index);
        let wasm = compose::http_segment(http_segment, &segment).map_err(|e| Error::Package { what: format!("Spin component {id}"), reason: e.to_string() })?;
        artifacts::validate(&format!("Spin component {id}"), &wasm)?;
        write_atomically(&out.join(format!("{id}.wasm")), &wasm)?;
        components.push((id, wasm.len() as u64));
    }
    write_atomically(&out.join(format!("{GATEWAY_COMPONENT}.wasm")), gateway)?;
    components.push((GATEWAY_COMPONENT.into(), gateway.len() as u64));
    let path = dir.join("spin.toml");
    write_atomically(&path, manifest(plan, &SpinOptions::in_split())?.to_toml().as_bytes())?;
    if let Some((extra, options)) = extra {
        write_atomically(extra, manifest(plan, options)?.to_toml().as_bytes())?;
    }
    Ok(SpinBuilt { manifest: path, components })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}
