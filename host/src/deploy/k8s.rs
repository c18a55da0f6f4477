//! `netless deploy k8s`: one SpinKube `SpinApp` per segment and one for the gateway, each running its
//! component's image alone (`REPO-segI:TAG`, `REPO-gateway:TAG`, as `netless push --per-segment`
//! names them), so that every segment scales on its own.
//!
//! - Memory: a segment's `invocationLimits.memory` is the plan's estimate for it; the pod's memory
//!   request and limit add `pod_overhead` (the Spin runtime and the compiled component code).
//! - The gateway finds segment `I` at `http://<app>-segI.<namespace>.svc` (the Service the Spin
//!   Operator makes for that SpinApp, port 80) through its `stageI_urls` variable, and may call
//!   `http://*.<namespace>.svc` through `outbound_hosts`.
//! - Scaling: fixed `replicas`, or `enableAutoscaling` with an HPA or a KEDA ScaledObject on CPU and
//!   memory utilisation, as `spin kube scaffold --autoscaler` writes them.

use crate::package::spin_app::http_segment_memory;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::objects::*;
use super::{Error, Result};
use crate::plan::file::Plan;
use crate::push::names;
use netless_oip::pipeline::{GATEWAY_COMPONENT, segment_component, stage_urls_variable};

/// The SpinApp API version.
pub const SPINAPP_API_VERSION: &str = "core.spinkube.dev/v1alpha1";
/// The kustomization file's name.
pub const KUSTOMIZATION: &str = "kustomization.yaml";
/// The readiness probe's path (OIP v2).
pub const READY_PATH: &str = "/v2/health/ready";
/// The liveness probe's path (OIP v2).
pub const LIVE_PATH: &str = "/v2/health/live";
/// Fixed part of the gateway's per-invocation memory (its code and one request's bookkeeping).
const GATEWAY_BASE_MEMORY: u64 = 32 << 20;

/// How replicas are set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaling {
    /// A fixed count.
    Replicas(u32),
    /// A HorizontalPodAutoscaler between `min` and `max`.
    Hpa {
        /// Fewest replicas.
        min: u32,
        /// Most replicas.
        max: u32,
    },
    /// A KEDA ScaledObject between `min` and `max`.
    Keda {
        /// Fewest replicas.
        min: u32,
        /// Most replicas.
        max: u32,
    },
}

/// What to write.
#[derive(Clone, Debug)]
pub struct K8sOptions {
    /// The app's image, `REGISTRY/REPO:TAG`; components are at `REPO-<component>:TAG`.
    pub image: String,
    /// The namespace of every object.
    pub namespace: String,
    /// Prefix of the SpinApp names (default: the model's name, made a DNS label).
    pub name: Option<String>,
    /// Replicas or autoscaling.
    pub scaling: Scaling,
    /// Target average CPU utilisation in percent, for autoscaling.
    pub target_cpu_percent: u32,
    /// Target average memory utilisation in percent, for autoscaling.
    pub target_memory_percent: u32,
    /// Refuse a plan with a segment estimated above this many bytes.
    pub max_memory: Option<u64>,
    /// Memory added to a pod beyond its invocation limit.
    pub pod_overhead: u64,
    /// CPU request of every pod (`100m`).
    pub cpu_request: String,
    /// CPU limit of every pod, if any.
    pub cpu_limit: Option<String>,
    /// The SpinAppExecutor.
    pub executor: String,
    /// The gateway's deadline for one request (`deadline_ms`), if set.
    pub deadline: Option<Duration>,
    /// The gateway's timeout for one hop (`hop_timeout_ms`), if set.
    pub hop_timeout: Option<Duration>,
}

