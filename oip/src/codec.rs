//! The Open Inference Protocol v2 REST wire format (KServe / Triton): inference requests and
//! responses as JSON tensors or with the binary tensor data extension.
//!
//! A binary request or response is a JSON header followed by raw tensor bytes; the header's length
//! is in the `Inference-Header-Content-Length` HTTP header, and each binary tensor says its size in
//! its `binary_data_size` parameter, in the order the tensors appear in the JSON.

use bytes::{Buf, BufMut};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::{DType, Tensor};

/// The HTTP header giving the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    /// The request's `id`, returned in the response.
    pub id: Option<String>,
    /// The input tensors, in request order.
    pub inputs: Vec<Tensor>,
    /// The outputs asked for, if the request names them (otherwise all of them).
    pub outputs: Option<Vec<RequestedOutput>>,
    /// The request-level `binary_data_output` parameter: send every output as binary data.
    pub binary_output: bool,
}

/// One output named in the request.
#[derive(Debug)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Whether it is wanted as binary data (its `binary_data` parameter).
    pub binary: Option<bool>,
}

/// An encoded response body, and the JSON header's length when binary tensors follow it.
#[derive(Debug)]
pub struct Encoded {
    /// The whole body.
    pub body: Vec<u8>,
    /// The JSON part's length, for `Inference-Header-Content-Length`, if binary data follows.
    pub header_length: Option<usize>,
}

impl Encoded {
    /// Its `Content-Type`: JSON, or octets when binary tensors follow the JSON.
    pub fn content_type(&self) -> &'static str {
        match self.header_length {
            Some(_) => "application/octet-stream",
            None => "application/json",
        }
    }
}

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The OIP name of a tensor type.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::Boolean => "BOOL",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::F16 => "FP16",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::Bf16 => "BF16",
    }
}

/// The tensor type an OIP datatype name (`FP32`, `INT64`...) names.
pub fn parse_datatype(name: &str) -> Option<DType> {
    [
        DType::Boolean,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::F32,
        DType::F64,
        DType::Bf16,
    ]
    .into_iter()
    .find(|&d| datatype(d) == name)
}

/// Decodes a request body. `header_length` is the `Inference-Header-Content-Length` header, if
/// any; the error says what is wrong with the request, for a 400 response.
///
/// The body is contiguous (`&[u8]`) or in the chunks it arrived in (any [`Buf`]): each binary tensor is
/// copied once, straight from the body into its own buffer.
pub fn decode(body: impl Buf, header_length: Option<usize>) -> Result<InferRequest, String> {
    let (json, mut binary) = split(body, header_length)?;
    let request: RequestJson =
        serde_json::from_slice(&json).map_err(|e| format!("malformed inference request JSON: {e}"))?;
    let id = match request.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let dtype = parse_datatype(&input.datatype).ok_or_else(|| {
            format!(
                "input {}: datatype {} is not supported (NetLess serves numeric and BOOL tensors)",
                Name(&input.name),
                Name(&input.datatype)
            )
        })?;
        let elements = element_count(&input.shape)
            .ok_or_else(|| format!("input {}: shape {:?} is too large", Name(&input.name), input.shape))?;
        let expected = elements.checked_mul(dtype.size() as u64);
        let data = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(_), Some(_)) => {
                return Err(format!("input {} has both `data` and `binary_data_size`", Name(&input.name)));
            }
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .ok_or_else(|| format!("input {}: binary_data_size {:?} is not a byte count", Name(&input.name), size.to_string()))?;
                if Some(size) != expected {
                    return Err(format!(
                        "input {}: binary_data_size is {size} bytes, but {:?} of {} needs {}",
                        Name(&input.name),
                        input.shape,
                        Name(&input.datatype),
                        expected.map_or("more than 2^64".into(), |e| e.to_string())
                    ));
                }
                if size > binary.remaining() as u64 {
                    return Err(format!(
                        "input {}: binary_data_size is {size} bytes but only {} binary bytes are left in the body",
                        Name(&input.name),
                        binary.remaining()
                    ));
                }
                take(&mut binary, size as usize)
            }
            (None, Some(values)) => json_to_bytes(&input.name, dtype, elements, &values)?,
            (None, None) => return Err(format!("input {} has no `data` and no `binary_data_size`", Name(&input.name))),
        };
        inputs.push(Tensor {
            name: input.name,
            dtype,
            shape: input.shape,
            data,
        });
    }
    if binary.has_remaining() {
        return Err(format!(
            "{} bytes of binary data follow the JSON but no input claims them",
            binary.remaining()
        ));
    }
    let outputs = request.outputs.map(|outputs| {
        outputs
            .into_iter()
            .map(|o| RequestedOutput {
                binary: o.parameters.get("binary_data").and_then(Value::as_bool),
                name: o.name,
            })
            .collect()
    });
    let binary_output = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(InferRequest {
        id,
        inputs,
        outputs,
        binary_output,
    })
}

