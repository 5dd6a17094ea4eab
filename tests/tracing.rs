//! OpenTelemetry tracing through both tiers, into a real OTLP/HTTP receiver (testkit's, on the
//! published OTLP protobufs): one trace per request, through the gateway and the worker, every
//! span's parent in its trace and around it in time, the client's trace id kept; a retry is a
//! span of its own; gRPC calls are traced like HTTP ones; a trace the client did not sample is
//! not recorded; a gateway without tracing still passes the client's context on; and the spans
//! show a frame decoded on a core no CPU batch holds.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use blipserve_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");
/// Spans leave every 100 ms (the SDK's batch processor waits 5 s by default).
const ENV: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];
const QUESTIONS: [&str; 2] = ["is the dog barking?", "is the pet on the sofa?"];
const WORKER: &[&str] = &["--threads", "1", "--replicas", "1"];
/// How far a child may stick out of its parent: the two processes' wall clocks are one clock
/// here, but a span recorded afterwards is placed from the monotonic clock.
const SLACK_NS: u64 = 2_000_000;

/// A client's own trace and span: what it sends as `traceparent`.
struct Client {
    trace: String,
    span: String,
}

impl Client {
    fn new(n: u32) -> Client {
        Client { trace: format!("4bf92f3577b34da6a3ce929d{n:08x}"), span: format!("00f067aa{n:08x}") }
    }

    fn traceparent(&self, sampled: bool) -> String {
        format!("00-{}-{}-{}", self.trace, self.span, if sampled { "01" } else { "00" })
    }
}

/// What a detect request through `server` was answered: status, request id, attempts made.
struct Answered {
    status: u16,
    request_id: String,
    attempts: usize,
}

fn detect(server: &Server, image: &[u8], traceparent: Option<String>, questions: &[&str]) -> Answered {
    let mut request = client().post(server.url("/v1/detect")).multipart(detect_form(image, questions, &[]));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    Answered {
        status: response.status().as_u16(),
        request_id: header("x-request-id").expect("x-request-id"),
        attempts: header("x-blipserve-attempts").map_or(0, |a| a.parse().unwrap()),
    }
}

fn in_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn one<'a>(spans: &[&'a ReceivedSpan], what: &str, pick: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<&&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {} such spans in {spans:#?}", found.len());
    found[0]
}

fn children<'a>(spans: &[&'a ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut found: Vec<&ReceivedSpan> = spans.iter().copied().filter(|s| s.parent_span_id == parent.span_id).collect();
    found.sort_by_key(|s| s.start_ns);
    found
}

