//! The locked app (Spin's `spin.lock` JSON): a manifest with every component source resolved to
//! content. In an OCI artifact it is the layer of media type [`super::image::LOCKED_APP_MEDIA_TYPE`],
//! and each component's source names the digest of its wasm layer. Field names and order follow what
//! Spin's loader writes, so `spin up --from` and containerd-shim-spin read it as their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::package::spin_manifest::{Manifest as SpinManifest, Route};

/// Host requirement of components that call `*.spin.internal` (Spin's local service chaining).
pub const SERVICE_CHAINING: &str = "local_service_chaining";

/// A fully resolved Spin application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockedApp {
    /// 0, or 1 when the app has host requirements.
    pub spin_lock_version: u32,
    /// Sections a host must understand to run the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_understand: Vec<String>,
    /// Name, version, trigger settings.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// App-wide host requirements.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub host_requirements: Map<String, Value>,
    /// Application variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, LockedVariable>,
    /// Triggers.
    pub triggers: Vec<LockedTrigger>,
    /// Components.
    pub components: Vec<LockedComponent>,
}

/// An application variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockedVariable {
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its default; none means the variable is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Whether it is secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// A trigger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockedTrigger {
    /// Its id.
    pub id: String,
    /// `http`.
    pub trigger_type: String,
    /// `component`, `route` and the rest of the manifest's trigger table.
    pub trigger_config: Value,
}

/// A component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockedComponent {
    /// Its id.
    pub id: String,
    /// `allowed_outbound_hosts`, `description`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Its wasm.
    pub source: LockedSource,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Component variables (templates over application variables).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Host requirements, e.g. [`SERVICE_CHAINING`].
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub host_requirements: Map<String, Value>,
}

/// A component's wasm: its content type and where the content is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockedSource {
    /// `application/wasm`.
    pub content_type: String,
    /// The content.
    #[serde(flatten)]
    pub content: ContentRef,
}

/// Content by location, inline bytes or digest; in an OCI artifact, by digest of a layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentRef {
    /// A URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl LockedApp {
    /// Locks `manifest`, each component's source being the content with the digest `digest(id)`.
    pub fn lock(manifest: &SpinManifest, digest: impl Fn(&str) -> String) -> LockedApp {
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(manifest.application.name));
        if let Some(version) = &manifest.application.version {
            metadata.insert("version".into(), json!(version));
        }
        if let Some(description) = &manifest.application.description {
            metadata.insert("description".into(), json!(description));
        }
        if !manifest.application.authors.is_empty() {
            metadata.insert("authors".into(), json!(manifest.application.authors));
        }
        metadata.insert("triggers".into(), json!(manifest.application.trigger));
        // Spin also writes the settings of an app's only trigger type under "trigger", with "type".
        let mut http = manifest.application.trigger.get("http").cloned().unwrap_or_default();
        http.insert("type".into(), json!("http"));
        metadata.insert("trigger".into(), json!(http));

        let variables = manifest
            .variables
            .iter()
            .map(|(name, v)| {
                let locked = LockedVariable { description: v.description.clone(), default: v.default.clone(), secret: v.secret };
                (name.clone(), locked)
            })
            .collect();

        let triggers = manifest
            .trigger
            .http
            .iter()
            .map(|t| {
                let route = match &t.route {
                    Route::Path(path) => json!(path),
                    Route::Private { private } => json!({ "private": private }),
                };
                let config = json!({ "component": t.component, "route": route });
                LockedTrigger {
                    id: format!("{}-http-trigger", t.component),
                    trigger_type: "http".into(),
                    trigger_config: config,
                }
            })
            .collect();

        let components: Vec<LockedComponent> = manifest
            .component
            .iter()
            .map(|(id, c)| {
                let mut metadata = Map::new();
                if let Some(description) = &c.description {
                    metadata.insert("description".into(), json!(description));
                }
                metadata.insert("allowed_outbound_hosts".into(), json!(c.allowed_outbound_hosts));
                let mut host_requirements = Map::new();
                if c.allowed_outbound_hosts.iter().any(|h| is_service_chaining(h)) {
                    host_requirements.insert(SERVICE_CHAINING.into(), json!("required"));
                }
                LockedComponent {
                    id: id.clone(),
                    metadata,
                    source: LockedSource {
                        content_type: "application/wasm".into(),
                        content: ContentRef { digest: Some(digest(id)), ..Default::default() },
                    },
                    env: c.environment.clone(),
                    config: c.variables.clone(),
                    host_requirements,
                }
            })
            .collect();

        let mut must_understand = Vec::new();
        if components.iter().any(|c| !c.host_requirements.is_empty()) {
            must_understand.push("component_host_requirements".to_string());
        }
        LockedApp {
            spin_lock_version: if must_understand.is_empty() { 0 } else { 1 },
            must_understand,
            metadata,
            host_requirements: Map::new(),
            variables,
            triggers,
            components,
        }
    }

    /// The app as the JSON bytes of its layer.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a locked app serialises")
    }
}

/// Whether an allowed-outbound-host literal names Spin's local service chaining (`*.spin.internal`);
/// a template such as `{{ outbound_hosts }}` is resolved only at run time and does not count.
fn is_service_chaining(host: &str) -> bool {
    if host.contains("{{") {
        return false;
    }
    let authority = host.split_once("://").map_or(host, |(_, rest)| rest);
    let name = authority.split([':', '/']).next().unwrap_or_default();
    name == "spin.internal" || name.ends_with(".spin.internal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_chaining_is_recognised_only_in_literals() {
        assert!(is_service_chaining("http://*.spin.internal"));
        assert!(is_service_chaining("http://seg0.spin.internal:80"));
        assert!(!is_service_chaining("{{ outbound_hosts }}"));
        assert!(!is_service_chaining("http://*.netless.svc"));
    }
}