/// The JSON part of `body` (the first `header_length` bytes, or all of it), and the binary part after it.
fn split<B: Buf>(mut body: B, header_length: Option<usize>) -> Result<(Vec<u8>, B), String> {
    let n = match header_length {
        Some(n) if n > body.remaining() => return Err(format!("{HEADER_LENGTH} is {n} but the body has only {} bytes", body.remaining())),
        Some(n) => n,
        None => body.remaining(),
    };
    Ok((take(&mut body, n), body))
}

/// The next `n` bytes of `body` (which has them), copied once into a buffer of their own.
fn take(body: &mut impl Buf, n: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(n);
    data.put(body.take(n));
    data
}

fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Row-major elements of `values`, flat or nested, as little-endian bytes of `dtype`.
fn json_to_bytes(name: &str, dtype: DType, elements: u64, values: &Value) -> Result<Vec<u8>, String> {
    let mut flat = Vec::new();
    flatten(values, &mut flat);
    if flat.len() as u64 != elements {
        return Err(format!(
            "input {}: {} values in `data`, but its shape needs {elements}",
            Name(name),
            flat.len()
        ));
    }
    let mut bytes = Vec::with_capacity(flat.len() * dtype.size());
    for value in flat {
        let bad = || {
            let shown = if value.is_object() { "an object".to_string() } else { value.to_string() };
            format!("input {}: {shown} is not a {} value", Name(name), datatype(dtype))
        };
        let int = || value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from)).ok_or_else(bad);
        let float = || value.as_f64().ok_or_else(bad);
        macro_rules! int_as {
            ($t:ty) => {{
                let v = int()?;
                let v = <$t>::try_from(v).map_err(|_| format!("input {}: {v} is out of range for {}", Name(name), datatype(dtype)))?;
                bytes.extend_from_slice(&v.to_le_bytes());
            }};
        }
        match dtype {
            DType::Boolean => {
                let v = match value {
                    Value::Bool(b) => *b,
                    _ => match int()? {
                        0 => false,
                        1 => true,
                        _ => return Err(bad()),
                    },
                };
                bytes.push(v as u8);
            }
            DType::U8 => int_as!(u8),
            DType::U16 => int_as!(u16),
            DType::U32 => int_as!(u32),
            DType::U64 => int_as!(u64),
            DType::I8 => int_as!(i8),
            DType::I16 => int_as!(i16),
            DType::I32 => int_as!(i32),
            DType::I64 => int_as!(i64),
            DType::F16 => bytes.extend_from_slice(&half::f16::from_f64(float()?).to_le_bytes()),
            DType::Bf16 => bytes.extend_from_slice(&half::bf16::from_f64(float()?).to_le_bytes()),
            DType::F32 => bytes.extend_from_slice(&(float()? as f32).to_le_bytes()),
            DType::F64 => bytes.extend_from_slice(&float()?.to_le_bytes()),
        }
    }
    Ok(bytes)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// A tensor's elements as a JSON array, each in its own type: f32 in its shortest form, and
/// non-finite floats as `null` (JSON has no NaN).
struct Elements<'a>(&'a Tensor);

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let chunks = tensor.data.chunks_exact(tensor.dtype.size());
        let mut seq = serializer.serialize_seq(Some(chunks.len()))?;
        macro_rules! each {
            ($t:ty) => {
                for c in chunks {
                    seq.serialize_element(&<$t>::from_le_bytes(c.try_into().expect("chunk of the type's size")))?;
                }
            };
        }
        match tensor.dtype {
            DType::Boolean => {
                for c in chunks {
                    seq.serialize_element(&(c[0] != 0))?;
                }
            }
            DType::U8 => each!(u8),
            DType::U16 => each!(u16),
            DType::U32 => each!(u32),
            DType::U64 => each!(u64),
            DType::I8 => each!(i8),
            DType::I16 => each!(i16),
            DType::I32 => each!(i32),
            DType::I64 => each!(i64),
            DType::F16 => {
                for c in chunks {
                    seq.serialize_element(&half::f16::from_le_bytes([c[0], c[1]]).to_f32())?;
                }
            }
            DType::Bf16 => {
                for c in chunks {
                    seq.serialize_element(&half::bf16::from_le_bytes([c[0], c[1]]).to_f32())?;
                }
            }
            DType::F32 => each!(f32),
            DType::F64 => each!(f64),
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputOut<'a>>,
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Elements<'a>>,
}