/// Every span's parent is in the trace and spans it in time, but for the root's (`root_parent`:
/// the client's span, outside the trace we received, or none).
fn links_hold(spans: &[&ReceivedSpan], root_parent: &str) {
    for span in spans {
        if span.parent_span_id == root_parent {
            continue;
        }
        let parent = spans
            .iter()
            .find(|p| p.span_id == span.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {span:#?} is not in its trace"));
        assert!(
            span.start_ns + SLACK_NS >= parent.start_ns && span.end_ns <= parent.end_ns + SLACK_NS,
            "{span:#?} is not within its parent {parent:#?}"
        );
        assert!(span.start_ns <= span.end_ns, "{span:#?} ends before it starts");
    }
}

/// The trace of a request answered through the gateway: the gateway's server span (named
/// `server_name`, a child of `root_parent`), its checks and forwarding, `attempts` attempts,
/// the worker's server span under the last one, and the worker's stages under that.
fn check_trace(
    spans: &[ReceivedSpan],
    trace: &str,
    root_parent: &str,
    server_name: &str,
    request_id: &str,
    attempts: usize,
) {
    let spans = in_trace(spans, trace);
    let gateway = one(&spans, "the gateway's server span", |s| s.service == "blipserve-gateway" && s.kind == 2);
    assert_eq!(gateway.name, server_name);
    assert_eq!(gateway.parent_span_id, root_parent, "the gateway's span is the client's span's child");
    assert_eq!(gateway.attribute("blipserve.request_id"), Some(request_id));
    let names: Vec<&str> = children(&spans, gateway).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["checks", "forward"], "the gateway's stages");
    let forward = one(&spans, "forward", |s| s.name == "forward");
    let tries = children(&spans, forward);
    let names: Vec<&str> = tries.iter().map(|s| s.name.as_str()).collect();
    let mut expected = vec!["attempt"];
    expected.extend(std::iter::repeat_n("retry", attempts - 1));
    assert_eq!(names, expected, "one span per worker tried");
    for (n, tried) in tries.iter().enumerate() {
        assert_eq!(tried.kind, 3, "an attempt is a client span");
        assert_eq!(tried.attribute("blipserve.attempt"), Some((n + 1).to_string().as_str()));
    }
    let last = tries.last().unwrap();
    assert_eq!(last.attribute("blipserve.attempt.outcome"), Some("ok"));
    assert_eq!(last.attribute("http.response.status_code"), Some("200"));

    let worker = one(&spans, "the worker's server span", |s| s.service == "blipserve-worker" && s.kind == 2);
    assert_eq!(worker.name, "POST /v1/detect");
    assert_eq!(worker.parent_span_id, last.span_id, "the worker's span is the answering attempt's child");
    assert_eq!(worker.attribute("blipserve.request_id"), Some(request_id), "the request id went along");
    assert_eq!(worker.attribute("http.response.status_code"), Some("200"));
    let stages = children(&spans, worker);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["checks", "preprocess", "queue wait", "inference"], "the worker's stages, in order");
    let inference = stages[3];
    assert_eq!(inference.attribute("blipserve.replica"), Some("0"));
    let frames: usize = inference.attribute("blipserve.batch.frames").unwrap().parse().unwrap();
    let questions: usize = inference.attribute("blipserve.batch.questions").unwrap().parse().unwrap();
    assert!(frames >= 1 && questions >= frames, "the batch it joined: {inference:#?}");
    assert!(inference.attribute("blipserve.batch.number").unwrap().parse::<u64>().unwrap() >= 1);
    links_hold(&spans, root_parent);
}