impl K8sOptions {
    /// Defaults for `image`: namespace `default`, one replica, 256 MiB pod overhead, 100m CPU.
    pub fn new(image: impl Into<String>) -> K8sOptions {
        K8sOptions {
            image: image.into(),
            namespace: "default".into(),
            name: None,
            scaling: Scaling::Replicas(1),
            target_cpu_percent: 60,
            target_memory_percent: 80,
            max_memory: None,
            pod_overhead: 256 << 20,
            cpu_request: "100m".into(),
            cpu_limit: None,
            executor: "containerd-shim-spin".into(),
            deadline: None,
            hop_timeout: None,
        }
    }
}

/// One SpinApp written.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    /// Its name (and its Service's).
    pub name: String,
    /// The component it runs (`seg0`, ..., `gateway`).
    pub component: String,
    /// Its image.
    pub image: String,
    /// `invocationLimits.memory` in bytes.
    pub invocation_memory: u64,
    /// The pod's memory request and limit in bytes.
    pub pod_memory: u64,
}

/// The manifests of one deployment: files by name, in kustomization order.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// The apps, segments first.
    pub apps: Vec<App>,
    /// `(file name, YAML)`, `kustomization.yaml` last.
    pub files: Vec<(String, String)>,
}

/// Builds the manifests for `plan`, whose segment components are pre-initialised or not
/// ([`http_segment_memory`]).
pub fn manifests(plan: &Plan, options: &K8sOptions, preinitialized: bool) -> Result<Deployment> {
    let base = names::parse(&options.image)?;
    check(plan, options, preinitialized)?;
    let prefix = dns_label(options.name.as_deref().unwrap_or(&plan.model.name))
        .ok_or_else(|| Error::Options(format!("`{}` has no letters or digits to name the apps after; pass --name", plan.model.name)))?;
    let namespace = &options.namespace;
    if dns_label(namespace).as_deref() != Some(namespace.as_str()) {
        return Err(Error::Options(format!("namespace `{namespace}` is not a DNS label (lowercase letters, digits and '-')")));
    }

    let mut apps = Vec::new();
    for seg in &plan.segments {
        let component = segment_component(seg.index);
        apps.push(App {
            name: format!("{prefix}-{component}"),
            image: names::component_image(&base, &component).whole(),
            invocation_memory: http_segment_memory(seg, preinitialized),
            pod_memory: http_segment_memory(seg, preinitialized) + options.pod_overhead,
            component,
        });
    }
    let gateway_memory = GATEWAY_BASE_MEMORY + 4 * largest_transfer(plan);
    apps.push(App {
        name: format!("{prefix}-{}", GATEWAY_COMPONENT),
        component: GATEWAY_COMPONENT.into(),
        image: names::component_image(&base, GATEWAY_COMPONENT).whole(),
        invocation_memory: gateway_memory,
        pod_memory: gateway_memory + options.pod_overhead,
    });
    if let Some(app) = apps.iter().find(|a| a.name.len() > 63 - "-autoscaler".len()) {
        return Err(Error::Options(format!("app name `{}` is too long for Kubernetes; pass a shorter --name", app.name)));
    }

    let mut variables = Vec::new();
    for (seg, app) in plan.segments.iter().zip(&apps) {
        variables.push(Variable { name: stage_urls_variable(seg.index), value: format!("http://{}.{namespace}.svc", app.name) });
    }
    variables.push(Variable { name: "outbound_hosts".into(), value: format!("http://*.{namespace}.svc") });
    if let Some(deadline) = options.deadline {
        variables.push(Variable { name: "deadline_ms".into(), value: deadline.as_millis().to_string() });
    }
    if let Some(hop) = options.hop_timeout {
        variables.push(Variable { name: "hop_timeout_ms".into(), value: hop.as_millis().to_string() });
    }

    let mut files = Vec::new();
    for app in &apps {
        let meta = meta(app, &prefix, namespace);
        let spin_app = spin_app(app, meta.clone(), options, if app.component == GATEWAY_COMPONENT { variables.clone() } else { Vec::new() });
        files.push((format!("{}.yaml", app.name), yaml(&spin_app)));
        let autoscaler_meta = ObjectMeta { name: format!("{}-autoscaler", app.name), ..meta };
        match options.scaling {
            Scaling::Replicas(_) => {}
            Scaling::Hpa { min, max } => files.push((format!("{}-hpa.yaml", app.name), yaml(&hpa(app, autoscaler_meta, min, max, options)))),
            Scaling::Keda { min, max } => files.push((format!("{}-scaledobject.yaml", app.name), yaml(&scaled_object(app, autoscaler_meta, min, max, options)))),
        }
    }
    let kustomization = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1".into(),
        kind: "Kustomization".into(),
        namespace: namespace.clone(),
        resources: files.iter().map(|(name, _)| name.clone()).collect(),
    };
    files.push((KUSTOMIZATION.into(), yaml(&kustomization)));
    Ok(Deployment { apps, files })
}

