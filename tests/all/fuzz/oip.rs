//! OIP v2 requests (routes, the header-length header, JSON and binary bodies, the contract check)
//! and responses, as a server and a gateway receive them.

use netless_fuzz::{Target, fuzz, mutate};
use netless_oip::pipeline::TensorMetadata;
use netless_oip::{DType, Tensor, decode_response, encode, encode_request, rest};

use super::corpus;

const DICTIONARY: &[&[u8]] = &[
    b"\"inputs\"", b"\"outputs\"", b"\"name\"", b"\"shape\"", b"\"datatype\"", b"\"data\"", b"\"parameters\"",
    b"\"binary_data_size\"", b"\"binary_data\"", b"\"binary_data_output\"", b"\"id\"", b"\"FP32\"", b"\"FP16\"",
    b"\"BF16\"", b"\"BOOL\"", b"\"INT64\"", b"\"UINT8\"", b"\"BYTES\"", b"/v2/models/", b"/versions/1", b"/infer",
    b"/ready", b"POST", b"GET", b"[[", b"]]", b"null", b"true", b"1e999", b"-1", b"18446744073709551615",
];

fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
    TensorMetadata { name: name.into(), datatype: datatype.into(), shape: shape.to_vec() }
}

/// An input as the request target reads it: `METHOD PATH`, the header-length header (`-` for
/// none), then the body.
fn framed(route: &str, header: Option<usize>, body: &[u8]) -> Vec<u8> {
    let header = header.map_or("-".to_string(), |n| n.to_string());
    [format!("{route}\n{header}\n").into_bytes(), body.to_vec()].concat()
}

fn unframe(input: &[u8]) -> Option<(&str, Option<&str>, &[u8])> {
    let mut parts = input.splitn(3, |&b| b == b'\n');
    let route = std::str::from_utf8(parts.next()?).ok()?;
    let header = std::str::from_utf8(parts.next()?).ok()?;
    let body = parts.next().unwrap_or_default();
    Some((route, (header != "-").then_some(header), body))
}

/// Mutates the JSON part of a framed input (the whole body, or its header part), keeping the
/// header length right half of the time.
fn mutate_json_part(input: &[u8], rng: &mut netless_fuzz::Rng) -> Option<Vec<u8>> {
    let (route, header, body) = unframe(input)?;
    let split = header.and_then(|h| h.trim().parse::<usize>().ok()).filter(|&n| n <= body.len()).unwrap_or(body.len());
    let (json, binary) = body.split_at(split);
    let json = mutate::json(json, rng)?;
    let header = match (header, rng.chance(2)) {
        (None, _) => None,
        (Some(_), true) => Some(json.len()),
        (Some(_), false) => Some((json.len() + rng.below(9)).saturating_sub(4)),
    };
    Some(framed(route, header, &[json, binary.to_vec()].concat()))
}

fn seeds() -> Vec<Vec<u8>> {
    let x = Tensor::from_f32("x", vec![2, 4], &[0.5, -1.0, 2.0, 3.5, 0.0, 1e-3, 7.0, -2.5]);
    let mask = Tensor { name: "mask".into(), dtype: DType::Boolean, shape: vec![2], data: vec![1, 0] };
    let ids = Tensor { name: "ids".into(), dtype: DType::I64, shape: vec![3], data: [3i64, -1, 9].iter().flat_map(|v| v.to_le_bytes()).collect() };
    let binary = encode_request("seed", &[x, mask, ids]);
    let json = br#"{"id":"a","inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]},{"name":"mask","shape":[2],"datatype":"BOOL","data":[true,false]},{"name":"ids","shape":[1],"datatype":"INT64","data":[5]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false}}"#;
    vec![
        framed("POST /v2/models/m/infer", binary.header_length, &binary.body),
        framed("POST /v2/models/m/versions/1/infer", None, json),
        framed("GET /v2/models/m/ready", None, b""),
    ]
}

/// Tensors decoded from a request or response hold exactly their shape's bytes.
fn assert_sized(tensors: &[Tensor]) {
    for t in tensors {
        let elements: u64 = t.shape.iter().product();
        assert_eq!(t.data.len() as u64, elements * t.dtype.size() as u64, "tensor `{}` {:?} {:?}", t.name, t.dtype, t.shape);
    }
}

#[test]
fn oip_requests() {
    let specs = [spec("x", "FP32", &[-1, 4]), spec("mask", "BOOL", &[2]), spec("ids", "INT64", &[-1])];
    let outputs = [spec("y", "FP32", &[-1, 2])];
    let target = Target { name: "oip-request", corpus: corpus("oip-request"), seeds: seeds(), dictionary: DICTIONARY, mutators: vec![&mutate_json_part] };
    let report = fuzz(target, |input| {
        let (route, header, body) = unframe(input).ok_or("not framed")?;
        let (method, path) = route.split_once(' ').unwrap_or((route, ""));
        rest::route(method, path).map_err(|r| format!("{} {}", r.status, r.message))?;
        let request = rest::decode_request(body, header).map_err(|r| format!("{} {}", r.status, r.message))?;
        assert_sized(&request.inputs);
        let again = encode_request("again", &request.inputs);
        let decoded = rest::decode_request(&again.body[..], again.header_length.map(|n| n.to_string()).as_deref()).expect("an encoded request decodes");
        assert_eq!(decoded.inputs, request.inputs, "requests round-trip through the binary encoding");
        rest::requested_outputs("m", &outputs, &request)?;
        let env = rest::check_inputs("m", &specs, request.inputs)?;
        assert_eq!(env.len(), specs.len());
        Ok(())
    });
    assert!(report.executions > 100 && report.verdicts > 5, "{report:?}");
}

#[test]
fn oip_responses() {
    let y = Tensor::from_f32("y", vec![1, 2], &[0.25, -4.0]);
    let labels = Tensor { name: "labels".into(), dtype: DType::I64, shape: vec![2], data: [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect() };
    let binary = encode("m", "1", Some("r"), &[(y.clone(), true), (labels.clone(), true)]);
    let json = encode("m", "1", None, &[(y, false), (labels, false)]);
    let seeds = vec![framed("", binary.header_length, &binary.body), framed("", None, &json.body)];
    let target = Target { name: "oip-response", corpus: corpus("oip-response"), seeds, dictionary: DICTIONARY, mutators: vec![&mutate_json_part] };
    let report = fuzz(target, |input| {
        let (_, header, body) = unframe(input).ok_or("not framed")?;
        let header = header.map(|h| h.trim().parse::<usize>().map_err(|e| e.to_string())).transpose()?;
        let outputs = decode_response(body, header)?;
        assert_sized(&outputs);
        let again = encode("m", "1", None, &outputs.iter().map(|t| (t.clone(), true)).collect::<Vec<_>>());
        assert_eq!(decode_response(&again.body[..], again.header_length).expect("an encoded response decodes"), outputs, "responses round-trip");
        Ok(())
    });
    assert!(report.executions > 100 && report.verdicts > 5, "{report:?}");
}