/// tests/clients/oip_grpc.py (tritonclient, gRPC) against `server` with `traceparent`.
fn tritonclient_grpc(server: &Server, image: &[u8], traceparent: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "frame.jpg", image);
    let tools = tools_python();
    let out = Command::new(tools)
        .arg(repo().join("tests/clients/oip_grpc.py"))
        .arg(server.grpc_addr())
        .arg("tiny")
        .arg(&path)
        .args(QUESTIONS)
        .env("TRACEPARENT", traceparent)
        .output()
        .unwrap();
    assert!(out.status.success(), "tritonclient (gRPC) failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_request_is_one_trace_through_the_gateway_and_the_worker() {
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let traced: Vec<&str> = WORKER.iter().copied().chain(["--otlp-endpoint", &endpoint]).collect();
    let worker = Server::start_role_with_env(BIN, "worker", "tiny", 0, &traced, ENV);
    // A second worker the gateway believes healthy (probed once, at start) but which is gone:
    // a request sent there first is retried on the live one.
    let mut gone = Server::start_role(BIN, "worker", "tiny", 0, WORKER);
    let flags = ["--otlp-endpoint", &endpoint, "--grpc-port", "0", "--health-interval-ms", "600000", "--eject-ms", "1"];
    let (gateway, _config) = gateway(BIN, &[&worker.base, &gone.base], &flags, ENV);
    gone.kill();
    let image = jpeg(&synthetic_frame(320, 240, 5), 90, Subsamp::Sub2x2);

    // Requests with the client's sampled trace context, until one was retried (each goes to
    // the gone worker first with even odds; at least 3, at most 24).
    let mut answered = Vec::new();
    for n in 1..=24 {
        let client = Client::new(n);
        let answer = detect(&gateway, &image, Some(client.traceparent(true)), &QUESTIONS);
        assert_eq!(answer.status, 200, "request {n}");
        answered.push((client, answer));
        if n >= 3 && answered.iter().any(|(_, a)| a.attempts == 2) {
            break;
        }
    }
    let retried = answered.iter().find(|(_, a)| a.attempts == 2).map(|(c, _)| c.trace.clone());
    let retried = retried.expect("no request went to the gone worker first in 24 tries");
    // Without a context of its own: the gateway starts the trace.
    let rootless = detect(&gateway, &image, None, &QUESTIONS);
    assert_eq!(rootless.status, 200);
    // The client sampled its trace out: nothing is recorded, on either tier.
    let unsampled = Client::new(100);
    assert_eq!(detect(&gateway, &image, Some(unsampled.traceparent(false)), &QUESTIONS).status, 200);
    // Refused by the gateway's checks: a trace of the gateway alone, its span marked.
    let refused = Client::new(101);
    let bad = detect(&gateway, &image, Some(refused.traceparent(true)), &[]);
    assert_eq!(bad.status, 400);
    // The Open Inference Protocol over gRPC, through the gateway.
    let grpc = Client::new(102);
    tritonclient_grpc(&gateway, &image, &grpc.traceparent(true));

    let answers = answered.len() + 2;
    receiver.wait_for(Duration::from_secs(20), |spans| {
        spans.iter().filter(|s| s.name == "inference").count() >= answers
            && spans.iter().any(|s| s.trace_id == refused.trace)
    });
    // Let anything that should not come arrive before counting traces.
    std::thread::sleep(Duration::from_millis(500));
    let spans = receiver.spans();

    for (client, answer) in &answered {
        check_trace(&spans, &client.trace, &client.span, "POST /v1/detect", &answer.request_id, answer.attempts);
    }
    let tries = in_trace(&spans, &retried);
    let failed = one(&tries, "the failed attempt", |s| s.name == "attempt");
    assert_eq!(failed.attribute("blipserve.attempt.outcome"), Some("transport"));
    assert_eq!(failed.status, 2, "the failed attempt is marked an error");

    let root = one(&spans.iter().collect::<Vec<_>>(), "the rootless request's span", |s| {
        s.attribute("blipserve.request_id") == Some(rootless.request_id.as_str()) && s.service == "blipserve-gateway"
    });
    assert_eq!(root.parent_span_id, "", "a request without a context starts a trace");
    check_trace(
        &spans,
        &root.trace_id,
        "",
        "POST /v1/detect",
        &rootless.request_id,
        root_attempts(&spans, &root.trace_id),
    );

    assert!(in_trace(&spans, &unsampled.trace).is_empty(), "an unsampled trace was recorded");

    let refused_spans = in_trace(&spans, &refused.trace);
    let server = one(&refused_spans, "the refused request's span", |s| s.kind == 2);
    assert_eq!(server.service, "blipserve-gateway");
    assert_eq!(server.attribute("error.type"), Some("no_question"));
    assert_eq!(server.attribute("http.response.status_code"), Some("400"));
    assert!(refused_spans.iter().all(|s| s.service == "blipserve-gateway"), "a refused request reached a worker");

    let grpc_id = in_trace(&spans, &grpc.trace)
        .iter()
        .find(|s| s.kind == 2 && s.service == "blipserve-gateway")
        .and_then(|s| s.attribute("blipserve.request_id").map(str::to_string))
        .expect("the gRPC call's span");
    let attempts = root_attempts(&spans, &grpc.trace);
    check_trace(&spans, &grpc.trace, &grpc.span, "inference.GRPCInferenceService/ModelInfer", &grpc_id, attempts);

    // One trace per request, and nothing else (no health probes, no unsampled request).
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    let mut expected: BTreeSet<&str> = answered.iter().map(|(c, _)| c.trace.as_str()).collect();
    expected.extend([root.trace_id.as_str(), refused.trace.as_str(), grpc.trace.as_str()]);
    assert_eq!(traces, expected, "one trace per request");
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    eprintln!(
        "tracing: {} requests, {} traces, {} spans from {services:?}; the retried request: {} spans \
         (attempt: transport, retry: ok, the worker's span under the retry)",
        answered.len() + 4,
        traces.len(),
        spans.len(),
        tries.len()
    );
}

/// How many workers the gateway tried in a trace (the client saw no header for gRPC, nor is
/// the rootless request's count needed elsewhere).
fn root_attempts(spans: &[ReceivedSpan], trace: &str) -> usize {
    in_trace(spans, trace).iter().filter(|s| s.name == "attempt" || s.name == "retry").count()
}

