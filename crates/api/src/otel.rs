//! OpenTelemetry tracing across both tiers: spans exported over OTLP/HTTP (protobuf) when an
//! endpoint is configured, the W3C trace context (`traceparent`, `tracestate`) read from callers
//! and passed on to workers.
//!
//! Off by default, and then free: no tracer exists, a request's [`Traced`] holds nothing, and
//! every span helper returns before reading a clock or building an attribute. What a request's
//! trace holds (docs/tracing.md has the whole list):
//!
//! - gateway: the server span (`POST /v1/detect`, the Open Inference Protocol's `infer` over
//!   HTTP or gRPC), `checks`, `forward`, and one `attempt` per worker tried (`retry` after the
//!   first), whose context goes to the worker as its `traceparent`;
//! - `serve` / `worker`: the server span, `checks`, `preprocess`, `queue wait` and `inference`,
//!   the last with the batch it joined (replica, batch number, frames and questions in it).
//!
//! Only the inference routes are traced: health probes and metric scrapes every few seconds
//! would bury the requests in traces of their own.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, Key, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::http::error::ApiError;
use crate::http::RequestId;

/// What a span's attributes are made of (re-exported: the inference tier names no OpenTelemetry
/// crate of its own).
pub use opentelemetry::KeyValue as Attribute;

/// The attribute that carries blipserve's request id (`x-request-id`) on every server span.
pub const REQUEST_ID: &str = "blipserve.request_id";

/// The HTTP routes whose requests get a trace.
const TRACED_ROUTES: &[&str] =
    &["/v1/detect", "/invocations", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"];

/// The W3C trace context headers.
const CONTEXT_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Where traces go, if anywhere.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OtelArgs {
    /// Export OpenTelemetry traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// http://127.0.0.1:4318 (spans are posted to its /v1/traces). Without it the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on; with
    /// none of them tracing is off. OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    /// OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* and OTEL_EXPORTER_OTLP_(TRACES_)HEADERS/TIMEOUT apply
    #[arg(long, env = "BLIPSERVE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl OtelArgs {
    /// The process's tracer: off unless an endpoint is configured (`OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none` turn it off regardless). `service` names the process in its
    /// spans unless `OTEL_SERVICE_NAME` (or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) does.
    pub fn start(&self, service: &str) -> anyhow::Result<Otel> {
        let env = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(Otel::off());
        }
        let endpoint = match &self.otlp_endpoint {
            Some(base) => {
                let base = base.trim_end_matches('/');
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    anyhow::bail!("--otlp-endpoint {base:?}: an http:// or https:// URL of an OTLP/HTTP receiver");
                }
                format!("{base}/v1/traces")
            }
            None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(url) => url,
                None => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                    None => return Ok(Otel::off()),
                },
            },
        };
        if let Some(protocol) = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            if protocol != "http/protobuf" {
                anyhow::bail!(
                    "OTLP protocol {protocol:?}: blipserve exports http/protobuf (a collector's OTLP/HTTP port, 4318)"
                );
            }
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter for {endpoint}: {e}"))?;
        let detected = Resource::builder().build();
        let resource = match detected.get(&Key::from_static_str("service.name")) {
            Some(name) if name.as_str() != "unknown_service" => Resource::builder(),
            _ => Resource::builder().with_service_name(service.to_string()),
        };
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        let tracer = provider.tracer("blipserve");
        eprintln!("blipserve: tracing to {endpoint}");
        Ok(Otel(Some(Arc::new(Exporting { provider, tracer }))))
    }
}

/// The process's tracer, or nothing when tracing is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Otel(Option<Arc<Exporting>>);

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Otel {
    pub fn off() -> Otel {
        Otel(None)
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The span of a request arriving with `headers`: a child of the caller's span when they
    /// carry a valid `traceparent`, else the root of a new trace.
    pub fn server(&self, name: String, headers: &HeaderMap, attributes: impl FnOnce() -> Vec<KeyValue>) -> Traced {
        let Some(on) = &self.0 else { return Traced::default() };
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = on
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes())
            .start_with_context(&on.tracer, &parent);
        Traced(Some(Arc::new(Live { cx: parent.with_span(span), tracer: on.tracer.clone() })))
    }

    /// Sends what is still buffered (at most `timeout`): a process about to exit calls it.
    pub fn shutdown(&self, timeout: Duration) {
        if let Some(on) = &self.0 {
            if let Err(e) = on.provider.shutdown_with_timeout(timeout) {
                tracing::warn!(error = %e, "flushing the last spans failed");
            }
        }
    }

    /// `routes` with the middleware that opens a traced route's server span; unchanged (no layer
    /// at all) when tracing is off.
    pub fn layer<S: Clone + Send + Sync + 'static>(&self, routes: axum::Router<S>) -> axum::Router<S> {
        if !self.is_on() {
            return routes;
        }
        routes.layer(axum::middleware::from_fn_with_state(self.clone(), server_span))
    }
}

