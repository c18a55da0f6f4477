//! `netless push`: a built Spin app (`netless build --spin OUT`) as OCI images in Spin's artifact layout,
//! which `spin up --from`, `spin registry pull` and SpinKube's containerd-shim-spin run.
//!
//! `package::spin_manifest` reads `OUT/spin.toml`, [`locked`] resolves it to Spin's locked app, [`image`]
//! assembles layers, config and manifest, [`registry`] uploads what the registry lacks, [`credentials`]
//! finds the Docker config's credentials, and [`names`] derives per-component image names.

pub mod credentials;
pub mod image;
pub mod locked;
pub mod names;
pub mod registry;

use std::path::{Path, PathBuf};

use oci_client::Reference;

pub use credentials::Credentials;
pub use image::Image;
pub use registry::Transfer;
pub use crate::package::spin_manifest::Manifest as SpinManifest;

/// Result with the push [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while pushing; each names the file, reference or registry at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The folder has no Spin app.
    #[error("{}: no spin.toml; run `netless build --spin {}` first", dir.display(), dir.display())]
    NoSpinApp {
        /// The folder.
        dir: PathBuf,
    },
    /// `spin.toml` is malformed or uses what NetLess cannot push.
    #[error("{}: {reason}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The Docker config is malformed or its credentials unusable.
    #[error("registry credentials in {}: {reason}", path.display())]
    Credentials {
        /// The Docker config.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Not a valid image reference.
    #[error("`{reference}` is not a valid image reference (REGISTRY/REPO:TAG): {reason}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// The registry could not be reached.
    #[error("cannot reach registry `{registry}` at {address}: {reason}")]
    Unreachable {
        /// The registry, as in the reference.
        registry: String,
        /// The URL tried.
        address: String,
        /// The network error.
        reason: String,
    },
    /// The registry refused the credentials (or anonymous access).
    #[error("registry `{registry}` refused {who} ({status} {}); check the credentials in the Docker config (`docker login {registry}`)", status_text(.status))]
    Denied {
        /// The registry.
        registry: String,
        /// 401 or 403.
        status: u16,
        /// Whose credentials: `user `alice` from ~/.docker/config.json`, or anonymous access.
        who: String,
    },
    /// Any other failure reported by the registry.
    #[error("registry `{registry}`: {what}: {reason}")]
    Registry {
        /// The registry.
        registry: String,
        /// What was being done.
        what: String,
        /// What it answered.
        reason: String,
    },
}

fn status_text(status: &u16) -> &'static str {
    if *status == 401 { "Unauthorized" } else { "Forbidden" }
}

/// How to push.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Also push every component alone as `REPO-<component>:TAG` ([`names::component_image`]).
    pub per_segment: bool,
    /// Credentials; `None` reads them from the Docker config.
    pub credentials: Option<Credentials>,
}

/// One image pushed.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// Where, with its tag.
    pub reference: Reference,
    /// The manifest's digest.
    pub digest: String,
    /// The components it holds.
    pub components: Vec<String>,
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct PushReport {
    /// The images, the whole app first.
    pub images: Vec<Pushed>,
    /// Blobs and bytes sent or found.
    pub transfer: Transfer,
}

/// The images `push` would send: the app at `reference`, then with `per_segment` each component alone
/// (private routes made public) at `REPO-<component>:TAG`.
pub fn images(dir: &Path, reference: &str, per_segment: bool) -> Result<Vec<(Reference, Image)>> {
    let reference = names::parse(reference)?;
    let manifest = load_manifest(dir)?;
    let mut images = vec![(reference.clone(), image::assemble(&manifest, dir)?)];
    if per_segment {
        for id in manifest.component.keys() {
            let single = manifest.single_component(id).expect("a listed component");
            images.push((names::component_image(&reference, id), image::assemble(&single, dir)?));
        }
    }
    Ok(images)
}

/// Reads `dir/spin.toml`; a missing file says how to make it.
pub fn load_manifest(dir: &Path) -> Result<SpinManifest> {
    let path = dir.join(crate::package::spin_manifest::FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoSpinApp { dir: dir.to_owned() }),
        Err(source) => return Err(Error::Io { path, source }),
    };
    SpinManifest::parse(&text).map_err(|reason| Error::Manifest { path, reason })
}

/// Pushes the Spin app in `dir` to `reference` (and its components alone with `per_segment`).
pub async fn push(dir: &Path, reference: &str, options: &PushOptions) -> Result<PushReport> {
    let images = images(dir, reference, options.per_segment)?;
    let credentials = match &options.credentials {
        Some(credentials) => credentials.clone(),
        None => credentials::for_registry(images[0].0.resolve_registry())?,
    };
    let mut registry = registry::Registry::new(options.insecure, credentials);
    let mut transfer = Transfer::default();
    let mut pushed = Vec::new();
    for (reference, image) in &images {
        registry.push(reference, image, &mut transfer).await?;
        let components = image.locked.components.iter().map(|c| c.id.clone()).collect();
        pushed.push(Pushed { reference: reference.clone(), digest: image.digest.clone(), components });
    }
    Ok(PushReport { images: pushed, transfer })
}
