//! Compiles the Open Inference Protocol's gRPC service (`oip/proto/open_inference_grpc.proto`) into
//! Rust with protox, so no system `protoc` is needed; and embeds the guest components (the segment
//! runtime, the composer, the Spin app's HTTP segment and gateway) found in the wasm32-wasip2 release
//! folder of this build's target folder, so that the `netless` binary works from any folder.

use std::path::{Path, PathBuf};

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
    let dir = std::env::var_os("NETLESS_COMPONENTS_DIR").map(PathBuf::from).or_else(|| guest_folder(&out));
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

/// `<target>/wasm32-wasip2/release`, for the target folder `OUT_DIR` is in
/// (`<target>[/<triple>]/<profile>/build/netless-<hash>/out`).
fn guest_folder(out: &Path) -> Option<PathBuf> {
    out.ancestors().map(|a| a.join("wasm32-wasip2/release")).find(|d| d.join(COMPONENTS[0]).exists())
}
