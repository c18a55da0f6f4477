//! Compiles the Open Inference Protocol's gRPC service (`oip/proto/open_inference_grpc.proto`) into
//! Rust with protox, so no system `protoc` is needed; and embeds the guest components (the segment
//! runtime, the composer, the Spin app's HTTP segment and gateway) found in the wasm32-wasip2 release
//! folder of this build's target folder, so that the `netless` binary works from any folder. When that
//! folder has none (`cargo install --path host`), it builds them there first with a nested cargo, into
//! `<target>/guests` (a target folder of their own, so the two builds never wait on each other's lock).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The guest components the CLI uses, by file name.
const COMPONENTS: &[&str] = &["netless_segment.wasm", "netless_composer.wasm", "netless_http_segment.wasm", "netless_gateway.wasm"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../oip/proto/open_inference_grpc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../oip/proto"])?;
    tonic_prost_build::configure().build_client(false).compile_fds(descriptors)?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-env-changed=NETLESS_COMPONENTS_DIR");
    println!("cargo:rerun-if-env-changed=NETLESS_BUILD_GUESTS");
    let dir = match std::env::var_os("NETLESS_COMPONENTS_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => match guest_folder(&out) {
            Some(dir) => Some(dir),
            None => build_guests(&out)?,
        },
    };
    let mut runtime = "no segment runtime built in".to_string();
    let mut table = String::from("/// Guest components built into this binary: (file name, bytes).\npub const EMBEDDED: &[(&str, &[u8])] = &[\n");
    for name in COMPONENTS {
        let Some(path) = dir.as_ref().map(|d| d.join(name)).filter(|p| p.exists()) else {
            println!("cargo:warning=guest component {name} not found (run scripts/build-components.sh first): this netless finds it only through its variable");
            continue;
        };
        println!("cargo:rerun-if-changed={}", path.display());
        if *name == COMPONENTS[0] {
            let bytes = std::fs::read(&path)?;
            let digest: String = Sha256::digest(&bytes).iter().take(8).map(|b| format!("{b:02x}")).collect();
            runtime = format!("segment runtime {name} sha256 {digest}.., {} bytes", bytes.len());
        }
        table.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    table.push_str("];\n");
    std::fs::write(out.join("components.rs"), table)?;
    println!("cargo:rustc-env=NETLESS_LONG_VERSION={} ({runtime})", std::env::var("CARGO_PKG_VERSION")?);
    Ok(())
}

/// `<target>/wasm32-wasip2/release` holding the components (`scripts/build-components.sh` builds them
/// there), for the target folder `OUT_DIR` is in (`<target>[/<triple>]/<profile>/build/netless-<hash>/out`).
fn guest_folder(out: &Path) -> Option<PathBuf> {
    out.ancestors().map(|a| a.join("wasm32-wasip2/release")).find(|d| d.join(COMPONENTS[0]).exists())
}

/// The guest packages the CLI embeds.
const GUESTS: &[&str] = &["netless-segment", "netless-composer", "netless-http-segment", "netless-gateway"];

/// Builds the guest components into `<target>/guests` with the workspace's own cargo settings (the
/// simd128 flags of `.cargo/config.toml`, none of the host build's flags), and returns their folder.
/// It runs whenever the guests' sources change, and cargo rebuilds only what changed.
/// Skipped with `NETLESS_BUILD_GUESTS=0`; a failure is an error in a release build (a binary that
/// cannot find its runtime is no use installed) and a warning otherwise.
fn build_guests(out: &Path) -> Result<Option<PathBuf>, Box<dyn std::error::Error>> {
    if std::env::var_os("NETLESS_BUILD_GUESTS").is_some_and(|v| v == "0") {
        return Ok(None);
    }
    let target = out.ancestors().find(|a| a.file_name().is_some_and(|n| n == "build")).and_then(Path::parent).and_then(Path::parent).ok_or("OUT_DIR is not inside a target folder")?;
    let target = if target.file_name() == std::env::var_os("TARGET").as_deref() { target.parent().unwrap_or(target) } else { target };
    let workspace = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("..");
    for watched in ["components", "wit", "checks", "oip/src", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let guests = target.join("guests");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(&workspace).args(["build", "--locked", "--release", "--target", "wasm32-wasip2"]).env("CARGO_TARGET_DIR", &guests);
    for package in GUESTS {
        cargo.args(["-p", package]);
    }
    for flags in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cargo.env_remove(flags);
    }
    let built = cargo.output()?;
    if built.status.success() {
        return Ok(Some(guests.join("wasm32-wasip2/release")));
    }
    let why = format!(
        "building the guest components failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&built.stderr).lines().filter(|l| l.contains("error")).collect::<Vec<_>>().join("\n")
    );
    match std::env::var("PROFILE").as_deref() {
        Ok("release") => Err(why.into()),
        _ => {
            println!("cargo:warning={}", why.replace('\n', " / "));
            Ok(None)
        }
    }
}
