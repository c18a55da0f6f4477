//! The REST side of OIP v2 that every NetLess server shares: which route a path names, a model's
//! metadata, its inputs checked against its contract, the outputs a request asks for, and errors.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::pipeline::TensorMetadata;
use crate::{HEADER_LENGTH, InferRequest, Name, Tensor, datatype};

/// The one model version NetLess serves.
pub const VERSION: &str = "1";

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /v2`: server metadata.
    Server,
    /// `GET /v2/health/live`.
    Live,
    /// `GET /v2/health/ready`.
    Ready,
    /// `GET /v2/models/{name}[/versions/1]`.
    Metadata(&'a str),
    /// `GET /v2/models/{name}[/versions/1]/ready`.
    ModelReady(&'a str),
    /// `POST /v2/models/{name}[/versions/1]/infer`.
    Infer(&'a str),
}

/// A request the server refuses: its HTTP status and the message of its OIP error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// What is wrong, naming the path, model or tensor.
    pub message: String,
}

impl Refusal {
    /// A refusal with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }

    /// The OIP error body: `{"error": message}`.
    pub fn body(&self) -> Vec<u8> {
        error_body(&self.message)
    }
}

/// An OIP error body, `{"error": message}`.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "error": message })).expect("a JSON value always serialises")
}

/// The route `method` and `path` (query ignored) name; 404 or 405 otherwise.
pub fn route<'a>(method: &str, path: &'a str) -> Result<Route<'a>, Refusal> {
    let path = path.split('?').next().unwrap_or_default().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (route, wanted) = match segments.as_slice() {
        ["v2"] => (Route::Server, "GET"),
        ["v2", "health", "live"] => (Route::Live, "GET"),
        ["v2", "health", "ready"] => (Route::Ready, "GET"),
        ["v2", "models", name, rest @ ..] => {
            let rest = match rest {
                ["versions", v, rest @ ..] if *v == VERSION => rest,
                ["versions", v, ..] => return Err(Refusal::new(404, format!("model {name:?} has no version {v:?}; it serves version {VERSION}"))),
                rest => rest,
            };
            match rest {
                [] => (Route::Metadata(name), "GET"),
                ["ready"] => (Route::ModelReady(name), "GET"),
                ["infer"] => (Route::Infer(name), "POST"),
                _ => return Err(Refusal::new(404, format!("no route for {path:?}"))),
            }
        }
        _ => return Err(Refusal::new(404, format!("no route for {path:?}"))),
    };
    match method == wanted {
        true => Ok(route),
        false => Err(Refusal::new(405, format!("{path:?} takes {wanted}, not {method:?}"))),
    }
}

/// Decodes an inference request body, given its `Inference-Header-Content-Length` header if it has
/// one; every error is a 400 naming what is wrong.
pub fn decode_request(body: impl bytes::Buf, header_length: Option<&str>) -> Result<InferRequest, Refusal> {
    let header_length = match header_length {
        None => None,
        Some(value) => Some(value.trim().parse::<usize>().map_err(|_| Refusal::new(400, format!("{HEADER_LENGTH} {value:?} is not a byte count")))?),
    };
    crate::decode(body, header_length).map_err(|message| Refusal::new(400, message))
}

/// A model name usable in URLs: letters, digits, `-`, `_` and `.`; anything else becomes `_`.
pub fn model_name(name: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if clean.is_empty() { "model".into() } else { clean }
}

/// The OIP name of segment `index` of model `model` (already a [`model_name`]).
pub fn segment_name(model: &str, index: impl std::fmt::Display) -> String {
    format!("{model}-seg-{index}")
}

/// Server metadata, as `GET /v2` returns it.
pub fn server_metadata(version: &str) -> Value {
    json!({ "name": "netless", "version": version, "extensions": ["binary_tensor_data"] })
}

/// A model's metadata, as `GET /v2/models/{name}` returns it.
pub fn model_metadata(name: &str, platform: &str, inputs: &[TensorMetadata], outputs: &[TensorMetadata]) -> Value {
    json!({ "name": name, "versions": [VERSION], "platform": platform, "inputs": inputs, "outputs": outputs })
}

fn names(specs: &[TensorMetadata]) -> String {
    specs.iter().map(|s| Name(&s.name).to_string()).collect::<Vec<_>>().join(", ")
}

/// Checks `inputs` against model `model`'s: every one given once, with its datatype and shape
/// (`-1` matches any size). Returns them by name; the error is for a 400.
pub fn check_inputs(model: &str, specs: &[TensorMetadata], inputs: Vec<Tensor>) -> Result<HashMap<String, Tensor>, String> {
    let mut env = HashMap::new();
    for tensor in inputs {
        let Some(spec) = specs.iter().find(|s| s.name == tensor.name) else {
            return Err(format!("unknown input {}; model {} takes {}", Name(&tensor.name), Name(model), names(specs)));
        };
        if datatype(tensor.dtype) != spec.datatype {
            return Err(format!("input {}: datatype {}, but model {} takes {}", Name(&tensor.name), datatype(tensor.dtype), Name(model), spec.datatype));
        }
        let fits = tensor.shape.len() == spec.shape.len() && tensor.shape.iter().zip(&spec.shape).all(|(&d, &s)| s < 0 || d == s as u64);
        if !fits {
            return Err(format!("input {}: shape {:?}, but model {} takes {:?}", Name(&tensor.name), tensor.shape, Name(model), spec.shape));
        }
        if env.insert(tensor.name.clone(), tensor).is_some() {
            return Err(format!("input {} is given twice", Name(&spec.name)));
        }
    }
    if let Some(missing) = specs.iter().find(|s| !env.contains_key(&s.name)) {
        return Err(format!("missing input {} ({} {:?}) of model {}", Name(&missing.name), missing.datatype, missing.shape, Name(model)));
    }
    Ok(env)
}

/// The outputs to return and whether each goes as binary data: those the request names (an
/// unknown name is an error, for a 400), else all of them.
pub fn requested_outputs(model: &str, specs: &[TensorMetadata], request: &InferRequest) -> Result<Vec<(String, bool)>, String> {
    let Some(requested) = &request.outputs else {
        return Ok(specs.iter().map(|o| (o.name.clone(), request.binary_output)).collect());
    };
    requested
        .iter()
        .map(|r| match specs.iter().any(|o| o.name == r.name) {
            true => Ok((r.name.clone(), r.binary.unwrap_or(request.binary_output))),
            false => Err(format!("unknown output {}; model {} has outputs {}", Name(&r.name), Name(model), names(specs))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_and_without_versions() {
        assert_eq!(route("GET", "/v2/health/ready"), Ok(Route::Ready));
        assert_eq!(route("GET", "/v2/"), Ok(Route::Server));
        assert_eq!(route("POST", "/v2/models/m-seg-0/versions/1/infer"), Ok(Route::Infer("m-seg-0")));
        assert_eq!(route("GET", "/v2/models/m/ready?x=1"), Ok(Route::ModelReady("m")));
        assert_eq!(route("GET", "/v2/models/m/versions/2").unwrap_err().status, 404);
        assert_eq!(route("GET", "/v2/models/m/infer").unwrap_err().status, 405);
        assert_eq!(route("GET", "/elsewhere").unwrap_err().status, 404);
    }

    #[test]
    fn a_header_length_that_is_not_a_count_is_a_400() {
        let refusal = decode_request(&b"{}"[..], Some("ten")).unwrap_err();
        assert_eq!(refusal.status, 400);
        assert!(refusal.message.contains("\"ten\" is not a byte count"), "{}", refusal.message);
        assert_eq!(decode_request(&b"{\"inputs\":[]}"[..], None).unwrap().inputs.len(), 0);
    }

    #[test]
    fn inputs_are_checked_against_the_contract() {
        let specs = [TensorMetadata { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 2] }];
        let ok = Tensor::from_f32("x", vec![3, 2], &[0.0; 6]);
        assert!(check_inputs("m", &specs, vec![ok.clone()]).is_ok());
        let cases = [
            (vec![Tensor::from_f32("x", vec![3, 3], &[0.0; 9])], "shape"),
            (vec![Tensor::from_f32("y", vec![3, 2], &[0.0; 6])], "unknown input"),
            (vec![ok.clone(), ok], "twice"),
            (vec![], "missing input"),
        ];
        for (inputs, expected) in cases {
            let error = check_inputs("m", &specs, inputs).unwrap_err();
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
    }
}
