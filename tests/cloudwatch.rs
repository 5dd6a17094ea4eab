//! The CloudWatch publisher against a real CloudWatch emulator (LocalStack on 127.0.0.1): what
//! the service publishes is read back through the AWS SDK, across an outage of the emulator.

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::config::{Credentials, Region};
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use blipserve_api::cloudwatch::{DIM_BACKEND, DIM_GROUP, ERRORS, LATENCY, NAMESPACE, REQUESTS};
use blipserve_testkit::localstack::LocalStack;
use blipserve_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_REGION", "us-east-1"),
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// Reads metrics back the way an operator would, through the AWS SDK.
struct Reader {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_cloudwatch::Client,
}

impl Reader {
    fn new(endpoint: &str) -> Reader {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = aws_sdk_cloudwatch::Config::builder()
            .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        Reader { runtime, client: aws_sdk_cloudwatch::Client::from_conf(config) }
    }

    /// (Sum, SampleCount) of a metric over the last hour, over every returned datapoint.
    fn totals(&self, metric: &str, dimension: (&str, &str)) -> (f64, f64) {
        let now = SystemTime::now();
        let request = self
            .client
            .get_metric_statistics()
            .namespace(NAMESPACE)
            .metric_name(metric)
            .dimensions(Dimension::builder().name(dimension.0).value(dimension.1).build())
            .start_time((now - Duration::from_secs(3600)).into())
            .end_time((now + Duration::from_secs(120)).into())
            .period(60)
            .statistics(Statistic::Sum)
            .statistics(Statistic::SampleCount);
        let out = self.runtime.block_on(request.send()).expect("GetMetricStatistics");
        out.datapoints()
            .iter()
            .fold((0.0, 0.0), |(sum, n), d| (sum + d.sum().unwrap_or(0.0), n + d.sample_count().unwrap_or(0.0)))
    }

    /// Polls (bounded) until `metric`'s Sum reaches `want`, and returns the last Sum seen.
    fn wait_for_sum(&self, metric: &str, dimension: (&str, &str), want: f64, limit: Duration) -> f64 {
        let mut sum = 0.0;
        eventually_every(limit, Duration::from_millis(250), || {
            sum = self.totals(metric, dimension).0;
            sum >= want
        });
        sum
    }
}

