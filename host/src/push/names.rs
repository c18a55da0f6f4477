//! Image names. The whole app goes to `REGISTRY/REPO:TAG`; with `--per-segment`, each component also
//! goes alone to `REGISTRY/REPO-<component>:TAG` (`REPO-seg0`, `REPO-seg1`, ..., `REPO-gateway`), the
//! names `netless deploy k8s --image REGISTRY/REPO:TAG` derives for its SpinApps.

use oci_client::Reference;

use super::{Error, Result};

/// The tag used when a reference has none.
pub const DEFAULT_TAG: &str = "latest";

/// Parses an image reference to push to or deploy from: a tag (`latest` when none is given), not a
/// digest, since per-component names are derived from it.
pub fn parse(reference: &str) -> Result<Reference> {
    let bad = |reason: String| Error::Reference { reference: reference.to_string(), reason };
    let parsed: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
        let path = reference.split_once('/').map_or(reference, |(_, rest)| rest);
        let repository = path.split(['@', ':']).next().unwrap_or_default();
        let hint = if repository.chars().any(|c| c.is_ascii_uppercase()) { " (repository names must be lowercase)" } else { "" };
        bad(format!("{e}{hint}"))
    })?;
    if parsed.digest().is_some() {
        return Err(bad("give a tag (REGISTRY/REPO:TAG), not a digest: per-component images are named after it".into()));
    }
    let tag = parsed.tag().unwrap_or(DEFAULT_TAG).to_string();
    Ok(Reference::with_tag(parsed.registry().to_string(), parsed.repository().to_string(), tag))
}

/// The image of `component` alone, beside the app's image `base`: `REPO-<component>:TAG`.
pub fn component_image(base: &Reference, component: &str) -> Reference {
    Reference::with_tag(
        base.registry().to_string(),
        format!("{}-{component}", base.repository()),
        base.tag().unwrap_or(DEFAULT_TAG).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use netless_oip::pipeline::{GATEWAY_COMPONENT, segment_component};

    #[test]
    fn components_are_named_beside_the_app() {
        let base = parse("127.0.0.1:5000/models/demo:v1").unwrap();
        assert_eq!(component_image(&base, &segment_component(0)).whole(), "127.0.0.1:5000/models/demo-seg0:v1");
        assert_eq!(component_image(&base, GATEWAY_COMPONENT).whole(), "127.0.0.1:5000/models/demo-gateway:v1");
        assert_eq!(parse("ghcr.io/a/b").unwrap().tag(), Some("latest"));
        assert!(parse("ghcr.io/A/b:v1").unwrap_err().to_string().contains("lowercase"));
        assert!(parse("ghcr.io/a/b@sha256:0000").is_err());
    }
}