#[test]
fn a_gateway_without_tracing_passes_the_clients_context_to_a_worker_traced_by_the_standard_environment() {
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    let env = [
        ENV[0],
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "pet-detector"),
        // What the CloudFormation stacks give each container (deploy/pool.yaml, OtlpEndpoint).
        ("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=i-0123456789abcdef0"),
    ];
    let worker = Server::start_role_with_env(BIN, "worker", "tiny", 0, WORKER, &env);
    let (gateway, _config) = gateway(BIN, &[&worker.base], &[], &[]);
    let image = jpeg(&synthetic_frame(320, 240, 6), 90, Subsamp::Sub2x2);
    let client = Client::new(7);
    let answer = detect(&gateway, &image, Some(client.traceparent(true)), &QUESTIONS);
    assert_eq!(answer.status, 200);

    let spans = receiver.wait_for(Duration::from_secs(20), |spans| spans.iter().any(|s| s.name == "inference"));
    let spans = in_trace(&spans, &client.trace);
    assert!(spans.iter().all(|s| s.service == "pet-detector"), "OTEL_SERVICE_NAME names the worker: {spans:#?}");
    assert!(
        spans.iter().all(|s| s.resource.get("service.instance.id").map(String::as_str) == Some("i-0123456789abcdef0")),
        "OTEL_RESOURCE_ATTRIBUTES names the instance: {spans:#?}"
    );
    let server = one(&spans, "the worker's server span", |s| s.kind == 2);
    assert_eq!(server.parent_span_id, client.span, "the client's context reached the worker through the gateway");
    assert_eq!(server.attribute("blipserve.request_id"), Some(answer.request_id.as_str()));
    let names: Vec<&str> = children(&spans, server).iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["checks", "preprocess", "queue wait", "inference"]);
    links_hold(&spans, &client.span);
}

/// On the CPU a frame is decoded on a core no batch holds: when the replica's threads take every
/// core, a frame that arrives during a batch is decoded after it (its `preprocess` span starts as
/// the batch's `inference` ends, and carries the wait); when they leave a core free, beside it.
#[test]
fn frames_are_decoded_on_cores_no_batch_holds() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let receiver = OtlpReceiver::start();
    let endpoint = receiver.endpoint();
    // The fixed-shape export generates without a key/value cache: 48 long questions, generated,
    // hold the replica for about a second whatever the machine.
    let long: Vec<String> = (0..48).map(|i| format!("is the big brown dog number {i} barking at the door?")).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let image = jpeg(&synthetic_frame(640, 360, 8), 90, Subsamp::Sub2x2);
    // (Whether the second frame's decoding began before the first frame's batch ended, and its
    // recorded wait for a core in ms.)
    let second_frame = |threads: usize, n: u32| -> (bool, f64) {
        let threads = threads.to_string();
        let flags = ["--replicas", "1", "--threads", &threads, "--max-questions", "48", "--otlp-endpoint", &endpoint];
        let server = Server::start_role_with_env(BIN, "serve", "tiny-static", 0, &flags, ENV);
        let (busy, second) = (Client::new(n), Client::new(n + 1));
        std::thread::scope(|s| {
            let request = client()
                .post(server.url("/v1/detect"))
                .header("traceparent", busy.traceparent(true))
                .multipart(detect_form(&image, &long, &[]).text("mode", "generate"));
            let batch = s.spawn(move || request.send().unwrap().status());
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(detect(&server, &image, Some(second.traceparent(true)), &QUESTIONS).status, 200);
            assert_eq!(batch.join().unwrap(), 200);
        });
        let spans = receiver.wait_for(Duration::from_secs(20), |spans| {
            [&busy.trace, &second.trace]
                .iter()
                .all(|t| spans.iter().any(|s| &s.trace_id == *t && s.name == "inference"))
        });
        let (busy, second) = (in_trace(&spans, &busy.trace), in_trace(&spans, &second.trace));
        let batch = one(&busy, "the long batch", |s| s.name == "inference");
        let checks = one(&second, "the second frame's checks", |s| s.name == "checks");
        assert!(checks.end_ns < batch.end_ns, "the premise: the second frame arrived during the batch");
        let decode = one(&second, "the second frame's decoding", |s| s.name == "preprocess");
        let waited: f64 = decode.attribute("blipserve.core_wait_ms").expect("core_wait_ms").parse().unwrap();
        (decode.start_ns < batch.end_ns, waited)
    };

    let (beside, waited) = second_frame(cores, 1000);
    assert!(!beside && waited > 0.0, "every core busy: decoded after the batch (waited {waited} ms)");
    if cores > 1 {
        let (beside, waited) = second_frame(cores - 1, 2000);
        assert!(beside, "a core left free: decoded beside the batch (waited {waited} ms)");
    }
}
