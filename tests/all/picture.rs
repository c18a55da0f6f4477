//! `netless plan --html`: the split drawn as one self-contained page, rendered by a real headless
//! browser (Debian's chromium; skipped with a message when it is missing, failing under CI).

use std::path::PathBuf;
use std::process::Command;

use crate::common::{model_file, netless, prerequisite};

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.exists())
    });
    prerequisite(found.unwrap_or_else(|| PathBuf::from("/usr/bin/chromium")), "apt-get install chromium")
}

/// resnet18 under 16 MiB (12 functions, 6 of them shards): the browser's DOM has one budget bar per
/// function and one box per node, the page needs nothing from outside, and it renders to a picture.
#[test]
fn the_split_is_drawn_as_a_page_a_browser_renders() {
    let Some(model) = model_file("resnet18_rand.onnx") else { return };
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("plan.html");
    let out = netless(&["plan", model.to_str().unwrap(), "--max-memory", "16MiB", "--html", page.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let functions: usize = stdout.split(" functions,").next().and_then(|s| s.rsplit('(').next()).and_then(|n| n.parse().ok()).expect("the plan's header");
    let nodes: usize = stdout.split(" nodes,").next().and_then(|s| s.rsplit('(').next()).and_then(|n| n.parse().ok()).expect("the plan's header");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="), "self-contained");

    let profile = format!("--user-data-dir={}", dir.path().join("profile").display());
    let browse = |args: &[&str]| Command::new(&browser).args(["--headless", "--no-sandbox", "--disable-gpu", &profile]).args(args).output().unwrap();
    let url = format!("file://{}", page.display());
    let dom = browse(&["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("class=\"segment\"").count(), functions, "one bar per function in the rendered page");
    assert_eq!(dom.matches("class=\"node\"").count(), nodes, "one box per node");
    assert!(dom.contains("cut into") && dom.contains("class=\"boundary\""), "shards and boundaries are drawn");
    let shot = dir.path().join("plan.png");
    browse(&["--window-size=1200,900", &format!("--screenshot={}", shot.display()), &url]);
    let png = std::fs::read(&shot).expect("the browser wrote a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a picture with something in it: {} bytes", png.len());
}