/// Sends `n` detect requests one after another; returns their latencies in ms, all 200s.
fn detect_n(server: &Server, frame: &[u8], n: usize) -> Vec<f64> {
    let http = client();
    (0..n)
        .map(|_| {
            let form = detect_form(frame, &["is the dog barking?"], &[]);
            let started = Instant::now();
            let response = http.post(server.url("/v1/detect")).multipart(form).send().expect("detect");
            assert_eq!(response.status(), 200, "{:?}", response.text());
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn request_counts_reach_cloudwatch_once_each_across_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut emulator = LocalStack::start(dir.path());
    let reader = Reader::new(&emulator.endpoint());
    let group = format!("blipserve-test-{}", uuid::Uuid::new_v4());
    let endpoint = emulator.endpoint();
    let mut server = Server::start_with_env(
        BIN,
        "tiny",
        &[
            "--cloudwatch",
            "--cloudwatch-endpoint",
            &endpoint,
            "--cloudwatch-interval-s",
            "1",
            "--cloudwatch-high-resolution",
            "--cloudwatch-group",
            &group,
        ],
        &AWS_ENV,
    );
    let by_group = (DIM_GROUP, group.as_str());
    let by_backend = (DIM_BACKEND, "cpu");
    let published = "blipserve_cloudwatch_intervals_total{result=\"published\"}";
    let frame = jpeg(&synthetic_frame(640, 360, 7), 90, Subsamp::Sub2x2);

    // Idle intervals are published as zeros, so the group can scale in.
    assert!(server.wait_metric(published, |v| v >= 2.0, Duration::from_secs(30)) >= 2.0);
    let (sum, samples) = reader.totals(REQUESTS, by_group);
    assert_eq!(sum, 0.0);
    assert!(samples >= 2.0, "idle intervals published: {samples}");

    // N requests with the emulator up: a Sum of N under each dimension set.
    let n1 = 12;
    let before = detect_n(&server, &frame, n1);
    assert_eq!(reader.wait_for_sum(REQUESTS, by_group, n1 as f64, Duration::from_secs(30)), n1 as f64);
    assert_eq!(reader.wait_for_sum(REQUESTS, by_backend, n1 as f64, Duration::from_secs(10)), n1 as f64);
    assert_eq!(reader.totals(ERRORS, by_group).0, 0.0);
    assert_eq!(reader.totals(LATENCY, by_group).1, n1 as f64, "one latency sample per request");

    // The emulator goes away: requests keep succeeding, the publisher keeps a backlog.
    emulator.stop();
    let failures = "blipserve_cloudwatch_put_failures_total";
    let n2 = 12;
    let during = detect_n(&server, &frame, n2);
    assert!(server.wait_metric(failures, |v| v >= 1.0, Duration::from_secs(30)) >= 1.0);
    let backlog = server.metric("blipserve_cloudwatch_backlog_intervals");
    assert!(backlog >= 1.0, "intervals waiting: {backlog}");
    eprintln!(
        "detect p50 with CloudWatch up: {:.1} ms; with it down: {:.1} ms ({} requests each)",
        median(before),
        median(during),
        n1
    );

    // It comes back (empty: its data lived in the old process). The backlog arrives, and
    // nothing already delivered is sent again: exactly the requests made since.
    emulator.restart();
    let reader = Reader::new(&emulator.endpoint());
    assert_eq!(reader.wait_for_sum(REQUESTS, by_group, n2 as f64, Duration::from_secs(60)), n2 as f64);
    assert_eq!(
        server.wait_metric("blipserve_cloudwatch_backlog_intervals", |v| v == 0.0, Duration::from_secs(30)),
        0.0
    );
    let settled = server.metric(published);
    assert!(server.wait_metric(published, |v| v >= settled + 2.0, Duration::from_secs(30)) >= settled + 2.0);
    assert_eq!(reader.totals(REQUESTS, by_group).0, n2 as f64, "nothing counted twice");
    assert_eq!(reader.totals(REQUESTS, by_backend).0, n2 as f64);

    // On SIGTERM the interval in progress is delivered before the process exits.
    let n3 = 3;
    detect_n(&server, &frame, n3);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(reader.totals(REQUESTS, by_group).0, (n2 + n3) as f64, "the last interval arrived at exit");
}

#[test]
fn publishing_needs_a_group_off_ec2() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--port", "0", "--model"])
        .arg(model_dir("tiny"))
        .args(["--cloudwatch", "--cloudwatch-endpoint", "http://127.0.0.1:9"])
        .envs(AWS_ENV)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cloudwatch-group"), "{stderr}");
}

/// An instance-metadata endpoint speaking IMDSv2 (token first, then tags with the token), as on
/// an EC2 instance whose launch template allows tags in metadata. Serves `limit` connections.
fn instance_metadata(group: &'static str, limit: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(limit).flatten() {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_ascii_lowercase());
            }
            let first = head.first().cloned().unwrap_or_default();
            let has = |h: &str| head.iter().any(|l| l.starts_with(h));
            let (status, body) =
                if first.starts_with("put /latest/api/token") && has("x-aws-ec2-metadata-token-ttl-seconds:") {
                    ("200 OK", "token-1")
                } else if first.starts_with("get /latest/meta-data/tags/instance/aws:autoscaling:groupname")
                    && has("x-aws-ec2-metadata-token: token-1")
                {
                    ("200 OK", group)
                } else {
                    ("401 Unauthorized", "")
                };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-aws-ec2-metadata-token-ttl-seconds: 21600\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn the_group_comes_from_instance_metadata() {
    let imds = instance_metadata("pets-inference-inf2", 16);
    let server = Server::start_with_env(
        BIN,
        "tiny",
        &["--cloudwatch", "--cloudwatch-endpoint", "http://127.0.0.1:9", "--cloudwatch-interval-s", "3600"],
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds),
        ],
    );
    let log = server.stderr.lock().unwrap().join("\n");
    assert!(log.contains("(group pets-inference-inf2, backend cpu)"), "{log}");
}
