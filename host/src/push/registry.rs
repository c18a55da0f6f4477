//! Talking to an OCI registry with `oci-client`: checking which blobs it has, mounting blobs across
//! repositories, uploading the rest with a progress bar, and putting the manifest. Failures become
//! [`Error::Unreachable`], [`Error::Denied`] or [`Error::Registry`], naming the registry.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Client, Reference, RegistryOperation};

use super::credentials::Credentials;
use super::image::{Blob, Image, MANIFEST_MEDIA_TYPE};
use super::{Error, Result};

/// Bytes handed to the client at a time while uploading (the progress bar's step).
const CHUNK: usize = 1 << 20;

/// What a push sent and what the registry already had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had in another repository and linked without upload.
    pub mounted: usize,
    /// Blobs the repository already had.
    pub skipped: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Manifests put.
    pub manifests: usize,
}

/// A connection to one registry.
pub struct Registry {
    client: Client,
    credentials: Credentials,
    insecure: bool,
    /// Blobs known to be in some repository of this registry, by digest.
    known: BTreeMap<String, Reference>,
}

impl Registry {
    /// A client for plain HTTP (`insecure`) or HTTPS, sending `credentials`.
    pub fn new(insecure: bool, credentials: Credentials) -> Registry {
        // reqwest is built without a default TLS provider; ring is the one linked in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            ..Default::default()
        };
        Registry { client: Client::new(config), credentials, insecure, known: BTreeMap::new() }
    }

    /// Reaches the registry of `reference` and authenticates for pushing to it.
    pub async fn login(&self, reference: &Reference) -> Result<()> {
        self.client
            .auth(reference, &self.credentials.auth, RegistryOperation::Push)
            .await
            .map(|_| ())
            .map_err(|e| self.error(reference, "authenticating", e))
    }

    /// Pushes `image` to `reference`: every blob the repository lacks (mounted from another
    /// repository of the registry when one has it), then the manifest.
    pub async fn push(&mut self, reference: &Reference, image: &Image, transfer: &mut Transfer) -> Result<()> {
        self.login(reference).await?;
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(reference, blob, transfer).await?;
        }
        let content_type = reqwest_header(MANIFEST_MEDIA_TYPE);
        self.client
            .push_manifest_raw(reference, image.manifest.clone(), content_type)
            .await
            .map_err(|e| self.error(reference, "putting the manifest", e))?;
        transfer.manifests += 1;
        Ok(())
    }

    async fn push_blob(&mut self, reference: &Reference, blob: &Blob, transfer: &mut Transfer) -> Result<()> {
        let exists = self
            .client
            .blob_exists(reference, &blob.digest)
            .await
            .map_err(|e| self.error(reference, &format!("checking for {} ({})", blob.label, blob.digest), e))?;
        if exists {
            transfer.skipped += 1;
            self.known.insert(blob.digest.clone(), reference.clone());
            return Ok(());
        }
        if let Some(source) = self.known.get(&blob.digest).filter(|s| s.repository() != reference.repository())
            && self.client.mount_blob(reference, source, &blob.digest).await.is_ok()
            && self.client.blob_exists(reference, &blob.digest).await.unwrap_or(false)
        {
            transfer.mounted += 1;
            return Ok(());
        }
        let bar = crate::progress::bytes(blob.data.len() as u64, &blob.label);
        let chunks: Vec<bytes::Bytes> = (0..blob.data.len()).step_by(CHUNK).map(|at| blob.data.slice(at..(at + CHUNK).min(blob.data.len()))).collect();
        let progress = bar.clone();
        let stream = futures_util::stream::iter(chunks).map(move |chunk| {
            progress.inc(chunk.len() as u64);
            Ok::<_, OciDistributionError>(chunk)
        });
        let pushed = match self.client.push_blob_stream(reference, stream, &blob.digest, Some(blob.data.len() as u64)).await {
            // A registry that cannot take chunks gets the blob in one request.
            Err(OciDistributionError::SpecViolationError(_)) => self.client.push_blob(reference, blob.data.clone(), &blob.digest).await,
            other => other,
        };
        bar.finish_and_clear();
        pushed.map_err(|e| self.error(reference, &format!("uploading {} ({})", blob.label, blob.digest), e))?;
        transfer.uploaded += 1;
        transfer.uploaded_bytes += blob.data.len() as u64;
        self.known.insert(blob.digest.clone(), reference.clone());
        Ok(())
    }

    /// Turns a client failure while doing `what` into an error naming the registry and its cause.
    fn error(&self, reference: &Reference, what: &str, error: OciDistributionError) -> Error {
        let registry = reference.registry().to_string();
        let scheme = if self.insecure { "http" } else { "https" };
        let address = format!("{scheme}://{}/v2/", reference.resolve_registry());
        let denied = |status: u16| Error::Denied {
            registry: registry.clone(),
            status,
            who: self.credentials.origin.clone().unwrap_or_else(|| "anonymous access".into()),
        };
        match &error {
            OciDistributionError::RequestError(e) => {
                if let Some(status @ (401 | 403)) = e.status().map(|s| s.as_u16()) {
                    return denied(status);
                }
                if e.is_connect() || e.is_timeout() {
                    let hint = if self.insecure { "" } else { " (for a plain-HTTP registry, add --insecure)" };
                    return Error::Unreachable { registry, address, reason: format!("{}{hint}", chain(e)) };
                }
                Error::Registry { registry, what: what.into(), reason: chain(e) }
            }
            OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => denied(401),
            OciDistributionError::ServerError { code: code @ (401 | 403), .. } => denied(*code),
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
            {
                denied(401)
            }
            _ => Error::Registry { registry, what: what.into(), reason: chain(&error) },
        }
    }
}

fn reqwest_header(value: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(value)
}

/// An error and its sources, joined (reqwest puts "connection refused" three levels down).
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}
