//! A pipeline spread over separate worker processes (`netless up --only-segments`) behind a gateway
//! (`Service::gateway`, what `netless gateway` and `up --distributed` run), chained over real HTTP:
//! answers equal to native tract; a killed replica's requests succeed on another; a segment with no
//! replica left fails fast with 503 naming it, and serves again once its worker is back, without
//! restarting the gateway; a hostile payload from a peer is refused and the worker keeps serving.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netless::serve::{Handle, ServeOptions, Service};

use crate::serve::{assert_matches, binary_request, built, options, outputs, post, reference};

/// A `netless up --only-segments` process on a fixed loopback port.
pub struct Worker {
    process: KillOnDrop,
    pub url: String,
}

impl Worker {
    pub fn start(dir: &Path, segments: &str, port: u16) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_netless"))
            .arg("up")
            .arg(dir)
            .args(["--only-segments", segments, "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains(&format!("127.0.0.1:{port}")), "worker did not start: {line:?}");
        Worker { process: KillOnDrop(child), url: format!("http://127.0.0.1:{port}") }
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A gateway to `replicas`, in this process, on a free loopback port.
pub fn start_gateway(dir: &Path, replicas: Vec<Vec<String>>, hop_timeout: Duration, deadline: Duration) -> Handle {
    let service = Service::gateway(dir, replicas, hop_timeout, ServeOptions { deadline, ..options() }).expect("gateway loads");
    Handle::start(service, "127.0.0.1:0".parse().unwrap()).expect("gateway starts")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_gateway_chains_worker_processes_and_survives_their_failures() {
    let Some(dir) = built() else { return };
    let ports = [free_port(), free_port(), free_port()];
    let mut first = Worker::start(dir.path(), "0", ports[0]);
    let second = Worker::start(dir.path(), "0", ports[1]);
    let mut last = Worker::start(dir.path(), "1", ports[2]);
    let replicas = vec![vec![first.url.clone(), second.url.clone()], vec![last.url.clone()]];
    let gateway = start_gateway(dir.path(), replicas, Duration::from_secs(5), Duration::from_secs(20));
    let infer = format!("{}/v2/models/rapid_orientation/infer", gateway.url());
    let (inputs, expected) = reference(dir.path(), 4);
    let (body, header) = binary_request(&inputs, "distributed");
    for _ in 0..4 {
        assert_matches(&expected, &outputs(&post(&infer, &body, Some(header))));
    }

    // Kill one replica of segment 0 while 16 requests are in flight: they all succeed on the other.
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..16).map(|_| scope.spawn(|| post(&infer, &body, Some(header)))).collect();
        std::thread::sleep(Duration::from_millis(30));
        first.kill();
        for client in clients {
            assert_matches(&expected, &outputs(&client.join().unwrap()));
        }
    });

    // No replica of segment 1 left: fail fast, naming it.
    last.kill();
    let started = Instant::now();
    let reply = post(&infer, &body, Some(header));
    assert_eq!(reply.status, 503, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains("rapid_orientation-seg-1") && reply.error().contains("no replica"), "{}", reply.error());
    assert!(started.elapsed() < Duration::from_secs(5), "failed in {:?}", started.elapsed());

    // Its worker back on the same address: the same gateway serves again.
    let last = Worker::start(dir.path(), "1", ports[2]);
    assert_matches(&expected, &outputs(&post(&infer, &body, Some(header))));

    // A peer sending a hostile payload is refused, and the worker keeps serving.
    let mut hostile = br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#.to_vec();
    let header_length = hostile.len();
    hostile.extend_from_slice(&[0, 1]);
    let reply = post(&format!("{}/v2/models/rapid_orientation-seg-1/infer", last.url), &hostile, Some(header_length));
    assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));
    assert_matches(&expected, &outputs(&post(&infer, &body, Some(header))));
    gateway.stop().unwrap();
}

/// Network namespaces joined to this one by veth links, deleted (with their links) when dropped.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
}

/// Whether this process may create network namespaces (root, with iproute2); under CI it must.
fn can_make_namespaces() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has_ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if root && has_ip {
        return true;
    }
    let message = "network namespace test needs root and iproute2";
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("skipping: {message}");
    false
}

/// Namespace `i` (of this process): `nl<pid>-<i>`, reached at 10.231.<i>.2 over a veth whose host
/// end is `nlh<pid>x<i>` at 10.231.<i>.1.
fn make_namespace(i: usize, guard: &mut Namespaces) -> (String, String, String) {
    let pid = std::process::id() % 100_000;
    let (ns, host, inside) = (format!("nl{pid}-{i}"), format!("nlh{pid}x{i}"), format!("nlp{pid}x{i}"));
    ip(&["netns", "add", &ns]);
    guard.names.push(ns.clone());
    ip(&["link", "add", &host, "type", "veth", "peer", "name", &inside]);
    ip(&["link", "set", &inside, "netns", &ns]);
    ip(&["addr", "add", &format!("10.231.{i}.1/24"), "dev", &host]);
    ip(&["link", "set", &host, "up"]);
    ip(&["-n", &ns, "addr", "add", &format!("10.231.{i}.2/24"), "dev", &inside]);
    ip(&["-n", &ns, "link", "set", &inside, "up"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    (ns, host, format!("10.231.{i}.2"))
}

#[test]
fn segments_on_hosts_in_network_namespaces_survive_a_cut_link() {
    let Some(dir) = built() else { return };
    if !can_make_namespaces() {
        return;
    }
    let mut guard = Namespaces { names: vec![] };
    let hosts: Vec<_> = (1..=2).map(|i| make_namespace(i, &mut guard)).collect();
    let _workers: Vec<KillOnDrop> = hosts
        .iter()
        .enumerate()
        .map(|(segment, (ns, _, address))| {
            let mut child = Command::new("ip")
                .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_netless"), "up"])
                .arg(dir.path())
                .args(["--only-segments", &segment.to_string(), "--listen", &format!("{address}:8081")])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert!(line.contains(address.as_str()), "worker in {ns} did not start: {line:?}");
            KillOnDrop(child)
        })
        .collect();
    let replicas = hosts.iter().map(|(_, _, address)| vec![format!("http://{address}:8081")]).collect();
    let gateway = start_gateway(dir.path(), replicas, Duration::from_secs(2), Duration::from_secs(6));
    let infer = format!("{}/v2/models/rapid_orientation/infer", gateway.url());
    let (inputs, expected) = reference(dir.path(), 6);
    let (body, header) = binary_request(&inputs, "netns");
    assert_matches(&expected, &outputs(&post(&infer, &body, Some(header))));

    let second_link = &hosts[1].1;
    ip(&["link", "set", second_link, "down"]);
    let started = Instant::now();
    let reply = post(&infer, &body, Some(header));
    assert!(matches!(reply.status, 503 | 504), "{}: {}", reply.status, String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains("rapid_orientation-seg-1"), "{}", reply.error());
    assert!(started.elapsed() < Duration::from_secs(7), "no request hangs past the deadline: {:?}", started.elapsed());

    ip(&["link", "set", second_link, "up"]);
    let back = Instant::now();
    loop {
        let reply = post(&infer, &body, Some(header));
        if reply.status == 200 {
            assert_matches(&expected, &outputs(&reply));
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "not serving after the link came back: {}", reply.error());
        std::thread::sleep(Duration::from_millis(200));
    }
    gateway.stop().unwrap();
}

/// A child process, killed when dropped.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}
