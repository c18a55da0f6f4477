//! A Spin app as an OCI image in Spin's artifact layout, assembled in memory before any upload:
//!
//! - one layer per distinct component wasm (`application/vnd.wasm.content.layer.v1+wasm`);
//! - the locked app JSON as the last layer (`application/vnd.fermyon.spin.application.v1+config`), its
//!   components' sources naming their layers' digests;
//! - an OCI image config (`architecture: wasm`, `os: wasip1`) labelled with the locked app's digest, so
//!   that two apps never share an image id;
//! - an OCI image manifest with `org.opencontainers.image.*` annotations from `[application]`.
//!
//! No timestamp goes in: the same build gives the same digests, so a repeated push changes nothing.
//! NetLess apps mount no files, so there are no data or archive layers.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::locked::LockedApp;
use crate::package::spin_manifest::{FILE_NAME, Manifest as SpinManifest};
use super::{Error, Result};

/// Media type of the locked app layer.
pub const LOCKED_APP_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";
/// Media type of a component's wasm layer.
pub const WASM_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Media type of the image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config label holding the locked app layer's digest.
pub const LOCKED_APP_DIGEST_LABEL: &str = "com.fermyon.spin.lockedAppDigest";

/// Content to upload: its bytes, media type and digest.
#[derive(Clone, Debug)]
pub struct Blob {
    /// What it is, for progress and errors (`seg-0.wasm`, `locked app`, `config`).
    pub label: String,
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its bytes.
    pub data: Bytes,
}

impl Blob {
    /// A blob of `data`, its digest computed.
    pub fn new(label: impl Into<String>, media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob { label: label.into(), media_type: media_type.into(), digest: sha256_digest(&data), data }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor { media_type: self.media_type.clone(), digest: self.digest.clone(), size: self.data.len() as u64 }
    }
}

/// An image ready to push: layers, config and the manifest's exact bytes.
#[derive(Clone, Debug)]
pub struct Image {
    /// The layers, the locked app last.
    pub layers: Vec<Blob>,
    /// The image config.
    pub config: Blob,
    /// The manifest's JSON, as uploaded.
    pub manifest: Vec<u8>,
    /// The manifest's digest: the image's digest.
    pub digest: String,
    /// The locked app inside.
    pub locked: LockedApp,
}

/// The OCI image manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    pub media_type: String,
    /// The config.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// `org.opencontainers.image.title` and the like.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A reference to a blob in a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The OCI image config of a Spin app: no file system, a label naming the locked app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `wasm`.
    pub architecture: String,
    /// `wasip1`, as Spin writes it.
    pub os: String,
    /// Holds the labels.
    pub config: ConfigLabels,
    /// An empty layer list: the layers are not a file system.
    pub rootfs: RootFs,
}

/// The `config` of an [`ImageConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigLabels {
    /// [`LOCKED_APP_DIGEST_LABEL`] -> the locked app layer's digest.
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
}

/// The `rootfs` of an [`ImageConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Empty.
    pub diff_ids: Vec<String>,
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", crate::onnx::load::hex(&Sha256::digest(data)))
}

/// Assembles the image of `manifest`, its sources read from `dir`.
pub fn assemble(manifest: &SpinManifest, dir: &Path) -> Result<Image> {
    let mut layers: Vec<Blob> = Vec::new();
    let mut digests = BTreeMap::new();
    for id in manifest.component.keys() {
        let path = manifest.source_path(dir, id);
        let data = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        if !data.starts_with(b"\0asm") {
            let reason = format!("component `{id}`: source `{}` is not a wasm file", manifest.component[id].source);
            return Err(Error::Manifest { path: dir.join(FILE_NAME), reason });
        }
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| id.clone());
        let blob = Blob::new(file, WASM_MEDIA_TYPE, data);
        digests.insert(id.clone(), blob.digest.clone());
        if !layers.iter().any(|l| l.digest == blob.digest) {
            layers.push(blob);
        }
    }
    let locked = LockedApp::lock(manifest, |id| digests[id].clone());
    let locked_layer = Blob::new("locked app", LOCKED_APP_MEDIA_TYPE, locked.to_json());
    let config = ImageConfig {
        architecture: "wasm".into(),
        os: "wasip1".into(),
        config: ConfigLabels { labels: BTreeMap::from([(LOCKED_APP_DIGEST_LABEL.into(), locked_layer.digest.clone())]) },
        rootfs: RootFs { kind: "layers".into(), diff_ids: Vec::new() },
    };
    let config = Blob::new("config", CONFIG_MEDIA_TYPE, serde_json::to_vec(&config).expect("a config serialises"));
    layers.push(locked_layer);

    let app = &manifest.application;
    let mut annotations = BTreeMap::from([("org.opencontainers.image.title".to_string(), app.name.clone())]);
    if let Some(version) = &app.version {
        annotations.insert("org.opencontainers.image.version".into(), version.clone());
    }
    if let Some(description) = &app.description {
        annotations.insert("org.opencontainers.image.description".into(), description.clone());
    }
    if !app.authors.is_empty() {
        annotations.insert("org.opencontainers.image.authors".into(), app.authors.join(", "));
    }
    let image_manifest = ImageManifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        config: config.descriptor(),
        layers: layers.iter().map(Blob::descriptor).collect(),
        annotations,
    };
    let bytes = serde_json::to_vec(&image_manifest).expect("a manifest serialises");
    Ok(Image { digest: sha256_digest(&bytes), manifest: bytes, layers, config, locked })
}
