//! The Kubernetes objects `netless deploy k8s` writes, typed after their schemas: SpinKube's `SpinApp`
//! (`core.spinkube.dev/v1alpha1`), `HorizontalPodAutoscaler` (`autoscaling/v2`), KEDA's `ScaledObject`
//! (`keda.sh/v1alpha1`) and kustomize's `Kustomization`. Optional fields left unset are not written.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of an object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Its name (a DNS label: it also names the app's Service and Deployment).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Spin app run by the Spin Operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpinApp {
    /// `core.spinkube.dev/v1alpha1`.
    pub api_version: String,
    /// `SpinApp`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// The app.
    pub spec: SpinAppSpec,
}

/// `SpinApp.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpinAppSpec {
    /// The OCI image of the app.
    pub image: String,
    /// The SpinAppExecutor, `containerd-shim-spin`.
    pub executor: String,
    /// The components of the image to run (the one component of a per-component image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// Fixed replica count (absent with autoscaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Leaves the replica count to an HPA or KEDA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_autoscaling: bool,
    /// Pod resources.
    pub resources: Resources,
    /// Per-invocation limits (`memory`: the instance's memory limit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub invocation_limits: BTreeMap<String, String>,
    /// Readiness and liveness probes.
    pub checks: Checks,
    /// Spin application variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<Variable>,
    /// Labels of the app's pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
}

/// Requests and limits, as Kubernetes quantities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Limits (`cpu`, `memory`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    /// Requests (`cpu`, `memory`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
}

/// `SpinApp.spec.checks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// Whether a pod takes traffic.
    pub readiness: Probe,
    /// Whether a pod is restarted.
    pub liveness: Probe,
}

/// An HTTP probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// The path probed.
    pub http_get: HttpGet,
    /// Seconds before the first probe.
    pub initial_delay_seconds: u32,
    /// Seconds between probes.
    pub period_seconds: u32,
}

/// `httpGet` of a probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpGet {
    /// `/v2/health/ready` or `/v2/health/live`.
    pub path: String,
}

/// A Spin application variable's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    /// The variable.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A Deployment to scale (the Spin Operator names an app's Deployment after the app).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTarget {
    /// `apps/v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// The app's name.
    pub name: String,
}

/// `autoscaling/v2` HorizontalPodAutoscaler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HorizontalPodAutoscaler {
    /// `autoscaling/v2`.
    pub api_version: String,
    /// `HorizontalPodAutoscaler`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// What to scale, between which counts, on which metrics.
    pub spec: HpaSpec,
}

/// `HorizontalPodAutoscaler.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    /// The app's Deployment.
    pub scale_target_ref: ScaleTarget,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Resource utilisation targets.
    pub metrics: Vec<HpaMetric>,
}

/// One HPA metric: a resource's average utilisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HpaMetric {
    /// `Resource`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Which resource and target.
    pub resource: HpaResource,
}

/// `metrics[].resource` of an HPA.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HpaResource {
    /// `cpu` or `memory`.
    pub name: String,
    /// The target.
    pub target: HpaTarget,
}

/// A utilisation target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaTarget {
    /// `Utilization`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Percent of the request.
    pub average_utilization: u32,
}

/// KEDA's ScaledObject (`keda.sh/v1alpha1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObject {
    /// `keda.sh/v1alpha1`.
    pub api_version: String,
    /// `ScaledObject`.
    pub kind: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// What to scale, between which counts, on which triggers.
    pub spec: ScaledObjectSpec,
}

/// `ScaledObject.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    /// The app's Deployment.
    pub scale_target_ref: ScaleTarget,
    /// Fewest replicas.
    pub min_replica_count: u32,
    /// Most replicas.
    pub max_replica_count: u32,
    /// `cpu` and `memory` utilisation triggers.
    pub triggers: Vec<KedaTrigger>,
}

/// A KEDA trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KedaTrigger {
    /// `cpu` or `memory`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `Utilization`.
    pub metric_type: String,
    /// `value`: the target percent, as a string.
    pub metadata: BTreeMap<String, String>,
}

/// kustomize's `kustomization.yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kustomization {
    /// `kustomize.config.k8s.io/v1beta1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// The namespace of every object.
    pub namespace: String,
    /// The object files, relative to the folder.
    pub resources: Vec<String>,
}
