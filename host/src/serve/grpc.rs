//! OIP v2 over gRPC: `inference.GRPCInferenceService`, as KServe and Triton serve it
//! (`oip/proto/open_inference_grpc.proto`), for the same [`Service`] as the REST routes. Inputs come
//! as `raw_input_contents` or typed contents, outputs go as `raw_output_contents`; failures are gRPC
//! status codes carrying the REST error's message.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use super::metrics::VERSION;
use super::oip::{self, DType, InferRequest, RequestedOutput, Tensor};
use super::{ServeError, Served, Service};
use crate::plan::file::TensorSpec;

/// The messages and service generated from the proto.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The gRPC service over `service`, taking messages up to its `--max-body-size`. A larger request
/// gets RESOURCE_EXHAUSTED, as gRPC servers answer one over their receive limit; tonic, which reads
/// messages up to twice the limit here, answers OUT_OF_RANGE past that.
pub fn server(service: Arc<Service>) -> GrpcInferenceServiceServer<Grpc> {
    let limit = usize::try_from(service.options().max_body.saturating_mul(2)).unwrap_or(usize::MAX);
    GrpcInferenceServiceServer::new(Grpc(service)).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX)
}

/// `inference.GRPCInferenceService` over a [`Service`].
pub struct Grpc(Arc<Service>);

impl Grpc {
    fn find(&self, name: &str, version: &str) -> Result<&Served, Status> {
        self.0.find(name, Some(version).filter(|v| !v.is_empty())).map_err(status)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.0.is_ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        self.find(&request.name, &request.version)?;
        Ok(Response::new(ModelReadyResponse { ready: self.0.is_ready() }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse { name: "netless".into(), version: env!("CARGO_PKG_VERSION").into(), extensions: vec!["binary_tensor_data".into()] }))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = self.find(&request.name, &request.version)?;
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: vec![VERSION.into()],
            platform: "netless_wasm".into(),
            inputs: metadata(&model.inputs),
            outputs: metadata(&model.outputs),
            properties: Default::default(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let request = request.into_inner();
        let limit = self.0.options().max_body;
        if prost::Message::encoded_len(&request) as u64 > limit {
            return Err(status(ServeError::TooLarge { limit }));
        }
        let model = self.find(&request.model_name, &request.model_version)?.clone();
        let id = if request.id.is_empty() { self.0.next_request_id() } else { request.id.clone() };
        let decoded = decode(request).map_err(Status::invalid_argument)?;
        let span = tracing::info_span!("infer", id = %id, model = %model.name, protocol = "grpc");
        let outputs = tracing::Instrument::instrument(self.0.infer(&model, &id, decoded), span).await.map_err(status)?;
        let (outputs, raw): (Vec<_>, Vec<_>) = outputs
            .into_iter()
            .map(|(t, _)| {
                let shape = t.shape.iter().map(|&d| d as i64).collect();
                (InferOutputTensor { name: t.name, datatype: oip::datatype(t.dtype).into(), shape, parameters: Default::default(), contents: None }, t.data)
            })
            .unzip();
        Ok(Response::new(ModelInferResponse { model_name: model.name, model_version: VERSION.into(), id, parameters: Default::default(), outputs, raw_output_contents: raw }))
    }
}

fn metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs.iter().map(|s| TensorMetadata { name: s.name.clone(), datatype: s.dtype.wire_type().map_or("BYTES", oip::datatype).into(), shape: s.shape.iter().map(|&d| d as i64).collect() }).collect()
}

/// The request as the service takes it: every input's bytes, from `raw_input_contents` (one entry
/// per input, in order) or its typed contents.
fn decode(request: ModelInferRequest) -> Result<InferRequest, String> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(format!("{} raw_input_contents for {} inputs: send one per input, or none", raw.len(), request.inputs.len()));
    }
    let mut raw = raw.into_iter();
    let inputs = request.inputs.into_iter().map(|input| tensor(input, raw.next())).collect::<Result<Vec<_>, _>>()?;
    let outputs = (!request.outputs.is_empty()).then(|| request.outputs.into_iter().map(|o| RequestedOutput { name: o.name, binary: Some(true) }).collect());
    Ok(InferRequest { id: Some(request.id).filter(|id| !id.is_empty()), inputs, outputs, binary_output: true })
}

