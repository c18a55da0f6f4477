//! A Spin application manifest (`spin.toml`, manifest version 2), typed: the fields NetLess writes
//! and reads, after Spin's manifest reference. Unknown fields are kept out rather than guessed at.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A `spin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 2.
    pub spin_manifest_version: u32,
    /// The application's identity.
    pub application: Application,
    /// Application variables, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, Variable>,
    /// Triggers, by type (NetLess uses `http` only).
    pub trigger: Triggers,
    /// Components, by id.
    pub component: BTreeMap<String, Component>,
}

/// The `[application]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// The application's name.
    pub name: String,
    /// Its version, `major.minor.patch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An application variable: a default, or required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its value unless one is supplied at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Whether a value must be supplied at run time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Whether it is sensitive.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// The `[trigger]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// `[[trigger.http]]` entries.
    pub http: Vec<HttpTrigger>,
}

/// One `[[trigger.http]]`: a route and the component that handles it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// The route.
    pub route: Route,
    /// The component's id.
    pub component: String,
}

/// A route: a path pattern (`/x`, `/x/...`), or private (reachable only by service chaining).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Route {
    /// An exact path, or a prefix ending in `/...`.
    Path(String),
    /// `{ private = true }`.
    Private {
        /// Always true.
        private: bool,
    },
}

/// A `[component.<id>]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// What the component is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its wasm file, relative to the manifest.
    pub source: String,
    /// Where it may send requests (`scheme://host:port`, `*` wildcards, `{{ variable }}`
    /// expressions); none if empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Component variables: values or `{{ application_variable }}` templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// How `spin build` builds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
}

/// A `[component.<id>.build]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The command `spin build` runs.
    pub command: String,
    /// Where it runs, relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Files whose change calls for a rebuild (`spin watch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<String>,
}

impl Manifest {
    /// Reads and checks a `spin.toml`.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let manifest: Manifest = toml_edit::de::from_str(&text).map_err(|e| Error::Plan { path: path.into(), reason: format!("not a Spin manifest NetLess can run: {e}") })?;
        manifest.check().map_err(|reason| Error::Plan { path: path.into(), reason })?;
        Ok(manifest)
    }

    /// The manifest as TOML, laid out as Spin's documentation writes it: a `[table]` per
    /// component, `[[trigger.http]]` entries, and routes and variable declarations inline.
    pub fn to_toml(&self) -> String {
        let mut document = toml_edit::ser::to_document(self).expect("a manifest always serialises");
        expand(document.as_table_mut(), true);
        document.to_string()
    }

    /// Checks what Spin checks of the parts NetLess uses: the version, ids, and that every trigger
    /// names a component.
    pub fn check(&self) -> Result<(), String> {
        if self.spin_manifest_version != 2 {
            return Err(format!("spin_manifest_version is {}; NetLess runs version 2", self.spin_manifest_version));
        }
        for id in self.component.keys() {
            check_id(id, '-').map_err(|e| format!("component id `{id}`: {e}"))?;
        }
        for name in self.variables.keys() {
            check_id(name, '_').map_err(|e| format!("variable `{name}`: {e}"))?;
        }
        for (name, variable) in &self.variables {
            if variable.default.is_none() && !variable.required {
                return Err(format!("variable `{name}` has no default and is not required"));
            }
        }
        for trigger in &self.trigger.http {
            if !self.component.contains_key(&trigger.component) {
                return Err(format!("a trigger names component `{}`, which the manifest does not define", trigger.component));
            }
            match &trigger.route {
                Route::Path(path) if !path.starts_with('/') => return Err(format!("route `{path}` does not start with `/`")),
                Route::Private { private: false } => return Err("a route table must be `{ private = true }`".into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Turns inline tables into `[tables]` and arrays of inline tables into `[[arrays]]`, except a
/// route and the entries of the top-level `variables` table.
fn expand(table: &mut toml_edit::Table, root: bool) {
    use toml_edit::{ArrayOfTables, Item, Value};
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_string()).collect();
    for key in keys {
        let item = table.get_mut(&key).expect("a key just listed");
        let declarations = root && key == "variables";
        match std::mem::take(item) {
            Item::Value(Value::InlineTable(inline)) if key != "route" => {
                let mut sub = inline.into_table();
                if !declarations {
                    expand(&mut sub, false);
                }
                let implicit = sub.iter().all(|(_, v)| v.is_table() || v.is_array_of_tables());
                sub.set_implicit(implicit);
                *item = Item::Table(sub);
            }
            Item::Value(Value::Array(array)) if !array.is_empty() && array.iter().all(Value::is_inline_table) => {
                let mut tables = ArrayOfTables::new();
                for value in array {
                    let Value::InlineTable(inline) = value else { unreachable!("checked above") };
                    let mut sub = inline.into_table();
                    expand(&mut sub, false);
                    tables.push(sub);
                }
                *item = Item::ArrayOfTables(tables);
            }
            other => *item = other,
        }
    }
}

/// Spin's id rule: lowercase ASCII words joined by `delimiter`, the first starting with a letter,
/// later ones with a letter or digit.
fn check_id(id: &str, delimiter: char) -> Result<(), String> {
    for (i, word) in id.split(delimiter).enumerate() {
        let mut chars = word.chars();
        match chars.next() {
            None => return Err(format!("words separated by `{delimiter}` must not be empty")),
            Some(c) if c.is_ascii_lowercase() || (i > 0 && c.is_ascii_digit()) => {}
            Some(c) => return Err(format!("words must start with a lowercase letter (or, after the first, a digit), not `{c}`")),
        }
        if let Some(c) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
            return Err(format!("`{c}` is not a lowercase letter or digit"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_spins_rules() {
        assert!(check_id("seg-0", '-').is_ok());
        assert!(check_id("stage_0_urls", '_').is_ok());
        assert!(check_id("0-seg", '-').is_err());
        assert!(check_id("seg_0", '-').is_err());
        assert!(check_id("Seg-0", '-').is_err());
        assert!(check_id("seg--0", '-').is_err());
    }

    #[test]
    fn routes_read_as_paths_or_private() {
        let manifest: Manifest = toml_edit::de::from_str(
            r#"
            spin_manifest_version = 2
            [application]
            name = "m"
            [[trigger.http]]
            route = "/..."
            component = "gateway"
            [[trigger.http]]
            route = { private = true }
            component = "seg-0"
            [component.gateway]
            source = "gateway.wasm"
            [component.seg-0]
            source = "seg-0.wasm"
            "#,
        )
        .unwrap();
        assert_eq!(manifest.trigger.http[1].route, Route::Private { private: true });
        assert!(manifest.check().is_ok());
        let text = manifest.to_toml();
        assert!(text.contains("route = { private = true }"), "{text}");
        assert!(text.contains("[component.seg-0]"), "{text}");
        let again: Manifest = toml_edit::de::from_str(&text).unwrap();
        assert_eq!(again, manifest);
    }
}