/// Reads the plan in `dir` and writes the manifests into `out` (created if needed).
pub fn write(dir: &Path, out: &Path, options: &K8sOptions) -> Result<Deployment> {
    if !dir.join(crate::plan::file::FILE_NAME).is_file() {
        return Err(Error::NoPlan { dir: dir.to_owned() });
    }
    let plan = Plan::load(dir)?;
    let deployment = manifests(&plan, options, crate::package::artifacts::preinitialized(dir).is_some())?;
    let io = |path: PathBuf| move |source: std::io::Error| Error::Io { path, source };
    std::fs::create_dir_all(out).map_err(io(out.to_owned()))?;
    for (name, text) in &deployment.files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(io(path.clone()))?;
    }
    Ok(deployment)
}

fn check(plan: &Plan, options: &K8sOptions, preinitialized: bool) -> Result<()> {
    if let Some(limit) = options.max_memory
        && let Some(seg) = plan.segments.iter().find(|s| http_segment_memory(s, preinitialized) > limit)
    {
        let needed = http_segment_memory(seg, preinitialized);
        return Err(Error::TooLarge { segment: seg.index, needed, needed_mib: mib(needed), limit, limit_mib: mib(limit) });
    }
    match options.scaling {
        Scaling::Replicas(_) => {}
        Scaling::Hpa { min, max } | Scaling::Keda { min, max } => {
            if min == 0 && matches!(options.scaling, Scaling::Hpa { .. }) {
                return Err(Error::Options("an HPA needs at least 1 replica (--replicas); KEDA can scale to 0".into()));
            }
            if max == 0 || max < min {
                return Err(Error::Options(format!("--max-replicas {max} is below --replicas {min}")));
            }
        }
    }
    for (what, percent) in [("--autoscaler-target-cpu-utilization", options.target_cpu_percent), ("--autoscaler-target-memory-utilization", options.target_memory_percent)] {
        if percent == 0 || percent > 100 {
            return Err(Error::Options(format!("{what} {percent} is not a percentage in 1..=100")));
        }
    }
    Ok(())
}

fn spin_app(app: &App, metadata: ObjectMeta, options: &K8sOptions, variables: Vec<Variable>) -> SpinApp {
    let memory = quantity(app.pod_memory);
    let mut limits = BTreeMap::from([("memory".to_string(), memory.clone())]);
    if let Some(cpu) = &options.cpu_limit {
        limits.insert("cpu".into(), cpu.clone());
    }
    let requests = BTreeMap::from([("cpu".to_string(), options.cpu_request.clone()), ("memory".to_string(), memory)]);
    let probe = |path: &str| Probe { http_get: HttpGet { path: path.into() }, initial_delay_seconds: 2, period_seconds: 5 };
    SpinApp {
        api_version: SPINAPP_API_VERSION.into(),
        kind: "SpinApp".into(),
        spec: SpinAppSpec {
            image: app.image.clone(),
            executor: options.executor.clone(),
            components: vec![app.component.clone()],
            replicas: match options.scaling {
                Scaling::Replicas(n) => Some(n),
                _ => None,
            },
            enable_autoscaling: !matches!(options.scaling, Scaling::Replicas(_)),
            resources: Resources { limits, requests },
            invocation_limits: BTreeMap::from([("memory".to_string(), quantity(app.invocation_memory))]),
            checks: Checks { readiness: probe(READY_PATH), liveness: probe(LIVE_PATH) },
            variables,
            pod_labels: metadata.labels.clone(),
        },
        metadata,
    }
}

