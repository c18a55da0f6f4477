//! `netless push` and `netless deploy k8s`: arguments and printing; the work is in `netless::push` and
//! `netless::deploy`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use netless::deploy::k8s::{self, K8sOptions, Scaling};
use netless::push::{self, PushOptions};
use netless::plan::partition::mib;

/// `netless push OUT REGISTRY/REPO:TAG`.
#[derive(Args)]
pub struct PushArgs {
    /// A `netless build --spin` output folder (its spin.toml and the wasm files it names).
    dir: PathBuf,
    /// Where to push, REGISTRY/REPO:TAG (TAG defaults to `latest`). Credentials come from the Docker
    /// config ($DOCKER_CONFIG/config.json or ~/.docker/config.json); anonymous without any.
    reference: String,
    /// Talk to the registry over plain HTTP (a local or test registry).
    #[arg(long)]
    insecure: bool,
    /// Also push each component alone as REGISTRY/REPO-<component>:TAG (REPO-seg-0, ..., REPO-gateway),
    /// its route made public: the images `netless deploy k8s` runs.
    #[arg(long)]
    per_segment: bool,
}

/// `netless deploy TARGET`.
#[derive(Subcommand)]
pub enum DeployCommand {
    /// Write SpinKube manifests: a SpinApp per segment and one for the gateway, autoscalers if asked,
    /// and a kustomization.yaml (`kubectl apply -k DIR`).
    K8s(K8sArgs),
}

/// Which autoscaler `deploy k8s` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum Autoscaler {
    /// A HorizontalPodAutoscaler (autoscaling/v2).
    Hpa,
    /// A KEDA ScaledObject.
    Keda,
}

/// `netless deploy k8s OUT --image REGISTRY/REPO:TAG -o DIR`.
#[derive(Args)]
pub struct K8sArgs {
    /// The split's folder (its plan.json is read).
    dir: PathBuf,
    /// The image pushed with `netless push --per-segment`; the apps run REPO-seg-I:TAG and REPO-gateway:TAG.
    #[arg(long)]
    image: String,
    /// Namespace of every object.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Where to write the manifests (created if needed).
    #[arg(short, long)]
    out: PathBuf,
    /// Prefix of the SpinApp names (default: the model's name): NAME-seg-I, NAME-gateway.
    #[arg(long)]
    name: Option<String>,
    /// Replicas of every app (with --autoscaler: the fewest).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Let an HPA or KEDA set the replica count, between --replicas and --max-replicas.
    #[arg(long, value_enum)]
    autoscaler: Option<Autoscaler>,
    /// The most replicas of every app, with --autoscaler.
    #[arg(long, default_value_t = 3)]
    max_replicas: u32,
    /// Target average CPU utilisation in percent, with --autoscaler.
    #[arg(long, default_value_t = 60)]
    autoscaler_target_cpu_utilization: u32,
    /// Target average memory utilisation in percent, with --autoscaler.
    #[arg(long, default_value_t = 80)]
    autoscaler_target_memory_utilization: u32,
    /// Refuse a plan with a segment estimated above this memory (e.g. 128MiB): the cluster's limit.
    #[arg(long, value_parser = super::parse_size)]
    max_memory: Option<u64>,
    /// Memory of a pod beyond its invocation limit: the Spin runtime and compiled code.
    #[arg(long, value_parser = super::parse_size, default_value = "256MiB")]
    pod_overhead: u64,
    /// CPU request of every pod.
    #[arg(long, default_value = "100m")]
    cpu_request: String,
    /// CPU limit of every pod (none by default).
    #[arg(long)]
    cpu_limit: Option<String>,
    /// The SpinAppExecutor to run on.
    #[arg(long, default_value = "containerd-shim-spin")]
    executor: String,
    /// The gateway's deadline for one request (its `deadline_ms` variable), e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
    /// The gateway's timeout for one hop to a segment (its `hop_timeout_ms` variable), e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    hop_timeout: Option<Duration>,
}

/// Pushes and prints each image's digest and what was uploaded.
pub fn push(args: PushArgs) -> anyhow::Result<()> {
    let options = PushOptions { insecure: args.insecure, per_segment: args.per_segment, credentials: None };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = tokio.block_on(push::push(&args.dir, &args.reference, &options))?;
    for image in &report.images {
        println!("pushed {}@{} ({})", image.reference.whole(), image.digest, image.components.join(", "));
    }
    let t = report.transfer;
    println!(
        "{} blobs uploaded ({}), {} mounted from another repository, {} already in the registry; {} manifests",
        t.uploaded,
        mib(t.uploaded_bytes),
        t.mounted,
        t.skipped,
        t.manifests
    );
    Ok(())
}

/// Writes the manifests and prints the apps.
pub fn deploy(command: DeployCommand) -> anyhow::Result<()> {
    let DeployCommand::K8s(args) = command;
    let scaling = match args.autoscaler {
        None => Scaling::Replicas(args.replicas),
        Some(Autoscaler::Hpa) => Scaling::Hpa { min: args.replicas, max: args.max_replicas },
        Some(Autoscaler::Keda) => Scaling::Keda { min: args.replicas, max: args.max_replicas },
    };
    let options = K8sOptions {
        namespace: args.namespace,
        name: args.name,
        scaling,
        target_cpu_percent: args.autoscaler_target_cpu_utilization,
        target_memory_percent: args.autoscaler_target_memory_utilization,
        max_memory: args.max_memory,
        pod_overhead: args.pod_overhead,
        cpu_request: args.cpu_request,
        cpu_limit: args.cpu_limit,
        executor: args.executor,
        deadline: args.deadline,
        hop_timeout: args.hop_timeout,
        ..K8sOptions::new(args.image)
    };
    let deployment = k8s::write(&args.dir, &args.out, &options)?;
    println!("{:<32} {:>12} {:>10}  image", "SpinApp", "invocation", "pod");
    for app in &deployment.apps {
        println!("{:<32} {:>12} {:>10}  {}", app.name, k8s::quantity(app.invocation_memory), k8s::quantity(app.pod_memory), app.image);
    }
    println!("wrote {} files to {}; apply with `kubectl apply -k {}`", deployment.files.len(), args.out.display(), args.out.display());
    println!("(the images are those `netless push {} {} --per-segment` sends)", args.dir.display(), options.image);
    Ok(())
}
