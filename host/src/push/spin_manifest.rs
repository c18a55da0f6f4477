//! `spin.toml` (Spin manifest v2) as NetLess writes it: typed, read with serde, so that `netless push`
//! can lock it. Only what a NetLess app uses is accepted; anything else is refused by name rather than
//! silently dropped from the pushed app.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// The manifest's file name inside a `netless build --spin` output folder.
pub const FILE_NAME: &str = "spin.toml";

/// The route that makes an HTTP trigger public for every path below it.
pub const PUBLIC_ROUTE: &str = "/...";

/// A Spin application manifest, version 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpinManifest {
    /// Always 2.
    pub spin_manifest_version: u32,
    /// Name, version and description of the app.
    pub application: Application,
    /// Application variables, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, Variable>,
    /// Triggers by type (NetLess uses HTTP only).
    #[serde(default)]
    pub trigger: Triggers,
    /// Components, by id.
    #[serde(default)]
    pub component: BTreeMap<String, Component>,
}

/// The `[application]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// The app's name.
    pub name: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its authors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// Trigger-wide settings (`[application.trigger.http]`), by trigger type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trigger: BTreeMap<String, toml::Table>,
}

/// An application variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// Its value when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Whether a value must be given (then there is no default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Whether the value is secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The `[[trigger.*]]` arrays.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// HTTP triggers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpTrigger>,
}

/// One `[[trigger.http]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// Its id (default `<component>-http-trigger`, as Spin names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The component it calls, by id.
    pub component: String,
    /// Where it is served.
    pub route: Route,
    /// The executor (`{ type = "spin" }` when absent), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<toml::Value>,
}

/// An HTTP trigger's route: a path pattern, or private (reachable only by service chaining).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Route {
    /// A path, `/...` for everything below.
    Path(String),
    /// `{ private = true }`.
    Private {
        /// Always true.
        private: bool,
    },
}

impl Route {
    /// Whether the route is `{ private = true }`.
    pub fn is_private(&self) -> bool {
        matches!(self, Route::Private { private: true })
    }
}

/// One `[component.<id>]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Its wasm file, relative to the manifest's folder.
    pub source: String,
    /// A description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hosts it may call, possibly through variables (`{{ outbound_hosts }}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variables, as templates over application variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// How it is built (ignored when pushing, as Spin does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<toml::Value>,
}

impl SpinManifest {
    /// Reads `DIR/spin.toml`; a missing file says how to make it.
    pub fn load(dir: &Path) -> Result<SpinManifest> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoSpinApp { dir: dir.to_owned() });
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        Self::parse(&text).map_err(|reason| Error::Manifest { path, reason })
    }

    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> std::result::Result<SpinManifest, String> {
        let manifest: SpinManifest = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => format!("line {}: {}", text[..span.start].matches('\n').count() + 1, e.message()),
            None => e.message().to_string(),
        })?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a typed manifest serialises")
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.spin_manifest_version != 2 {
            return Err(format!("spin_manifest_version is {}, only 2 is supported", self.spin_manifest_version));
        }
        for trigger in &self.trigger.http {
            if !self.component.contains_key(&trigger.component) {
                return Err(format!("trigger.http of component `{}`: no [component.{}]", trigger.component, trigger.component));
            }
            if let Route::Private { private: false } = trigger.route {
                return Err(format!("trigger.http of component `{}`: route `{{ private = false }}` is not a route", trigger.component));
            }
        }
        for (id, component) in &self.component {
            let source = Path::new(&component.source);
            if source.is_absolute() || source.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(format!("component `{id}`: source `{}` is outside the manifest's folder", component.source));
            }
        }
        for (name, variable) in &self.variables {
            if variable.required == variable.default.is_some() {
                return Err(format!("variable `{name}`: must be `required` or have a `default`, not both or neither"));
            }
        }
        Ok(())
    }

    /// The path of component `id`'s wasm file, the manifest being in `dir`.
    pub fn source_path(&self, dir: &Path, id: &str) -> PathBuf {
        dir.join(&self.component[id].source)
    }

    /// The same app reduced to component `id` and its triggers, with private routes made public
    /// (`/...`): what runs alone as one SpinKube app, where nothing could reach a private route.
    pub fn single_component(&self, id: &str) -> Option<SpinManifest> {
        let component = self.component.get(id)?.clone();
        let trigger = self
            .trigger
            .http
            .iter()
            .filter(|t| t.component == id)
            .map(|t| HttpTrigger {
                route: if t.route.is_private() { Route::Path(PUBLIC_ROUTE.into()) } else { t.route.clone() },
                ..t.clone()
            })
            .collect();
        Some(SpinManifest {
            application: Application { name: format!("{}-{id}", self.application.name), ..self.application.clone() },
            trigger: Triggers { http: trigger },
            component: BTreeMap::from([(id.to_string(), component)]),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
spin_manifest_version = 2

[application]
name = "demo"
version = "0.1.0"

[variables]
stage_0_urls = { default = "http://seg-0.spin.internal" }
outbound_hosts = { default = "http://*.spin.internal" }

[[trigger.http]]
route = { private = true }
component = "seg-0"

[[trigger.http]]
route = "/..."
component = "gateway"

[component.seg-0]
source = "spin/seg-0.wasm"

[component.gateway]
source = "spin/gateway.wasm"
allowed_outbound_hosts = ["{{ outbound_hosts }}"]
[component.gateway.variables]
stage_0_urls = "{{ stage_0_urls }}"
"#;

    #[test]
    fn reads_the_contract_and_round_trips() {
        let manifest = SpinManifest::parse(APP).unwrap();
        assert!(manifest.trigger.http[0].route.is_private());
        assert_eq!(manifest.trigger.http[1].route, Route::Path("/...".into()));
        assert_eq!(SpinManifest::parse(&manifest.to_toml()).unwrap(), manifest);
    }

    #[test]
    fn a_single_segment_gets_a_public_route() {
        let manifest = SpinManifest::parse(APP).unwrap();
        let single = manifest.single_component("seg-0").unwrap();
        assert_eq!(single.component.keys().collect::<Vec<_>>(), ["seg-0"]);
        assert_eq!(single.trigger.http.len(), 1);
        assert_eq!(single.trigger.http[0].route, Route::Path(PUBLIC_ROUTE.into()));
        assert_eq!(single.application.name, "demo-seg-0");
    }

    #[test]
    fn refuses_what_it_cannot_push_by_name() {
        let files = APP.replace("source = \"spin/seg-0.wasm\"", "source = \"spin/seg-0.wasm\"\nfiles = [\"x\"]");
        assert!(SpinManifest::parse(&files).unwrap_err().contains("unknown field `files`"));
        let outside = APP.replace("spin/seg-0.wasm", "../seg-0.wasm");
        assert!(SpinManifest::parse(&outside).unwrap_err().contains("outside the manifest's folder"));
        let v1 = APP.replace("spin_manifest_version = 2", "spin_manifest_version = 1");
        assert!(SpinManifest::parse(&v1).unwrap_err().contains("only 2 is supported"));
    }
}
