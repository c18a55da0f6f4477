//! `spin.toml`, as `netless up --spin` and `netless push` read it.

use netless::package::spin_manifest::Manifest;
use netless_fuzz::{Target, fuzz};

use super::corpus;

const DICTIONARY: &[&[u8]] = &[
    b"spin_manifest_version = 2\n", b"[application]\n", b"name = \"app\"\n", b"[[trigger.http]]\n", b"route = \"/...\"\n",
    b"route = { private = true }\n", b"component = \"seg-0\"\n", b"[component.seg-0]\n", b"source = \"../x.wasm\"\n",
    b"allowed_outbound_hosts = [\"http://*.spin.internal\"]\n", b"[variables]\n", b"token = { required = true }\n",
    b"[component.gateway.variables]\n", b"{{ token }}", b"{{", b"}}", b"\"\"\"", b"'''", b"= [", b"]\n", b"\xc3\xa9",
];

#[test]
fn spin_manifests() {
    let repository = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../spin.toml")).unwrap();
    let small = b"spin_manifest_version = 2\n[application]\nname = \"m\"\n[variables]\nhops = { default = \"1\" }\n[[trigger.http]]\nroute = \"/seg/...\"\ncomponent = \"seg-0\"\n[[trigger.http]]\nroute = { private = true }\ncomponent = \"seg-1\"\n[component.seg-0]\nsource = \"spin/seg-0.wasm\"\nallowed_outbound_hosts = [\"http://seg-1.spin.internal\"]\n[component.seg-0.variables]\nhops = \"{{ hops }}\"\n[component.seg-1]\nsource = \"spin/seg-1.wasm\"\n".to_vec();
    let target = Target { name: "spin-toml", corpus: corpus("spin-toml"), seeds: vec![repository, small], dictionary: DICTIONARY, mutators: vec![] };
    let report = fuzz(target, |input| {
        let text = std::str::from_utf8(input).map_err(|_| "not UTF-8".to_string())?;
        let manifest = Manifest::parse(text)?;
        assert_eq!(Manifest::parse(&manifest.to_toml()).as_ref(), Ok(&manifest), "manifests round-trip:\n{}", manifest.to_toml());
        for id in manifest.component.keys() {
            manifest.single_component(id).expect("a listed component").check().expect("one component of a valid app is valid");
        }
        Ok(())
    });
    assert!(report.executions > 100 && report.verdicts > 5, "{report:?}");
}
