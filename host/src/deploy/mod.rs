//! `netless deploy`: manifests that run a pushed NetLess app on a cluster. [`k8s`] writes SpinKube
//! `SpinApp`s (one per segment and one for the gateway), their autoscalers and a `kustomization.yaml`,
//! from the plan's memory estimates; [`objects`] types those objects.

pub mod k8s;
pub mod objects;

use std::path::PathBuf;

/// Result with the deploy [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while writing deployment manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder has no plan.
    #[error("{}: no plan.json; run `netless split MODEL.onnx --max-memory SIZE -o {}` (and `netless build --spin`) first", dir.display(), dir.display())]
    NoPlan {
        /// The folder.
        dir: PathBuf,
    },
    /// The plan is malformed.
    #[error(transparent)]
    Plan(#[from] crate::Error),
    /// The image reference is invalid.
    #[error(transparent)]
    Image(#[from] crate::push::Error),
    /// A segment's estimate is over the memory asked for.
    #[error(
        "segment {segment} needs an estimated {needed} bytes ({needed_mib:.1} MiB), over --max-memory {limit} bytes ({limit_mib:.1} MiB); split again with `netless split --max-memory {limit_mib:.0}MiB`"
    )]
    TooLarge {
        /// The segment.
        segment: usize,
        /// Its estimate.
        needed: u64,
        /// `needed` in MiB.
        needed_mib: f64,
        /// The limit asked for.
        limit: u64,
        /// `limit` in MiB.
        limit_mib: f64,
    },
    /// An option is out of range or inconsistent.
    #[error("{0}")]
    Options(String),
    /// A file could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}
