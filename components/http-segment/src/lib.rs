//! One segment as a Spin HTTP component: OIP v2 over `wasi:http/incoming-handler`, in front of the
//! `infer-segment` it imports. `netless build --spin` composes each segment into a copy of it.
//!
//! The segment is served as model `{model}-seg-{index}`; tensors come as JSON or binary, and the
//! segment's own errors keep their kind: invalid input is a 400, the rest a 500.

wit_bindgen::generate!({ world: "http-segment", path: "../../wit" });

use netless::inference::infer_segment;
use netless::inference::types as wit;
use netless_oip::pipeline::TensorMetadata;
use netless_oip::rest::{self, Refusal, Route};
use netless_oip::{DType, Tensor, HEADER_LENGTH};
use netless_oip::wasi_body;
use spin_sdk::http::{IncomingRequest, Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle(incoming: IncomingRequest) -> Response {
    match wasi_body::read_request(incoming).and_then(|request| serve(&request)) {
        Ok(response) => response,
        Err(refusal) => json(refusal.status, refusal.body()),
    }
}


fn serve(request: &Request) -> Result<Response, Refusal> {
    let info = infer_segment::info();
    let name = rest::segment_name(&rest::model_name(&info.model), info.index);
    let route = rest::route(&request.method().to_string(), request.path())?;
    let model = match route {
        Route::Server => return Ok(json(200, to_vec(&rest::server_metadata(env!("CARGO_PKG_VERSION"))))),
        Route::Live | Route::Ready => return Ok(Response::new(200, ())),
        Route::Metadata(m) | Route::ModelReady(m) | Route::Infer(m) => m,
    };
    if model != name {
        return Err(Refusal::new(404, format!("unknown model `{model}`; this component serves `{name}`")));
    }
    let inputs: Vec<TensorMetadata> = info.inputs.iter().map(metadata).collect();
    let outputs: Vec<TensorMetadata> = info.outputs.iter().map(metadata).collect();
    match route {
        Route::Metadata(_) => Ok(json(200, to_vec(&rest::model_metadata(&name, "netless_wasm", &inputs, &outputs)))),
        Route::ModelReady(_) => Ok(Response::new(200, ())),
        _ => infer(request, &name, &inputs, &outputs),
    }
}

fn infer(request: &Request, name: &str, inputs: &[TensorMetadata], outputs: &[TensorMetadata]) -> Result<Response, Refusal> {
    let header_length = request.header(HEADER_LENGTH).map(|v| v.as_str().unwrap_or("(not text)"));
    let bad = |message| Refusal::new(400, message);
    let decoded = rest::decode_request(request.body(), header_length)?;
    let wanted = rest::requested_outputs(name, outputs, &decoded).map_err(bad)?;
    let given = rest::check_inputs(name, inputs, decoded.inputs).map_err(bad)?;
    let given: Vec<wit::Tensor> = given.into_values().map(to_wit).collect();
    let mut results: Vec<Tensor> = match infer_segment::infer(&given) {
        Ok(results) => results.into_iter().map(from_wit).collect(),
        Err(wit::Error::InvalidInput(m)) => return Err(Refusal::new(400, format!("{name}: invalid input: {m}"))),
        Err(wit::Error::Unsupported(m)) => return Err(Refusal::new(500, format!("{name}: unsupported: {m}"))),
        Err(wit::Error::TooLarge(m)) => return Err(Refusal::new(500, format!("{name}: too large: {m}"))),
        Err(wit::Error::Internal(m)) => return Err(Refusal::new(500, format!("{name}: internal error: {m}"))),
    };
    let mut chosen = Vec::with_capacity(wanted.len());
    for (output, binary) in wanted {
        let at = results
            .iter()
            .position(|t| t.name == output)
            .ok_or_else(|| Refusal::new(500, format!("{name} did not return its output `{output}`")))?;
        chosen.push((results.swap_remove(at), binary));
    }
    let id = decoded.id.as_deref();
    let encoded = netless_oip::encode(name, rest::VERSION, id, &chosen);
    let mut builder = Response::builder();
    builder.status(200);
    if let Some(n) = encoded.header_length {
        builder.header(HEADER_LENGTH, n.to_string());
    }
    builder.header("content-type", encoded.content_type());
    Ok(builder.body(encoded.body).build())
}

fn json(status: u16, body: Vec<u8>) -> Response {
    Response::builder().status(status).header("content-type", "application/json").body(body).build()
}

fn to_vec(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serialises")
}

fn metadata(spec: &wit::TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: spec.name.clone(),
        datatype: netless_oip::datatype(dtype(spec.ty)).to_string(),
        shape: spec.shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect(),
    }
}

fn dtype(t: wit::TensorType) -> DType {
    use wit::TensorType as W;
    match t {
        W::F16 => DType::F16,
        W::F32 => DType::F32,
        W::F64 => DType::F64,
        W::Bf16 => DType::Bf16,
        W::U8 => DType::U8,
        W::I8 => DType::I8,
        W::U16 => DType::U16,
        W::I16 => DType::I16,
        W::U32 => DType::U32,
        W::I32 => DType::I32,
        W::U64 => DType::U64,
        W::I64 => DType::I64,
        W::Boolean => DType::Boolean,
    }
}

fn tensor_type(t: DType) -> wit::TensorType {
    use wit::TensorType as W;
    match t {
        DType::F16 => W::F16,
        DType::F32 => W::F32,
        DType::F64 => W::F64,
        DType::Bf16 => W::Bf16,
        DType::U8 => W::U8,
        DType::I8 => W::I8,
        DType::U16 => W::U16,
        DType::I16 => W::I16,
        DType::U32 => W::U32,
        DType::I32 => W::I32,
        DType::U64 => W::U64,
        DType::I64 => W::I64,
        DType::Boolean => W::Boolean,
    }
}

fn to_wit(t: Tensor) -> wit::Tensor {
    wit::Tensor { name: t.name, ty: tensor_type(t.dtype), shape: t.shape, data: t.data }
}

fn from_wit(t: wit::Tensor) -> Tensor {
    Tensor { name: t.name, dtype: dtype(t.ty), shape: t.shape, data: t.data }
}
