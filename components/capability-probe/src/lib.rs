//! A test guest exporting `infer-segment` that tries what a segment must not be able to do.
//!
//! `infer` ignores its inputs and returns one `u8` tensor named `report`: UTF-8 lines
//! `<attempt>: ok|denied (<detail>)`. The host's tests check that every attempt is denied.

wit_bindgen::generate!({ world: "segment", path: "../../wit" });

use exports::netless::inference::infer_segment::Guest;
use netless::inference::types::{Error, SegmentInfo, Tensor, TensorSpec, TensorType};

/// The path the host's test asks the probe to read, passed as the input tensor `path`.
const INPUT: &str = "path";

struct Probe;

fn attempt<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> String {
    match result {
        Ok(_) => format!("{what}: ok\n"),
        Err(e) => format!("{what}: denied ({e})\n"),
    }
}

impl Guest for Probe {
    fn info() -> SegmentInfo {
        SegmentInfo {
            model: "capability-probe".to_string(),
            index: 0,
            count: 1,
            inputs: vec![TensorSpec {
                name: INPUT.to_string(),
                ty: TensorType::U8,
                shape: vec![None],
            }],
            outputs: vec![TensorSpec {
                name: "report".to_string(),
                ty: TensorType::U8,
                shape: vec![None],
            }],
        }
    }

    fn infer(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let path = inputs
            .iter()
            .find(|t| t.name == INPUT)
            .map(|t| String::from_utf8_lossy(&t.data).into_owned())
            .ok_or_else(|| Error::InvalidInput(format!("missing input `{INPUT}`")))?;
        let mut report = String::new();
        report += &attempt("read file", std::fs::read(&path));
        report += &attempt("list root", std::fs::read_dir("/"));
        report += &attempt("tcp connect", std::net::TcpStream::connect("127.0.0.1:9"));
        report += &attempt("tcp bind", std::net::TcpListener::bind("127.0.0.1:0"));
        report += &attempt("udp bind", std::net::UdpSocket::bind("127.0.0.1:0"));
        let vars = std::env::vars().count() + std::env::args().count();
        report += &attempt(
            "env and args",
            if vars == 0 { Err("none") } else { Ok(vars) },
        );
        let data = report.into_bytes();
        Ok(vec![Tensor {
            name: "report".to_string(),
            ty: TensorType::U8,
            shape: vec![data.len() as u64],
            data,
        }])
    }
}

export!(Probe);