/// Encodes a response: each output with whether it goes as binary data.
pub fn encode(model: &str, version: &str, id: Option<&str>, outputs: &[(Tensor, bool)]) -> Encoded {
    let binary = outputs.iter().filter(|(_, as_binary)| *as_binary).map(|(tensor, _)| &tensor.data[..]);
    append(encode_header(model, version, id, outputs), binary)
}

/// The JSON part of [`encode`]'s response alone: its binary part is the data of the outputs sent as
/// binary, in order, for a caller that sends them as they are rather than copied after the JSON.
/// `header_length` is set as `encode` sets it.
pub fn encode_header(model: &str, version: &str, id: Option<&str>, outputs: &[(Tensor, bool)]) -> Encoded {
    let mut binary_bytes = 0;
    let outputs = outputs
        .iter()
        .map(|(tensor, as_binary)| {
            let mut output = OutputOut { name: &tensor.name, datatype: datatype(tensor.dtype), shape: &tensor.shape, parameters: None, data: None };
            if *as_binary {
                output.parameters = Some(json!({ "binary_data_size": tensor.data.len() }));
                binary_bytes += tensor.data.len();
            } else {
                output.data = Some(Elements(tensor));
            }
            output
        })
        .collect();
    let response = ResponseOut { model_name: model, model_version: version, id, outputs };
    let body = serde_json::to_vec(&response).expect("a response always serialises");
    let header_length = (binary_bytes > 0).then_some(body.len());
    Encoded { body, header_length }
}

/// Encodes a request for `inputs` with the binary extension, asking for binary outputs: how one
/// NetLess host calls a segment served by another.
pub fn encode_request(id: &str, inputs: &[Tensor]) -> Encoded {
    append(encode_request_header(id, inputs), inputs.iter().map(|t| &t.data[..]))
}

/// The JSON part of [`encode_request`]'s request alone: the inputs' data follows it, in order.
pub fn encode_request_header(id: &str, inputs: &[Tensor]) -> Encoded {
    let specs: Vec<Value> = inputs
        .iter()
        .map(|t| {
            json!({
                "name": t.name, "shape": t.shape, "datatype": datatype(t.dtype),
                "parameters": { "binary_data_size": t.data.len() },
            })
        })
        .collect();
    let request = json!({ "id": id, "inputs": specs, "parameters": { "binary_data_output": true } });
    let body = serde_json::to_vec(&request).expect("a JSON value always serialises");
    Encoded { header_length: Some(body.len()), body }
}

/// `header` with `binary` appended, copied once into a body of its exact size.
fn append<'a>(header: Encoded, binary: impl Iterator<Item = &'a [u8]> + Clone) -> Encoded {
    let mut body = header.body;
    body.reserve_exact(binary.clone().map(<[u8]>::len).sum());
    binary.for_each(|data| body.extend_from_slice(data));
    Encoded { body, header_length: header.header_length }
}

#[derive(Deserialize)]
struct ResponseJson {
    outputs: Vec<InputJson>,
}

