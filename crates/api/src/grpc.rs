//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, crates/api/proto):
//! the same model, tensors and parameters as over HTTP ([`crate::oip`]), on its own port
//! (`--grpc-port`). A role gives a [`Backend`] (`serve`: its inference; the gateway: forwarding
//! with its retries), so every door leads to the same request path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName};
use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};

use crate::detect::{DetectResponse, RawDetect};
use crate::http::error::ApiError;
use crate::http::Shutdown;
use crate::oip;
use crate::otel::{self, Otel, Traced};

#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// The gRPC door's port, where a role has one.
#[derive(clap::Args, Debug, Clone)]
pub struct GrpcArgs {
    /// Also answer the Open Inference Protocol over gRPC on this port (same address as --listen;
    /// 0: any free port; absent: no gRPC)
    #[arg(long, env = "BLIPSERVE_GRPC_PORT")]
    pub grpc_port: Option<u16>,
}

impl GrpcArgs {
    /// Binds the gRPC listener (when asked for) and serves `backend` on it; says where. It stops
    /// accepting calls when the HTTP listener does (`draining` set, then `shutdown.drain_delay`),
    /// and [`Running::finish`] waits for the calls in flight.
    pub async fn start<B: Backend>(
        &self,
        listen: std::net::IpAddr,
        backend: Arc<B>,
        otel: &Otel,
        (draining, shutdown): (Arc<AtomicBool>, Shutdown),
    ) -> anyhow::Result<Running> {
        let Some(port) = self.grpc_port else { return Ok(Running(None)) };
        let addr = std::net::SocketAddr::new(listen, port);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        eprintln!("blipserve: grpc listening on {}", listener.local_addr()?);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let otel = otel.clone();
        let stop = async move {
            while !draining.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(shutdown.drain_delay).await;
        };
        let server = tokio::spawn(async move {
            let server = tonic::transport::Server::builder().add_service(service(backend, otel));
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "the gRPC server stopped");
            }
        });
        Ok(Running(Some((server, shutdown.grace))))
    }
}

/// The gRPC server, while it runs.
pub struct Running(Option<(tokio::task::JoinHandle<()>, Duration)>);

impl Running {
    /// Waits, at most the shutdown's grace period, until the calls in flight are answered.
    pub async fn finish(self) {
        if let Some((server, grace)) = self.0 {
            if tokio::time::timeout(grace, server).await.is_err() {
                tracing::warn!("shutdown grace period over with gRPC calls still in flight");
            }
        }
    }
}

/// The server span of an `infer` call over gRPC.
const INFER_SPAN: &str = "inference.GRPCInferenceService/ModelInfer";

/// What a role answers through gRPC.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The served model's id (the gateway's: as a worker said it).
    async fn model_id(&self) -> Option<String>;
    fn ready(&self) -> bool;
    /// Checks and answers a detect request. `headers` are the call's metadata that mean the
    /// same over HTTP (`authorization`, the trace context); `traced` is its server span.
    async fn answer(
        &self,
        raw: RawDetect,
        request_id: String,
        headers: HeaderMap,
        traced: Traced,
    ) -> Result<DetectResponse, Status>;
}

pub struct Service<B> {
    backend: Arc<B>,
    otel: Otel,
}