fn scale_target(app: &App) -> ScaleTarget {
    ScaleTarget { api_version: "apps/v1".into(), kind: "Deployment".into(), name: app.name.clone() }
}

fn hpa(app: &App, metadata: ObjectMeta, min: u32, max: u32, options: &K8sOptions) -> HorizontalPodAutoscaler {
    let metric = |name: &str, percent: u32| HpaMetric {
        kind: "Resource".into(),
        resource: HpaResource { name: name.into(), target: HpaTarget { kind: "Utilization".into(), average_utilization: percent } },
    };
    HorizontalPodAutoscaler {
        api_version: "autoscaling/v2".into(),
        kind: "HorizontalPodAutoscaler".into(),
        metadata,
        spec: HpaSpec {
            scale_target_ref: scale_target(app),
            min_replicas: min,
            max_replicas: max,
            metrics: vec![metric("cpu", options.target_cpu_percent), metric("memory", options.target_memory_percent)],
        },
    }
}

fn scaled_object(app: &App, metadata: ObjectMeta, min: u32, max: u32, options: &K8sOptions) -> ScaledObject {
    let trigger = |kind: &str, percent: u32| KedaTrigger {
        kind: kind.into(),
        metric_type: "Utilization".into(),
        metadata: BTreeMap::from([("value".to_string(), percent.to_string())]),
    };
    ScaledObject {
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        metadata,
        spec: ScaledObjectSpec {
            scale_target_ref: scale_target(app),
            min_replica_count: min,
            max_replica_count: max,
            triggers: vec![trigger("cpu", options.target_cpu_percent), trigger("memory", options.target_memory_percent)],
        },
    }
}

fn meta(app: &App, prefix: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: app.name.clone(),
        namespace: namespace.into(),
        labels: BTreeMap::from([
            ("app.kubernetes.io/part-of".to_string(), prefix.to_string()),
            ("app.kubernetes.io/component".to_string(), app.component.clone()),
            ("app.kubernetes.io/managed-by".to_string(), "netless".to_string()),
        ]),
    }
}

/// The most bytes the gateway holds for one request: the model's inputs, any boundary, or the outputs.
fn largest_transfer(plan: &Plan) -> u64 {
    let inputs: u64 = plan.model.inputs.iter().map(|t| t.bytes()).sum();
    let outputs: u64 = plan.model.outputs.iter().map(|t| t.bytes()).sum();
    plan.boundaries.iter().map(|b| b.bytes).chain([inputs, outputs]).max().unwrap_or(0)
}

/// `name` as a DNS-1035 label: lowercase, runs of other characters as one `-`, starting with a letter.
pub fn dns_label(name: &str) -> Option<String> {
    let mut label = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    let label = label.trim_end_matches('-');
    match label.chars().next() {
        None => None,
        Some(c) if c.is_ascii_digit() => Some(format!("m-{label}")),
        Some(_) => Some(label.to_string()),
    }
}

/// Bytes as a Kubernetes quantity in whole MiB, rounded up.
pub fn quantity(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1 << 20))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn yaml<T: serde::Serialize>(object: &T) -> String {
    let body = serde_norway::to_string(object).expect("Kubernetes objects serialise");
    format!("# Written by `netless deploy k8s`; regenerate rather than edit.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(dns_label("rapid_orientation").as_deref(), Some("rapid-orientation"));
        assert_eq!(dns_label("--My Model.v2--").as_deref(), Some("my-model-v2"));
        assert_eq!(dns_label("3d_unet").as_deref(), Some("m-3d-unet"));
        assert_eq!(dns_label("__"), None);
        assert_eq!(quantity((40 << 20) + 1), "41Mi");
    }
}