/// Decodes a response's output tensors, JSON or binary; the error says what is wrong with it.
/// The body is contiguous or in chunks, as for [`decode`].
pub fn decode_response(body: impl Buf, header_length: Option<usize>) -> Result<Vec<Tensor>, String> {
    let (json, mut binary) = split(body, header_length)?;
    let response: ResponseJson = serde_json::from_slice(&json).map_err(|e| format!("malformed inference response JSON: {e}"))?;
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let dtype = parse_datatype(&output.datatype).ok_or_else(|| format!("output {}: datatype {} is not supported", Name(&output.name), Name(&output.datatype)))?;
        let elements = element_count(&output.shape).ok_or_else(|| format!("output {}: shape {:?} is too large", Name(&output.name), output.shape))?;
        let data = match (output.parameters.get("binary_data_size").and_then(Value::as_u64), output.data) {
            (Some(size), _) => {
                if Some(size) != elements.checked_mul(dtype.size() as u64) || size > binary.remaining() as u64 {
                    return Err(format!("output {}: binary_data_size {size} does not fit its shape {:?} or the body", Name(&output.name), output.shape));
                }
                take(&mut binary, size as usize)
            }
            (None, Some(values)) => json_to_bytes(&output.name, dtype, elements, &values)?,
            (None, None) => return Err(format!("output {} has no data", Name(&output.name))),
        };
        outputs.push(Tensor { name: output.name, dtype, shape: output.shape, data });
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_inputs_round_trip() {
        let values = [1.5f32, -2.0, 3.25, 0.0];
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = br#"{"inputs":[{"name":"a","shape":[2,2],"datatype":"FP32","data":[[1.5,-2.0],[3.25,0]]},
            {"name":"b","shape":[4],"datatype":"FP32","parameters":{"binary_data_size":16}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&raw);
        let request = decode(&body[..], Some(header.len())).unwrap();
        assert_eq!(request.inputs[0].data, raw);
        assert_eq!(request.inputs[1].data, raw);
        assert_eq!(request.outputs.unwrap()[0].binary, Some(true));

        let tensor = Tensor::from_f32("y", vec![4], &values);
        let encoded = encode("m", "1", Some("7"), &[(tensor.clone(), true)]);
        let n = encoded.header_length.unwrap();
        assert_eq!(&encoded.body[n..], &raw[..]);
        let json: Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
        assert_eq!(json["id"], "7");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 16);
        let encoded = encode("m", "1", None, &[(tensor, false)]);
        let json: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(json["outputs"][0]["data"], json!([1.5, -2.0, 3.25, 0.0]));
    }

    #[test]
    fn names_from_outside_are_quoted_unambiguously() {
        assert_eq!(Name("input_ids").to_string(), "`input_ids`");
        assert_eq!(Name("a`b").to_string(), r#""a`b""#);
        assert_eq!(Name("x\ny").to_string(), r#""x\ny""#);
        let body = br#"{"inputs":[{"name":"k`x","shape":[1],"datatype":"FP32"}]}"#;
        let err = decode(&body[..], None).err().unwrap();
        assert_eq!(err, r#"input "k`x" has no `data` and no `binary_data_size`"#);
    }

    #[test]
    fn json_outputs_are_written_in_their_own_type() {
        let tensor = Tensor::from_f32("y", vec![3], &[0.1, f32::NAN, -2.5]);
        let half = Tensor { name: "h".into(), dtype: DType::F16, shape: vec![1], data: half::f16::from_f32(0.5).to_le_bytes().to_vec() };
        let encoded = encode("m", "1", None, &[(tensor, false), (half, false)]);
        let text = String::from_utf8(encoded.body).unwrap();
        assert!(text.contains(r#""data":[0.1,null,-2.5]"#), "{text}");
        assert!(text.contains(r#""data":[0.5]"#), "{text}");
        assert!(!text.contains(r#""id""#), "no id was given: {text}");
    }

    #[test]
    fn requests_and_responses_between_hosts_round_trip() {
        let tensors = vec![Tensor::from_f32("a", vec![2], &[1.0, 2.0]), Tensor::from_f32("b", vec![1], &[3.0])];
        let encoded = encode_request("r", &tensors);
        let request = decode(&encoded.body[..], encoded.header_length).unwrap();
        assert_eq!(request.inputs, tensors);
        assert!(request.binary_output);
        let (a, rest) = encoded.body.split_at(10);
        let (b, c) = rest.split_at(rest.len() - 6);
        let chunked = decode(a.chain(b).chain(c), encoded.header_length).unwrap();
        assert_eq!(chunked.inputs, tensors, "a body in chunks, split inside the JSON and inside a tensor, decodes the same");
        let response = encode("m", "1", Some("r"), &[(tensors[0].clone(), true), (tensors[1].clone(), false)]);
        assert_eq!(decode_response(&response.body[..], response.header_length).unwrap(), tensors);
        assert!(decode_response(&response.body[..response.body.len() - 1], response.header_length).is_err());
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases: [(&[u8], Option<usize>, &str); 7] = [
            (b"{", None, "malformed"),
            (br#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","data":[1,2]}]}"#, None, "2 values"),
            (br#"{"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","data":["x"]}]}"#, None, "BYTES"),
            (br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT8","data":[300]}]}"#, None, "out of range"),
            (br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, Some(200), "body has only"),
            (br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#, None, "needs 4"),
            (br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32"}]}"#, None, "no `data`"),
        ];
        for (body, header, expected) in cases {
            let error = decode(body, header).unwrap_err();
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
    }
}

/// A name from outside (a tensor's, a datatype's) as an error message shows it: in backticks, or
/// quoted and escaped as a Rust string when it holds a backtick or a control character, so the
/// message stays unambiguous whatever the name.
pub struct Name<'a>(pub &'a str);

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.chars().any(|c| c == '`' || c.is_control()) {
            true => write!(f, "{:?}", self.0),
            false => write!(f, "`{}`", self.0),
        }
    }
}