/// The tonic service over `backend`.
pub fn service<B: Backend>(backend: Arc<B>, otel: Otel) -> GrpcInferenceServiceServer<Service<B>> {
    GrpcInferenceServiceServer::new(Service { backend, otel })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// An [`ApiError`] as a gRPC status, by the HTTP status it maps to.
pub fn status(e: &ApiError) -> Status {
    status_of(e.status().as_u16(), e.to_string())
}

/// The gRPC status for an HTTP status and its message.
pub fn status_of(http: u16, message: String) -> Status {
    match http {
        400 | 413 | 415 => Status::invalid_argument(message),
        401 => Status::unauthenticated(message),
        404 => Status::not_found(message),
        409 => Status::aborted(message),
        429 => Status::resource_exhausted(message),
        503 => Status::unavailable(message),
        504 => Status::deadline_exceeded(message),
        _ => Status::internal(message),
    }
}

fn bad(message: String) -> Status {
    status(&ApiError::BadInferRequest(message))
}

impl<B: Backend> Service<B> {
    async fn known_model(&self, name: &str) -> Result<String, Status> {
        match self.backend.model_id().await {
            Some(id) if id == name => Ok(id),
            Some(_) => Err(status(&ApiError::UnknownModel(name.to_string()))),
            None => Err(status(&ApiError::NoUpstream)),
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> GrpcInferenceService for Service<B> {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.backend.ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        self.known_model(&request.get_ref().name).await?;
        Ok(Response::new(ModelReadyResponse { ready: self.backend.ready() }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "blipserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["binary_tensor_data".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let name = self.known_model(&request.get_ref().name).await?;
        let tensor = |name: &str, datatype: &str, shape: i64| TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![shape],
        };
        Ok(Response::new(ModelMetadataResponse {
            name,
            versions: vec!["1".into()],
            platform: "blipserve".into(),
            inputs: vec![
                tensor(oip::IMAGE, "BYTES", 1),
                tensor(oip::QUESTION, "BYTES", -1),
                tensor(oip::BEHAVIOR, "BYTES", -1),
            ],
            outputs: vec![tensor(oip::PROBABILITY, "FP32", -1), tensor(oip::ANSWER, "BYTES", -1)],
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let metadata = request.metadata().clone().into_headers();
        let headers: HeaderMap = ["authorization", "traceparent", "tracestate"]
            .into_iter()
            .filter_map(|name| Some((HeaderName::from_static(name), metadata.get(name)?.clone())))
            .collect();
        let request_id = metadata.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let request = request.into_inner();
        let request_id = request_id
            .or_else(|| (!request.id.is_empty()).then(|| request.id.clone()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let traced = self.otel.server(INFER_SPAN.into(), &headers, || {
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "inference.GRPCInferenceService"),
                KeyValue::new("rpc.method", "ModelInfer"),
                KeyValue::new(otel::REQUEST_ID, request_id.clone()),
            ]
        });
        let answered = async {
            let model = self.known_model(&request.model_name).await?;
            let (raw, wanted) = to_detect(&request)?;
            let answer = self.backend.answer(raw, request_id, headers, traced.clone()).await?;
            Ok(Response::new(from_detect(&answer, model, request.id.clone(), &wanted)))
        };
        let result: Result<_, Status> = answered.await;
        if let Err(status) = &result {
            traced.set(|| vec![KeyValue::new("rpc.grpc.status_code", status.code() as i64)]);
            traced.status_error(status.message().to_string());
        }
        traced.end();
        result
    }
}

/// The request's tensors and parameters as a detect request, and the outputs it asks for.
// Status is what every method of the service returns; boxing it here alone would gain nothing.
#[allow(clippy::result_large_err)]
fn to_detect(request: &ModelInferRequest) -> Result<(RawDetect, Vec<&'static str>), Status> {
    let mut raw = RawDetect::default();
    let uses_raw = !request.raw_input_contents.is_empty();
    if uses_raw && request.raw_input_contents.len() != request.inputs.len() {
        return Err(bad(format!(
            "{} raw_input_contents for {} inputs",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let mut seen = Vec::new();
    for (i, input) in request.inputs.iter().enumerate() {
        let name = input.name.as_str();
        if seen.contains(&name) {
            return Err(bad(format!("input {name} is given twice")));
        }
        seen.push(name);
        if ![oip::IMAGE, oip::QUESTION, oip::BEHAVIOR].contains(&name) {
            return Err(bad(format!("unknown input {name:?}: the inputs are IMAGE, QUESTION and BEHAVIOR")));
        }
        if input.datatype != "BYTES" {
            return Err(bad(format!("input {name} is {}; it must be BYTES", input.datatype)));
        }
        let count = oip::elements(name, &input.shape).map_err(|e| status(&e))?;
        if name == oip::IMAGE && count != 1 {
            return Err(bad(format!("input IMAGE has shape {:?}; it must be [1]", input.shape)));
        }
        let items: Vec<Vec<u8>> = if uses_raw {
            oip::byte_elements(name, &request.raw_input_contents[i]).map_err(|e| status(&e))?
        } else {
            input.contents.as_ref().map(|c| c.bytes_contents.clone()).unwrap_or_default()
        };
        if items.len() != count {
            return Err(bad(format!("input {name} has shape {:?} but {} elements", input.shape, items.len())));
        }
        match name {
            oip::IMAGE => raw.image = items.into_iter().next().map(Bytes::from),
            oip::QUESTION => raw.questions = oip::utf8(name, items).map_err(|e| status(&e))?,
            _ => raw.behaviors = oip::utf8(name, items).map_err(|e| status(&e))?,
        }
    }
    for (key, value) in &request.parameters {
        let choice = value.parameter_choice.as_ref();
        match (key.as_str(), choice) {
            ("mode", Some(ParameterChoice::StringParam(s))) => raw.mode = Some(s.clone()),
            ("camera", Some(ParameterChoice::StringParam(s))) => raw.camera = Some(s.clone()),
            ("reuse", Some(ParameterChoice::BoolParam(b))) => raw.reuse = Some(b.to_string()),
            ("mode" | "camera" | "reuse", other) => return Err(bad(format!("parameter {key} cannot be {other:?}"))),
            _ => {}
        }
    }
    let mut wanted = Vec::new();
    for output in &request.outputs {
        wanted.push(match output.name.as_str() {
            oip::PROBABILITY => oip::PROBABILITY,
            oip::ANSWER => oip::ANSWER,
            other => return Err(bad(format!("unknown output {other:?}: the outputs are PROBABILITY and ANSWER"))),
        });
    }
    if wanted.is_empty() {
        wanted = vec![oip::PROBABILITY, oip::ANSWER];
    }
    Ok((raw, wanted))
}

/// The answer as outputs in `raw_output_contents` (little-endian FP32; BYTES length-prefixed).
fn from_detect(answer: &DetectResponse, model: String, id: String, wanted: &[&'static str]) -> ModelInferResponse {
    let n = answer.answers.len() as i64;
    let mut outputs = Vec::new();
    let mut raw = Vec::new();
    for name in wanted {
        let (datatype, bytes) = if *name == oip::PROBABILITY {
            let values = answer.answers.iter().map(|a| a.probability.map_or(f32::NAN, |p| p as f32));
            ("FP32", values.flat_map(f32::to_le_bytes).collect::<Vec<u8>>())
        } else {
            let mut bytes = Vec::new();
            for a in &answer.answers {
                bytes.extend_from_slice(&(a.answer.len() as u32).to_le_bytes());
                bytes.extend_from_slice(a.answer.as_bytes());
            }
            ("BYTES", bytes)
        };
        outputs.push(InferOutputTensor {
            name: name.to_string(),
            datatype: datatype.into(),
            shape: vec![n],
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(bytes);
    }
    let string = |s: &str| InferParameter { parameter_choice: Some(ParameterChoice::StringParam(s.to_string())) };
    let mut parameters = HashMap::new();
    parameters.insert("request_id".to_string(), string(&answer.request_id));
    ModelInferResponse {
        model_name: model,
        model_version: "1".into(),
        id,
        parameters,
        outputs,
        raw_output_contents: raw,
    }
}
