//! Spin variables: application variables (defaults, overridden by `--variable` or `SPIN_VARIABLE_*`),
//! component variables expanded from `{{ name }}` templates, and the `fermyon:spin/variables`
//! interface components read them through.

use std::collections::BTreeMap;

use wasmtime::component::{HasSelf, Linker};

use super::StoreState;
use crate::package::spin_manifest::Manifest;

mod bindings {
    wasmtime::component::bindgen!({
        inline: "
            package fermyon:spin@2.0.0;
            interface variables {
                variant error { invalid-name(string), undefined(string), provider(string), other(string) }
                get: func(name: string) -> result<string, error>;
            }
            world host { import variables; }
        ",
    });
}

use bindings::fermyon::spin::variables::{self, Error};

/// The value of every application variable: given, from the environment, or its default.
pub fn application_values(manifest: &Manifest, given: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    if let Some(unknown) = given.keys().find(|k| !manifest.variables.contains_key(*k)) {
        return Err(format!("variable `{unknown}` is given a value but the app does not declare it"));
    }
    manifest
        .variables
        .iter()
        .map(|(name, variable)| {
            let from_env = std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())).ok();
            let value = given.get(name).cloned().or(from_env).or_else(|| variable.default.clone());
            value.map(|v| (name.clone(), v)).ok_or_else(|| format!("variable `{name}` is required: give it with --variable {name}=VALUE or SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
        })
        .collect()
}

/// Expands `{{ name }}` templates in `template` from `values`.
pub fn expand(template: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or_else(|| format!("`{template}` has an unclosed `{{{{`"))?;
        let name = rest[start + 2..start + end].trim();
        out.push_str(values.get(name).ok_or_else(|| format!("`{template}` uses variable `{name}`, which the app does not declare"))?);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

impl variables::Host for StoreState {
    fn get(&mut self, name: String) -> Result<String, Error> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(Error::InvalidName(format!("`{name}` is not a variable name (lowercase letters, digits and `_`)")));
        }
        self.variables.get(&name).cloned().ok_or_else(|| Error::Undefined(format!("the component has no variable `{name}`")))
    }
}

/// Adds `fermyon:spin/variables` to the linker.
pub fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    variables::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_from_application_variables() {
        let values = BTreeMap::from([("a".to_string(), "x".to_string())]);
        assert_eq!(expand("http://{{ a }}:80/{{a}}", &values).unwrap(), "http://x:80/x");
        assert!(expand("{{ b }}", &values).unwrap_err().contains("`b`"));
        assert!(expand("{{ a", &values).is_err());
    }
}