fn tensor(input: InferInputTensor, raw: Option<Vec<u8>>) -> Result<Tensor, String> {
    let name = input.name;
    let quoted = oip::Name(&name);
    let dtype = oip::parse_datatype(&input.datatype).ok_or_else(|| format!("input {quoted}: datatype {} is not one NetLess serves", oip::Name(&input.datatype)))?;
    let shape = input.shape.iter().map(|&d| u64::try_from(d).map_err(|_| format!("input {quoted}: dimension {d} is negative"))).collect::<Result<Vec<u64>, _>>()?;
    let data = match raw {
        Some(raw) => raw,
        None => typed(dtype, input.contents.unwrap_or_default()).map_err(|e| format!("input {quoted}: {e}"))?,
    };
    let needed = shape.iter().try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d));
    if needed != Some(data.len() as u64) {
        let needed = needed.map_or("more than can be counted".to_string(), |n| format!("{n}"));
        return Err(format!("input {quoted}: {} bytes of contents for {}{:?}, which needs {needed}", data.len(), input.datatype, shape));
    }
    Ok(Tensor { name, dtype, shape, data })
}

/// Little-endian bytes of typed contents, from the field the datatype uses.
fn typed(dtype: DType, c: InferTensorContents) -> Result<Vec<u8>, String> {
    fn narrow<T: TryFrom<i64>>(values: impl IntoIterator<Item = i64>, to: impl Fn(T) -> Vec<u8>, what: &str) -> Result<Vec<u8>, String> {
        values.into_iter().map(|v| T::try_from(v).map(&to).map_err(|_| format!("{v} does not fit {what}"))).collect::<Result<Vec<_>, _>>().map(|v| v.concat())
    }
    Ok(match dtype {
        DType::Boolean => c.bool_contents.into_iter().map(u8::from).collect(),
        DType::I8 => narrow::<i8>(c.int_contents.into_iter().map(i64::from), |v| v.to_le_bytes().to_vec(), "INT8")?,
        DType::I16 => narrow::<i16>(c.int_contents.into_iter().map(i64::from), |v| v.to_le_bytes().to_vec(), "INT16")?,
        DType::I32 => c.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => c.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U8 => narrow::<u8>(c.uint_contents.into_iter().map(i64::from), |v| vec![v], "UINT8")?,
        DType::U16 => narrow::<u16>(c.uint_contents.into_iter().map(i64::from), |v| v.to_le_bytes().to_vec(), "UINT16")?,
        DType::U32 => c.uint_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U64 => c.uint64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F32 => c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 | DType::Bf16 => return Err("FP16 and BF16 have no typed contents: send them in raw_input_contents".into()),
    })
}

/// The gRPC status of a failure, with the message REST gives it.
fn status(error: ServeError) -> Status {
    let code = match error.status().as_u16() {
        400 => Code::InvalidArgument,
        404 => Code::NotFound,
        413 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: "x".into(), datatype: datatype.into(), shape: shape.to_vec(), parameters: Default::default(), contents }
    }

    #[test]
    fn typed_contents_become_little_endian_bytes_and_must_fit_their_type() {
        let ints = InferTensorContents { int_contents: vec![1, -2], ..Default::default() };
        assert_eq!(typed(DType::I16, ints.clone()).unwrap(), [1, 0, 0xfe, 0xff]);
        assert_eq!(typed(DType::I8, InferTensorContents { int_contents: vec![1, 300], ..Default::default() }).unwrap_err(), "300 does not fit INT8");
        assert!(typed(DType::F16, ints).unwrap_err().contains("raw_input_contents"));
        let bools = InferTensorContents { bool_contents: vec![true, false], ..Default::default() };
        assert_eq!(tensor(input("BOOL", &[2], Some(bools)), None).unwrap().data, [1, 0]);
    }

    #[test]
    fn contents_that_do_not_match_their_shape_are_refused_naming_the_input() {
        let wrong = tensor(input("FP32", &[1, 2], None), Some(vec![0; 4])).unwrap_err();
        assert_eq!(wrong, "input `x`: 4 bytes of contents for FP32[1, 2], which needs 8");
        assert!(tensor(input("FP32", &[-1], None), Some(vec![])).unwrap_err().contains("dimension -1 is negative"));
        assert!(tensor(input("BYTES", &[1], None), None).unwrap_err().contains("datatype `BYTES`"));
        let huge = tensor(input("FP32", &[i64::MAX, 4], None), Some(vec![])).unwrap_err();
        assert!(huge.contains("more than can be counted"), "{huge}");
        let request = ModelInferRequest { inputs: vec![input("FP32", &[1], None)], raw_input_contents: vec![vec![0; 4], vec![0; 4]], ..Default::default() };
        assert_eq!(decode(request).unwrap_err(), "2 raw_input_contents for 1 inputs: send one per input, or none");
    }
}
