//! Registry credentials from the usual Docker config: `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. An `auths` entry (`auth` as base64 `user:password`, or `username` and
//! `password`) wins; otherwise a credential helper (`credHelpers` for the registry, else `credsStore`)
//! is asked through `docker-credential-<helper> get`; otherwise access is anonymous.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{Error, Result};

/// Credentials for one registry and where they came from.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// What the client sends.
    pub auth: RegistryAuth,
    /// Where they were found (for error messages), e.g. `user alice from /root/.docker/config.json`.
    pub origin: Option<String>,
}

impl Credentials {
    /// No credentials.
    pub fn anonymous() -> Credentials {
        Credentials { auth: RegistryAuth::Anonymous, origin: None }
    }

    /// A user name and password given directly.
    pub fn basic(username: &str, password: &str) -> Credentials {
        Credentials { auth: RegistryAuth::Basic(username.into(), password.into()), origin: Some(format!("user `{username}`")) }
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The Docker config file in use: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json")),
    }
}

/// Credentials for `registry` (`host[:port]`) from the Docker config; anonymous when it has none.
pub fn for_registry(registry: &str) -> Result<Credentials> {
    match docker_config_path() {
        Some(path) if path.exists() => from_file(&path, registry),
        _ => Ok(Credentials::anonymous()),
    }
}

/// Credentials for `registry` from the Docker config file at `path`.
pub fn from_file(path: &Path, registry: &str) -> Result<Credentials> {
    let bad = |reason: String| Error::Credentials { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| bad(format!("not a Docker config: {e}")))?;
    let wanted = normalise(registry);
    if let Some((key, entry)) = config.auths.iter().find(|(key, _)| normalise(key) == wanted) {
        let origin = |user: &str| Some(format!("user `{user}` from {}", path.display()));
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("auths.\"{key}\".auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad(format!("auths.\"{key}\".auth is not UTF-8")))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.\"{key}\".auth does not decode to user:password")))?;
            return Ok(Credentials { auth: RegistryAuth::Basic(user.into(), password.into()), origin: origin(user) });
        }
        if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Credentials { auth: RegistryAuth::Basic(user.clone(), password.clone()), origin: origin(user) });
        }
        if entry.identity_token.is_some() {
            return Err(bad(format!("auths.\"{key}\" holds an identity token, which netless push cannot use; log in with a user name and password")));
        }
    }
    let helper = config
        .cred_helpers
        .iter()
        .find(|(key, _)| normalise(key) == wanted)
        .map(|(_, helper)| helper.clone())
        .or(config.creds_store);
    match helper {
        Some(helper) => from_helper(&helper, registry, path),
        None => Ok(Credentials::anonymous()),
    }
}

fn from_helper(helper: &str, registry: &str, config: &Path) -> Result<Credentials> {
    let program = format!("docker-credential-{helper}");
    let bad = |reason: String| Error::Credentials { path: config.to_owned(), reason: format!("credential helper `{program}`: {reason}") };
    let mut child = match Command::new(&program).arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        // A configured helper that is not installed here: go on anonymously, as docker does for pulls.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::anonymous()),
        Err(e) => return Err(bad(e.to_string())),
    };
    child.stdin.take().expect("piped").write_all(registry.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let output = child.wait_with_output().map_err(|e| bad(e.to_string()))?;
    if !output.status.success() {
        // Helpers answer "credentials not found in native keychain" for registries they do not know.
        return Ok(Credentials::anonymous());
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout).map_err(|e| bad(format!("unreadable answer: {e}")))?;
    if answer.username == "<token>" {
        return Err(bad("it returned an identity token, which netless push cannot use".into()));
    }
    let origin = Some(format!("user `{}` from {program}", answer.username));
    Ok(Credentials { auth: RegistryAuth::Basic(answer.username, answer.secret), origin })
}

/// A registry name as Docker config keys spell it in many ways: without scheme or path, and Docker
/// Hub's aliases as one.
fn normalise(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default().to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_base64_auth_and_plain_fields_under_any_spelling_of_the_registry() {
        let (_dir, path) = config(r#"{"auths": {"https://127.0.0.1:5000/v2/": {"auth": "YWxpY2U6czNjcjN0"},
                                               "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}"#);
        let alice = from_file(&path, "127.0.0.1:5000").unwrap();
        assert!(matches!(alice.auth, RegistryAuth::Basic(ref u, ref p) if u == "alice" && p == "s3cr3t"));
        let bob = from_file(&path, "docker.io").unwrap();
        assert!(matches!(bob.auth, RegistryAuth::Basic(ref u, _) if u == "bob"));
        assert!(matches!(from_file(&path, "ghcr.io").unwrap().auth, RegistryAuth::Anonymous));
    }

    #[test]
    fn a_malformed_entry_is_named() {
        let (_dir, path) = config(r#"{"auths": {"ghcr.io": {"auth": "bm9jb2xvbg=="}}}"#);
        let error = from_file(&path, "ghcr.io").unwrap_err().to_string();
        assert!(error.contains("auths.\"ghcr.io\".auth does not decode to user:password"), "{error}");
    }
}