/// Opens the server span of a traced route's request (the handler reaches it as a [`Traced`]
/// extractor) and closes it with the response's status.
async fn server_span(State(otel): State<Otel>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str()).filter(|r| TRACED_ROUTES.contains(r));
    let Some(route) = route.map(str::to_string) else { return next.run(request).await };
    let method = request.method().as_str().to_string();
    let request_id = request.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let traced = otel.server(format!("{method} {route}"), request.headers(), || {
        vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
            KeyValue::new("url.path", path),
            KeyValue::new(REQUEST_ID, request_id),
        ]
    });
    request.extensions_mut().insert(traced.clone());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    traced.set(|| vec![KeyValue::new("http.response.status_code", i64::from(status))]);
    if status >= 500 {
        traced.status_error(format!("status {status}"));
    }
    traced.end();
    response
}

/// One open span of a request (or nothing, when tracing is off or the route is not traced).
/// Clones share the span; it ends at [`Traced::end`] or when the last clone drops.
#[derive(Clone, Default)]
pub struct Traced(Option<Arc<Live>>);

struct Live {
    /// The context whose span this is.
    cx: Context,
    tracer: SdkTracer,
}

impl Traced {
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// A child span starting now.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Traced {
        let Some(live) = &self.0 else { return Traced::default() };
        let span = live.tracer.span_builder(name).with_kind(kind).start_with_context(&live.tracer, &live.cx);
        Traced(Some(Arc::new(Live { cx: live.cx.with_span(span), tracer: live.tracer.clone() })))
    }

    /// A child span of what happened between `from` and `to` (measured with the monotonic
    /// clock, placed on the wall clock now), already ended.
    pub fn record(&self, name: &'static str, from: Instant, to: Instant, attributes: impl FnOnce() -> Vec<KeyValue>) {
        let Some(live) = &self.0 else { return };
        let (wall_from, wall_to) = (wall(from), wall(to));
        live.tracer
            .span_builder(name)
            .with_start_time(wall_from)
            .with_end_time(wall_to)
            .with_attributes(attributes())
            .start_with_context(&live.tracer, &live.cx);
    }

    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(live) = &self.0 {
            live.cx.span().set_attributes(attributes());
        }
    }

    /// Marks the span failed by `error`: its code as `error.type`, its message as the status.
    pub fn fail(&self, error: &ApiError) {
        if let Some(live) = &self.0 {
            live.cx.span().set_attribute(KeyValue::new("error.type", error.code()));
            live.cx.span().set_status(Status::error(error.to_string()));
        }
    }

    pub fn status_error(&self, message: String) {
        if let Some(live) = &self.0 {
            live.cx.span().set_status(Status::error(message));
        }
    }

    pub fn end(&self) {
        if let Some(live) = &self.0 {
            live.cx.span().end();
        }
    }

    /// The trace context headers a request made within this span carries downstream: this
    /// span's when tracing is on, else the caller's (`incoming`) as they came, so that a
    /// gateway without tracing still joins its workers to the client's trace.
    pub fn context_headers(&self, incoming: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        match &self.0 {
            Some(live) => {
                let mut headers = HeaderMap::new();
                TraceContextPropagator::new().inject_context(&live.cx, &mut HeadersMut(&mut headers));
                headers.into_iter().filter_map(|(name, value)| Some((name?, value))).collect()
            }
            None => CONTEXT_HEADERS
                .iter()
                .filter_map(|name| Some((HeaderName::from_static(name), incoming.get(*name)?.clone())))
                .collect(),
        }
    }
}

/// The handler's view of its request's server span: what the middleware opened, or nothing.
impl<S: Send + Sync> FromRequestParts<S> for Traced {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Traced>().cloned().unwrap_or_default())
    }
}

/// `at` on the wall clock: now, less how long ago `at` was.
fn wall(at: Instant) -> SystemTime {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_costs_nothing_and_passes_the_callers_context_on() {
        let otel = Otel::off();
        let mut incoming = HeaderMap::new();
        incoming
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        let traced = otel.server("POST /v1/detect".into(), &incoming, || panic!("no attributes are built when off"));
        assert!(!traced.is_on());
        traced.record("checks", Instant::now(), Instant::now(), || panic!("nor here"));
        traced.set(|| panic!("nor here"));
        let sent = traced.child("forward", SpanKind::Internal).context_headers(&incoming);
        assert_eq!(sent, vec![(HeaderName::from_static("traceparent"), incoming["traceparent"].clone())]);
    }

    #[test]
    fn the_wall_clock_of_an_instant_is_in_the_past() {
        let earlier = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let placed = wall(earlier);
        let ago = SystemTime::now().duration_since(placed).unwrap();
        assert!(ago >= Duration::from_millis(5), "{ago:?}");
    }
}
