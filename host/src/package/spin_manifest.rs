//! A Spin application manifest (`spin.toml`, manifest version 2), typed: the fields NetLess writes
//! and reads, after Spin's manifest reference. Unknown fields are kept out rather than guessed at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use netless_oip::Name;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The manifest's file name in a `netless build --spin` folder.
pub const FILE_NAME: &str = "spin.toml";

/// The route that makes an HTTP trigger public for every path below it.
pub const PUBLIC_ROUTE: &str = "/...";

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
    /// Its authors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// Trigger-wide settings (`[application.trigger.http]`), by trigger type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trigger: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// An application variable: a default, or required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
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

impl Route {
    /// Whether the route is `{ private = true }`.
    pub fn is_private(&self) -> bool {
        matches!(self, Route::Private { private: true })
    }
}

impl Manifest {
    /// Reads and checks a `spin.toml`.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Manifest::parse(&text).map_err(|reason| Error::Plan { path: path.into(), reason: format!("not a Spin manifest NetLess can run: {reason}") })
    }

    /// Parses and checks a manifest's text; the error names the line.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let parsed = std::panic::catch_unwind(|| toml_edit::de::from_str::<Manifest>(text)).map_err(|_| "not valid TOML (its parser panicked)".to_string())?;
        let manifest: Manifest = parsed.map_err(|e| match e.span() {
            Some(span) => format!("line {}: {}", text[..span.start].matches('\n').count() + 1, quoted_names(e.message())),
            None => quoted_names(e.message()),
        })?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The path of component `id`'s wasm file, the manifest being in `dir`.
    pub fn source_path(&self, dir: &Path, id: &str) -> PathBuf {
        dir.join(&self.component[id].source)
    }

    /// The same app reduced to component `id` and its triggers, with private routes made public
    /// (`/...`): what runs alone as one SpinKube app, where nothing could reach a private route.
    pub fn single_component(&self, id: &str) -> Option<Manifest> {
        let component = self.component.get(id)?.clone();
        let http = self
            .trigger
            .http
            .iter()
            .filter(|t| t.component == id)
            .map(|t| HttpTrigger { route: if t.route.is_private() { Route::Path(PUBLIC_ROUTE.into()) } else { t.route.clone() }, component: t.component.clone() })
            .collect();
        Some(Manifest {
            application: Application { name: format!("{}-{id}", self.application.name), ..self.application.clone() },
            trigger: Triggers { http },
            component: BTreeMap::from([(id.to_string(), component)]),
            ..self.clone()
        })
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
            check_id(id, '-', false).map_err(|e| format!("component id {}: {e}", Name(id)))?;
        }
        for name in self.variables.keys() {
            check_id(name, '_', true).map_err(|e| format!("variable {}: {e}", Name(name)))?;
        }
        for (id, component) in &self.component {
            for name in component.variables.keys() {
                check_id(name, '_', true).map_err(|e| format!("component {}: variable {}: {e}", Name(id), Name(name)))?;
            }
        }
        for (name, variable) in &self.variables {
            if variable.required == variable.default.is_some() {
                return Err(format!("variable {}: must be `required` or have a `default`, not both or neither", Name(name)));
            }
        }
        for (id, component) in &self.component {
            let source = Path::new(&component.source);
            if source.is_absolute() || source.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(format!("component {}: source {} is outside the manifest's folder", Name(id), Name(&component.source)));
            }
        }
        for trigger in &self.trigger.http {
            if !self.component.contains_key(&trigger.component) {
                return Err(format!("a trigger names component {}, which the manifest does not define", Name(&trigger.component)));
            }
            match &trigger.route {
                Route::Path(path) if !path.starts_with('/') => return Err(format!("route {} does not start with `/`", Name(path))),
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

/// Spin's id rules (its manifest's `KebabId` for component ids, `LowerSnakeId` for variable
/// names): words joined by `delimiter`, each starting with an ASCII letter and going on with letters
/// or digits, a word's letters all lowercase or all uppercase (all lowercase if `lower`). The
/// messages are Spin's own wording, so a refused name reads the same here as under `spin up`.
fn check_id(id: &str, delimiter: char, lower: bool) -> Result<(), String> {
    let wrong = if delimiter == '-' { '_' } else { '-' };
    if id.is_empty() {
        return Err("empty".into());
    }
    if id.contains(wrong) {
        return Err(format!("words must be separated with {delimiter:?}, not {wrong:?}"));
    }
    for word in id.split(delimiter) {
        let mut chars = word.chars();
        let Some(first) = chars.next() else { return Err(format!("{delimiter:?}-separated words must not be empty")) };
        if !first.is_ascii_alphabetic() {
            return Err(format!("{delimiter:?}-separated words must start with an ASCII letter; got {first:?}"));
        }
        for c in chars {
            if !c.is_ascii_alphanumeric() {
                return Err(format!("{delimiter:?}-separated words may only contain alphanumeric ASCII; got {c:?}"));
            }
            if c.is_ascii_alphabetic() && c.is_ascii_uppercase() != first.is_ascii_uppercase() {
                return Err(format!("{delimiter:?}-separated words must be all lowercase or all UPPERCASE; got {word:?}"));
            }
        }
        if lower && first.is_ascii_uppercase() {
            return Err(format!("Lower-case identifiers must be all lowercase; got {id:?}"));
        }
    }
    Ok(())
}

/// serde's "unknown field `X`, expected ..." with `X` shown through [`Name`], so that a key holding
/// a backtick cannot be mistaken for the end of the quote.
fn quoted_names(message: &str) -> String {
    let field = message.strip_prefix("unknown field `").and_then(|rest| {
        let end = rest.rfind("`, expected").or_else(|| rest.strip_suffix('`').map(str::len))?;
        Some((&rest[..end], &rest[end + 1..]))
    });
    match field {
        Some((name, rest)) => format!("unknown field {}{rest}", Name(name)),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_spins_rules() {
        for ok in ["seg0", "seg12-shard3", "gateway", "SEG-zero", "a1b2"] {
            assert_eq!(check_id(ok, '-', false), Ok(()), "{ok}");
        }
        assert_eq!(check_id("stage0_urls", '_', true), Ok(()));
        let refused = [
            ("seg-0", '-', false, "'-'-separated words must start with an ASCII letter; got '0'"),
            ("stage_0_urls", '_', true, "'_'-separated words must start with an ASCII letter; got '0'"),
            ("0seg", '-', false, "must start with an ASCII letter; got '0'"),
            ("seg_zero", '-', false, "words must be separated with '-', not '_'"),
            ("seg--zero", '-', false, "words must not be empty"),
            ("Seg-zero", '-', false, "all lowercase or all UPPERCASE; got \"Seg\""),
            ("seg.zero", '-', false, "only contain alphanumeric ASCII; got '.'"),
            ("URLS", '_', true, "Lower-case identifiers must be all lowercase"),
            ("", '-', false, "empty"),
        ];
        for (id, delimiter, lower, message) in refused {
            let error = check_id(id, delimiter, lower).unwrap_err();
            assert!(error.contains(message), "{id}: {error}");
        }
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
            component = "seg0"
            [component.gateway]
            source = "gateway.wasm"
            [component.seg0]
            source = "seg0.wasm"
            "#,
        )
        .unwrap();
        assert_eq!(manifest.trigger.http[1].route, Route::Private { private: true });
        assert!(manifest.check().is_ok());
        let text = manifest.to_toml();
        assert!(text.contains("route = { private = true }"), "{text}");
        assert!(text.contains("[component.seg0]"), "{text}");
        let again: Manifest = toml_edit::de::from_str(&text).unwrap();
        assert_eq!(again, manifest);
        let single = manifest.single_component("seg0").unwrap();
        assert_eq!(single.component.keys().collect::<Vec<_>>(), ["seg0"]);
        assert_eq!(single.trigger.http, [HttpTrigger { route: Route::Path(PUBLIC_ROUTE.into()), component: "seg0".into() }]);
        assert_eq!(single.application.name, "m-seg0");
    }

    #[test]
    fn refuses_what_it_cannot_run_or_push_by_name() {
        let app = "spin_manifest_version = 2\n[application]\nname = \"m\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n";
        assert!(Manifest::parse(app).is_ok());
        assert!(Manifest::parse(&app.replace("source = \"a.wasm\"", "source = \"a.wasm\"\nfiles = [\"x\"]")).unwrap_err().contains("unknown field `files`"));
        let error = Manifest::parse(&app.replace("source = \"a.wasm\"", "source = \"a.wasm\"\n\"k`x\" = 1")).unwrap_err();
        assert!(error.contains("unknown field \"k`x\", expected one of `description`"), "{error}");
        assert_eq!(quoted_names("unknown field `k`"), "unknown field `k`");
        assert_eq!(quoted_names("missing field `source`"), "missing field `source`");
        assert!(Manifest::parse(&app.replace("a.wasm", "../a.wasm")).unwrap_err().contains("outside the manifest's folder"));
        assert!(Manifest::parse(&app.replace("= 2", "= 1")).unwrap_err().contains("version 2"));
        let error = Manifest::parse(&app.replace("name = \"m\"", "name = 3")).unwrap_err();
        assert!(error.starts_with("line 3"), "{error}");
    }
}
