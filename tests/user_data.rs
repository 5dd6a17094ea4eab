//! The launch scripts, run. Each launch template's user data is taken from its template (the
//! `Fn::Sub` text, `${…}` filled in with test values) and run here under bash, with stand-ins
//! for `aws`, `docker`, `curl`, `systemctl` and `logger` first on PATH: small scripts that log
//! their arguments and fail (or hang) the step `STUB_FAIL` (`STUB_HANG`) names. Whatever fails —
//! the model sync, the ECR login, the image pull, a container never ready or crash-looping, the
//! API-key secret, the devices — the run must end in exactly one
//! `autoscaling complete-lifecycle-action … ABANDON`, within seconds, with the reason in the
//! launch log copied to CloudWatch Logs; with nothing failing, in one `… CONTINUE`.
//!
//! Nothing here touches the machine: the scripts write every path under `$BLIPSERVE_ROOT`, a
//! scratch directory (checked statically before anything runs, and after each run), their bounds
//! (`*_TIMEOUT_S`, `POLL_S`, …) are shortened through the environment, and no stand-in reaches
//! a network.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value;

/// The repository: this package's own directory (its tests are the root package's), so that the
/// templates read are the ones next to this file whatever else shares the target directory.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const REGISTRY: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const INSTANCE_ID: &str = "i-0123456789abcdef0";
const GROUP: &str = "blipserve-test-workers";
const LOG_GROUP: &str = "/blipserve/test";
const API_KEYS_SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:blipserve-keys-AbCdEf";
/// How long one run may take at most, failures included: every bound below is 1 to 2 s, and the
/// slowest case (a download hanging on each of its 3 attempts) takes about 6 s.
const RUN_LIMIT: Duration = Duration::from_secs(30);

fn image_by_digest() -> String {
    format!("{REGISTRY}/blipserve@sha256:{}", "ab".repeat(32))
}

// --- the stand-ins ----------------------------------------------------------------------------

/// `aws`: logs its arguments; per command, fails or hangs on request, or answers as AWS would.
const AWS: &str = r#"#!/bin/bash
echo "aws $*" >> "$STUB_LOG"
fail() { [ "${STUB_FAIL:-}" = "$1" ]; }
hang() { [ "${STUB_HANG:-}" = "$1" ]; }
case "$1 $2" in
  "s3 sync")
    hang s3-sync && exec sleep 600
    fail s3-sync && { echo "fatal error: An error occurred (AccessDenied) when calling the ListObjectsV2 operation" >&2; exit 1; }
    for dest; do :; done
    fail no-manifest || { mkdir -p "$dest" && echo '{}' > "$dest/manifest.json"; } ;;
  "ecr get-login-password")
    fail ecr-login && { echo "An error occurred (AccessDeniedException) when calling the GetAuthorizationToken operation" >&2; exit 255; }
    echo ecr-password ;;
  "secretsmanager get-secret-value")
    hang secret && exec sleep 600
    fail secret && { echo "An error occurred (AccessDeniedException) when calling the GetSecretValue operation" >&2; exit 254; }
    echo "${STUB_SECRET:-key-one,key-two}" ;;
  "ssm get-parameter")
    fail config && { echo "An error occurred (ParameterNotFound) when calling the GetParameter operation" >&2; exit 254; }
    printf 'listen = "0.0.0.0"\nport = 8080\n' ;;
  "logs put-log-events")
    for a; do case "$a" in file://*) cat "${a#file://}" >> "$STUB_LOG.events" ;; esac; done ;;
esac
exit 0
"#;

const DOCKER: &str = r#"#!/bin/bash
echo "docker $*" >> "$STUB_LOG"
case "$1" in
  login) cat > /dev/null ;;
  pull)
    [ "${STUB_HANG:-}" = docker-pull ] && exec sleep 600
    [ "${STUB_FAIL:-}" = docker-pull ] && { echo "Error response from daemon: manifest unknown" >&2; exit 1; } ;;
esac
exit 0
"#;

/// `curl`: the instance metadata (IMDSv2) and the service's /ready and /health.
const CURL: &str = r#"#!/bin/bash
for url; do :; done
echo "curl $url" >> "$STUB_LOG"
case "$url" in
  http://169.254.169.254/latest/api/token) echo imds-token ;;
  */meta-data/instance-id) echo "$STUB_INSTANCE_ID" ;;
  */meta-data/tags/instance/aws:autoscaling:groupName) echo "$STUB_GROUP" ;;
  */meta-data/autoscaling/target-lifecycle-state) echo "${STUB_TARGET_STATE:-InService}" ;;
  http://127.0.0.1:8080/ready | http://127.0.0.1:8080/health)
    case "${STUB_FAIL:-}" in never-ready | crash-loop) exit 7 ;; esac ;;
  *) exit 22 ;;
esac
"#;

/// `systemctl`: blipserve.service restarts 5 times in a crash loop; nothing is active.
const SYSTEMCTL: &str = r#"#!/bin/bash
echo "systemctl $*" >> "$STUB_LOG"
case "$1" in
  show) if [ "${STUB_FAIL:-}" = crash-loop ]; then echo 5; else echo 0; fi ;;
  is-active) exit 3 ;;
esac
exit 0
"#;

const LOGGER: &str = "#!/bin/bash\necho \"logger $*\" >> \"$STUB_LOG\"\n";

/// Installers must not run (the stand-ins are the Docker and the AWS CLI the AMI has).
const REFUSE: &str = "#!/bin/bash\necho \"$(basename \"$0\") $*\" >> \"$STUB_LOG\"\necho \"$(basename \"$0\"): not here\" >&2\nexit 99\n";

const STUBS: [(&str, &str); 9] = [
    ("aws", AWS),
    ("docker", DOCKER),
    ("curl", CURL),
    ("systemctl", SYSTEMCTL),
    ("logger", LOGGER),
    ("dnf", REFUSE),
    ("apt-get", REFUSE),
    ("snap", REFUSE),
    ("nvidia-smi", REFUSE),
];

// --- the scripts ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tier {
    /// pool.yaml: `blipserve worker` (Inf2 here).
    Worker,
    /// api.yaml: `blipserve gateway`.
    Gateway,
}

impl Tier {
    fn template(self) -> &'static str {
        match self {
            Tier::Worker => "pool.yaml",
            Tier::Gateway => "api.yaml",
        }
    }
}

/// The user data's `Fn::Sub` template text and its variable map.
fn user_data_sub(tier: Tier) -> (String, Vec<String>) {
    let path = repo().join("deploy").join(tier.template());
    let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).expect("read template")).expect("YAML");
    let launch = doc["Resources"]
        .as_mapping()
        .expect("Resources")
        .values()
        .find(|r| r["Type"].as_str() == Some("AWS::EC2::LaunchTemplate"))
        .unwrap_or_else(|| panic!("{}: no launch template", tier.template()));
    let sub = match &launch["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"] {
        Value::Tagged(t) if t.tag == "Sub" => &t.value,
        other => panic!("{}: the user data is not `Fn::Base64: !Sub …`: {other:?}", tier.template()),
    };
    match sub {
        Value::String(s) => (s.clone(), Vec::new()),
        Value::Sequence(s) => (
            s[0].as_str().expect("!Sub text").to_string(),
            s[1].as_mapping()
                .map(|m| m.keys().filter_map(Value::as_str).map(String::from).collect())
                .unwrap_or_default(),
        ),
        other => panic!("{}: !Sub of {other:?}", tier.template()),
    }
}

/// Test values of every `${Name}` the user data may use.
fn values(tier: Tier, image: &str, allow_tag: bool) -> BTreeMap<&'static str, String> {
    let mut v: BTreeMap<&'static str, String> = [
        ("AWS::Region", "us-east-1".to_string()),
        ("Registry", REGISTRY.to_string()),
        ("ImageUri", image.to_string()),
        ("AllowImageTag", allow_tag.to_string()),
        ("LogGroup", LOG_GROUP.to_string()),
        ("OtlpEndpoint", String::new()),
    ]
    .into();
    match tier {
        Tier::Worker => v.extend([
            ("StartupTimeoutSeconds", "1800".to_string()),
            ("ModelBucket", "blipserve-test-models".to_string()),
            ("ModelPrefix", "models/blip-vqa-base-neuron".to_string()),
            ("Backend", "neuron".to_string()),
            ("Device", "neuron".to_string()),
            ("ShutdownGraceSeconds", "30".to_string()),
            ("DrainDelayMs", "20000".to_string()),
            ("InstanceType", "inf2.xlarge".to_string()),
            ("Devices", "1".to_string()),
            ("Cores", "2".to_string()),
        ]),
        Tier::Gateway => v.extend([
            ("StartupTimeoutSeconds", "900".to_string()),
            ("GatewayConfig", "/blipserve/blipserve-test-api/gateway.toml".to_string()),
            ("ApiKeysSecretArn", API_KEYS_SECRET.to_string()),
            ("AdminKeySecretArn", String::new()),
        ]),
    }
    v
}

/// `Fn::Sub`: `${Name}` from `values` (a name the test does not know fails: add it above),
/// `${!Literal}` → `${Literal}`.
fn substitute(text: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        if let Some(literal) = after.strip_prefix('!') {
            out.push_str("${");
            rest = literal;
            continue;
        }
        let end = after.find('}').expect("unterminated ${ in the user data");
        let name = &after[..end];
        let value = values.get(name).unwrap_or_else(|| panic!("the user data uses ${{{name}}}: give it a test value"));
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The user data, ready to run (`otlp`: the stack's OtlpEndpoint).
fn user_data(tier: Tier, image: &str, allow_tag: bool, otlp: &str) -> String {
    let (text, _) = user_data_sub(tier);
    let mut values = values(tier, image, allow_tag);
    values.insert("OtlpEndpoint", otlp.to_string());
    let script = substitute(&text, &values);
    let outside = writes_outside_root(&script);
    assert!(
        outside.is_empty(),
        "{}: the user data would write outside $root, on the machine running this test:\n{}",
        tier.template(),
        outside.join("\n")
    );
    script
}

/// Shell lines of a script: its own and those of the scripts it writes (`<<'EOF'` bodies that
/// start with `#!/bin/bash`), not the other heredocs (units, settings).
fn shell_lines(script: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut in_heredoc: Option<bool> = None; // Some(is it shell?)
    let mut first = false;
    for line in script.lines() {
        match in_heredoc {
            Some(_) if line == "EOF" => in_heredoc = None,
            Some(_) if first => {
                first = false;
                let shell = line.starts_with("#!/bin/bash");
                in_heredoc = Some(shell);
                if shell {
                    lines.push(line);
                }
            }
            Some(true) => lines.push(line),
            Some(false) => {}
            None => {
                lines.push(line);
                if line.trim_end().ends_with("<<'EOF'") || line.trim_end().ends_with("<<EOF") {
                    in_heredoc = Some(false);
                    first = true;
                }
            }
        }
    }
    lines
}

/// Paths a script's shell code writes that are absolute: redirection targets and the
/// operands of mkdir, touch, tee, chmod, rm, mv, cp, install (ln: its link). /dev/null aside.
fn writes_outside_root(script: &str) -> Vec<String> {
    const WRITERS: [&str; 8] = ["mkdir", "touch", "tee", "chmod", "rm", "mv", "cp", "install"];
    let absolute = |word: &str| {
        let path = word.trim_matches(|c| c == '"' || c == '\'' || c == '(' || c == ')' || c == ';');
        path.starts_with('/') && path != "/dev/null"
    };
    let mut found = Vec::new();
    for line in shell_lines(script) {
        let code = line.trim_start();
        if code.starts_with('#') {
            continue;
        }
        // The words, up to a comment.
        let words: Vec<&str> = code.split_whitespace().take_while(|w| !w.starts_with('#')).collect();
        for (i, w) in words.iter().enumerate() {
            let target = if let Some(t) = w.strip_prefix(">>").or_else(|| w.strip_prefix('>')) {
                if t.is_empty() {
                    words.get(i + 1).copied()
                } else {
                    Some(t)
                }
            } else {
                None
            };
            if let Some(t) = target.filter(|t| !t.starts_with('&') && absolute(t)) {
                found.push(format!("{t}  <-  {code}"));
            }
        }
        let Some(pos) = words.iter().position(|w| WRITERS.contains(w) || *w == "ln") else { continue };
        let operands: Vec<&str> = words[pos + 1..]
            .iter()
            .take_while(|w| !matches!(**w, "|" | "||" | "&&" | ";" | "2>/dev/null"))
            .filter(|w| !w.starts_with('-'))
            .copied()
            .collect();
        let operands = if words[pos] == "ln" { operands.last().copied().into_iter().collect() } else { operands };
        for o in operands.into_iter().filter(|o| absolute(o)) {
            found.push(format!("{o}  <-  {code}"));
        }
    }
    found
}

// --- running them -----------------------------------------------------------------------------

/// One launch: a scratch root, the stand-ins, the environment.
struct Launch {
    dir: tempfile::TempDir,
    tier: Tier,
    /// The stack's AllowImageTag.
    allow_tag: bool,
    /// The stack's OtlpEndpoint.
    otlp: &'static str,
}

/// What a run did.
#[derive(Debug)]
struct Run {
    status: Option<i32>,
    elapsed: Duration,
    /// The stand-ins' log: one line per command.
    calls: Vec<String>,
    /// The messages copied to CloudWatch Logs.
    shipped: Vec<String>,
    /// The script's stdout and stderr.
    output: String,
}

impl Run {
    /// The `--lifecycle-action-result` of every launch-hook completion.
    fn completions(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.starts_with("aws autoscaling complete-lifecycle-action "))
            .map(|c| {
                for (flag, want) in [
                    ("--lifecycle-hook-name", "blipserve-launch"),
                    ("--auto-scaling-group-name", GROUP),
                    ("--instance-id", INSTANCE_ID),
                ] {
                    assert!(c.contains(&format!("{flag} {want} ")), "{c}: want {flag} {want}");
                }
                c.rsplit_once("--lifecycle-action-result ").map(|(_, r)| r.trim().to_string()).unwrap_or_default()
            })
            .collect()
    }

    fn called(&self, prefix: &str) -> usize {
        self.calls.iter().filter(|c| c.starts_with(prefix)).count()
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- calls:\n{}\n--- shipped:\n{}\n--- output:\n{}",
            self.status,
            self.elapsed,
            self.calls.join("\n"),
            self.shipped.join("\n---\n"),
            self.output
        )
    }
}

impl Launch {
    fn new(tier: Tier) -> Launch {
        let dir = tempfile::tempdir().expect("scratch directory");
        for sub in ["stubs", "root/dev", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        for (name, body) in STUBS {
            let path = dir.path().join("stubs").join(name);
            std::fs::write(&path, body).expect("write stand-in");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        if tier == Tier::Worker {
            // inf2.xlarge: one Inferentia2 device.
            std::fs::write(dir.path().join("root/dev/neuron0"), b"").expect("device");
        }
        Launch { dir, tier, allow_tag: false, otlp: "" }
    }

    fn allowing_tags(self) -> Launch {
        Launch { allow_tag: true, ..self }
    }

    fn tracing_to(self, otlp: &'static str) -> Launch {
        Launch { otlp, ..self }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Runs `script` (bash `args`) with the stand-ins, the scratch root, short bounds and `env`.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let d = self.dir.path();
        let log = d.join("calls.log");
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(d.join("calls.log.events"));
        let output_path = d.join("output.log");
        let output = std::fs::File::create(&output_path).expect("output file");
        let path = format!("{}:{}:/usr/bin:/bin", d.join("stubs").display(), self.path("usr/local/bin").display());
        let mut cmd = Command::new("bash");
        cmd.args(args)
            .current_dir(d)
            .env_clear()
            .env("PATH", path)
            .env("HOME", d)
            .env("TMPDIR", d.join("tmp"))
            .env("LANG", "C.UTF-8")
            .env("BLIPSERVE_ROOT", self.root())
            .env("STUB_LOG", &log)
            .env("STUB_INSTANCE_ID", INSTANCE_ID)
            .env("STUB_GROUP", GROUP)
            // The bounds, shortened.
            .env("SYNC_TIMEOUT_S", "2")
            .env("PULL_TIMEOUT_S", "2")
            .env("CALL_TIMEOUT_S", "1")
            .env("RETRY_DELAY_S", "0")
            .env("IMDS_WAIT_S", "2")
            .env("DEVICE_WAIT_S", "1")
            .env("POLL_S", "0.2")
            .env("READY_TIMEOUT_S", "2")
            .env("MAX_RESTARTS", "3")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("dup"))
            .stderr(output)
            // Its own process group, so that a run past the limit is killed whole.
            .process_group(0);
        let start = Instant::now();
        let mut child = cmd.spawn().expect("start bash");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status.code();
            }
            if start.elapsed() > RUN_LIMIT {
                // SAFETY: kill(2) on the process group this test created for the run.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                panic!(
                    "{}: the launch ran past {RUN_LIMIT:?}: a wait without a bound\n{}",
                    self.tier.template(),
                    std::fs::read_to_string(&output_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let shipped = read(&d.join("calls.log.events"))
            .lines()
            .flat_map(|l| {
                let events: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("put-log-events got invalid JSON ({e}): {l}"));
                events.as_array().expect("an array of events").clone()
            })
            .map(|e| {
                assert!(e["timestamp"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "event timestamp in ms: {e}");
                e["message"].as_str().expect("event message").to_string()
            })
            .collect();
        Run {
            status,
            elapsed,
            calls: read(&log).lines().map(String::from).collect(),
            shipped,
            output: read(&output_path),
        }
    }

    /// The first boot: the user data.
    fn boot(&self, image: &str, env: &[(&str, &str)]) -> Run {
        let script = self.dir.path().join("user-data.sh");
        std::fs::write(&script, user_data(self.tier, image, self.allow_tag, self.otlp)).expect("write user data");
        self.run(&[script.to_str().expect("utf-8 path")], env)
    }

    /// A later start of the instance: blipserve-launch.service.
    fn restart(&self, env: &[(&str, &str)]) -> Run {
        self.start("blipserve-launch.service", "blipserve-launch", env)
    }

    /// What systemd runs for `unit` (written by the first boot): its ExecStart `program`, with
    /// the tier's settings file as its EnvironmentFile.
    fn start(&self, unit: &str, program: &str, env: &[(&str, &str)]) -> Run {
        let settings = match self.tier {
            Tier::Worker => "etc/blipserve/worker.conf",
            Tier::Gateway => "etc/blipserve/gateway.conf",
        };
        let conf = self.path(settings);
        assert!(conf.is_file(), "the first boot wrote no {}", conf.display());
        let text = std::fs::read_to_string(self.path(&format!("etc/systemd/system/{unit}"))).expect("the unit");
        assert!(text.contains(&format!("EnvironmentFile=/{settings}\n")), "{text}");
        assert!(text.contains(&format!("ExecStart=/usr/local/bin/{program}\n")), "{text}");
        let command = format!("set -a; . '{}'; set +a; exec {program}", conf.display());
        self.run(&["-c", &command], env)
    }

    /// The `docker run` of blipserve.service after a first boot that went into service.
    fn container(&self) -> String {
        let boot = self.boot(&image_by_digest(), &[]);
        assert_eq!(boot.status, Some(0), "{}", boot.describe());
        let run = self.start("blipserve.service", "blipserve-run", &[]);
        assert_eq!(run.status, Some(0), "{}", run.describe());
        let docker: Vec<&String> = run.calls.iter().filter(|c| c.starts_with("docker run ")).collect();
        assert_eq!(docker.len(), 1, "one container\n{}", run.describe());
        docker[0].clone()
    }
}

/// A container's command line traces to `otlp` (naming the instance) or, with none, not at all;
/// docker's options come before the image.
fn assert_traces(command: &str, otlp: &str) {
    let image = command.find(&image_by_digest()).unwrap_or_else(|| panic!("no image in {command}"));
    match command.find("--env BLIPSERVE_OTLP_ENDPOINT=") {
        None => assert!(otlp.is_empty(), "no BLIPSERVE_OTLP_ENDPOINT with OtlpEndpoint={otlp}: {command}"),
        Some(at) => {
            let want = format!(
                "--env BLIPSERVE_OTLP_ENDPOINT={otlp} --env OTEL_RESOURCE_ATTRIBUTES=service.instance.id={INSTANCE_ID} "
            );
            assert!(!otlp.is_empty() && command[at..].starts_with(&want), "want {want:?} in {command}");
            assert!(at < image, "the environment goes before the image: {command}");
        }
    }
    assert!(!command.contains("OTEL_") || !otlp.is_empty(), "{command}");
}

/// The run ended in exactly one completion of the launch hook with `result`, within the bound,
/// and said why: the first line of what went to CloudWatch Logs contains `reason`.
fn assert_outcome(run: &Run, result: &str, reason: &str) {
    assert_eq!(run.completions(), [result], "one {result} of the launch hook\n{}", run.describe());
    assert!(run.elapsed < Duration::from_secs(15), "took {:?}\n{}", run.elapsed, run.describe());
    assert_eq!(run.status == Some(0), result == "CONTINUE", "exit status\n{}", run.describe());
    let first = run.shipped.iter().map(|m| m.lines().next().unwrap_or_default()).collect::<Vec<_>>();
    assert!(
        first.len() == 1 && first[0].starts_with(&format!("blipserve launch: {result}: ")) && first[0].contains(reason),
        "the launch log copied to CloudWatch Logs once, saying {result}: …{reason}…\n{}",
        run.describe()
    );
    assert!(
        run.shipped[0].contains("--- the end of "),
        "the end of the launch log goes with the reason\n{}",
        run.describe()
    );
    assert_eq!(run.called("aws logs put-log-events"), 1, "{}", run.describe());
}

/// Nothing of a launch landed on this machine (in case the static check missed a path).
fn assert_machine_untouched() {
    for p in [
        "/etc/blipserve/worker.conf",
        "/etc/blipserve/gateway.conf",
        "/etc/systemd/system/blipserve-launch.service",
        "/usr/local/bin/blipserve-launch",
        "/usr/local/bin/blipserve-hook",
        "/var/lib/blipserve/prepared",
        "/var/log/blipserve/launch.log",
    ] {
        assert!(!Path::new(p).exists(), "{p} exists on this machine: a launch script wrote outside $BLIPSERVE_ROOT");
    }
}

fn abandons(tier: Tier, env: &[(&str, &str)], reason: &str) -> Run {
    let launch = Launch::new(tier);
    let run = launch.boot(&image_by_digest(), env);
    assert_outcome(&run, "ABANDON", reason);
    assert_machine_untouched();
    run
}

// --- the worker -------------------------------------------------------------------------------

#[test]
fn worker_goes_into_service_once_ready() {
    let launch = Launch::new(Tier::Worker);
    let run = launch.boot(&image_by_digest(), &[]);
    assert_outcome(&run, "CONTINUE", "ready after");
    assert_eq!(run.called("aws s3 sync "), 1, "{}", run.describe());
    assert_eq!(run.called(&format!("docker pull --quiet {}", image_by_digest())), 1, "{}", run.describe());
    assert_eq!(run.called("systemctl start blipserve.service"), 1, "{}", run.describe());
    assert_eq!(
        run.called("systemctl enable blipserve-launch.service"),
        1,
        "the boot unit is enabled\n{}",
        run.describe()
    );
    let conf = std::fs::read_to_string(launch.path("etc/blipserve/worker.conf")).expect("worker.conf");
    assert!(conf.contains(&format!("IMAGE={}\n", image_by_digest())), "{conf}");
    assert!(conf.contains(&format!("LOG_GROUP={LOG_GROUP}\n")), "{conf}");
    assert!(launch.path("opt/blipserve/model/manifest.json").is_file());
    assert_machine_untouched();
}

#[test]
fn worker_abandons_when_the_model_sync_fails() {
    let run = abandons(Tier::Worker, &[("STUB_FAIL", "s3-sync")], "sync_model failed 3 times");
    assert_eq!(run.called("aws s3 sync "), 3, "three attempts\n{}", run.describe());
    assert!(run.shipped[0].contains("AccessDenied"), "the error goes with the reason\n{}", run.describe());
}

#[test]
fn worker_abandons_when_the_model_sync_hangs() {
    let run = abandons(Tier::Worker, &[("STUB_HANG", "s3-sync")], "sync_model failed 3 times");
    assert!(run.elapsed >= Duration::from_secs(6), "3 attempts of SYNC_TIMEOUT_S each: {:?}", run.elapsed);
}

#[test]
fn worker_abandons_when_the_model_has_no_manifest() {
    abandons(Tier::Worker, &[("STUB_FAIL", "no-manifest")], "has no manifest.json");
}

#[test]
fn worker_abandons_when_the_ecr_login_fails() {
    let run = abandons(Tier::Worker, &[("STUB_FAIL", "ecr-login")], "ecr_login failed 3 times");
    assert_eq!(run.called("docker pull"), 0, "{}", run.describe());
}

#[test]
fn worker_abandons_when_the_image_pull_fails() {
    abandons(Tier::Worker, &[("STUB_FAIL", "docker-pull")], "pull_image failed 3 times");
}

#[test]
fn worker_abandons_when_the_image_pull_hangs() {
    abandons(Tier::Worker, &[("STUB_HANG", "docker-pull")], "pull_image failed 3 times");
}

#[test]
fn worker_abandons_when_never_ready() {
    let run = abandons(Tier::Worker, &[("STUB_FAIL", "never-ready")], "no /ready within 2 s");
    assert!(run.called("curl http://127.0.0.1:8080/ready") >= 2, "it polled\n{}", run.describe());
}

#[test]
fn worker_abandons_a_crash_loop() {
    abandons(Tier::Worker, &[("STUB_FAIL", "crash-loop")], "(a crash loop)");
}

#[test]
fn worker_abandons_without_its_devices() {
    let launch = Launch::new(Tier::Worker);
    std::fs::remove_file(launch.path("dev/neuron0")).expect("no device");
    let run = launch.boot(&image_by_digest(), &[]);
    assert_outcome(&run, "ABANDON", "inf2.xlarge has 1 neuron device(s) (2 cores), 0 present");
    assert_eq!(run.called("systemctl start blipserve.service"), 0, "{}", run.describe());
}

#[test]
fn worker_refuses_an_image_tag_unless_allowed() {
    let launch = Launch::new(Tier::Worker);
    let run = launch.boot(&format!("{REGISTRY}/blipserve:0.1.0-neuron"), &[]);
    assert_outcome(&run, "ABANDON", "names a tag");
    assert_eq!(run.called("docker pull"), 0, "{}", run.describe());

    let launch = Launch::new(Tier::Worker);
    let run =
        launch.boot(&format!("999999999999.dkr.ecr.us-east-1.amazonaws.com/blipserve@sha256:{}", "cd".repeat(32)), &[]);
    assert_outcome(&run, "ABANDON", "is not in this account's registry");

    // AllowImageTag=true: the documented opt-in.
    let launch = Launch::new(Tier::Worker).allowing_tags();
    let run = launch.boot(&format!("{REGISTRY}/blipserve:0.1.0-neuron"), &[]);
    assert_outcome(&run, "CONTINUE", "ready after");
}

/// A warm-pool instance: the first boot prepares it (model, image) and completes the hook
/// without starting the service; a later start (leaving the warm pool: the boot unit) starts
/// the service, downloads nothing again and completes the hook once /ready answers.
#[test]
fn worker_warm_pool_prepares_then_starts_on_a_later_boot() {
    let launch = Launch::new(Tier::Worker);
    let warm = launch.boot(&image_by_digest(), &[("STUB_TARGET_STATE", "Warmed:Stopped")]);
    assert_outcome(&warm, "CONTINUE", "into the warm pool (Warmed:Stopped)");
    assert_eq!(warm.called("aws s3 sync "), 1, "{}", warm.describe());
    assert_eq!(warm.called("docker pull"), 1, "{}", warm.describe());
    assert_eq!(
        warm.called("systemctl start blipserve.service"),
        0,
        "not serving in the warm pool\n{}",
        warm.describe()
    );

    let start = launch.restart(&[("STUB_TARGET_STATE", "InService")]);
    assert_outcome(&start, "CONTINUE", "ready after");
    assert_eq!(start.called("aws s3 sync"), 0, "the model is on the disk already\n{}", start.describe());
    assert_eq!(start.called("docker pull"), 0, "the image is on the disk already\n{}", start.describe());
    assert_eq!(start.called("systemctl start blipserve.service"), 1, "{}", start.describe());

    // A later start that cannot serve abandons too.
    let broken = launch.restart(&[("STUB_FAIL", "crash-loop")]);
    assert_outcome(&broken, "ABANDON", "(a crash loop)");
    assert_machine_untouched();
}

/// blipserve.service runs `blipserve worker` on the synced model, publishing to CloudWatch; with
/// OtlpEndpoint set it also traces there, each span naming the instance.
#[test]
fn worker_container_serves_the_model_and_traces_only_when_asked() {
    for otlp in ["", "http://127.0.0.1:4318"] {
        let command = Launch::new(Tier::Worker).tracing_to(otlp).container();
        let image = image_by_digest();
        for part in [
            // inf2.xlarge's one device (under the scratch root here), its two cores.
            "--volume /opt/blipserve/model:/model:ro --device /dev/neuron0 --env NEURON_RT_VISIBLE_CORES=0-1 ",
            &format!(" {image} worker --model /model --device neuron --listen 0.0.0.0 --port 8080 "),
            " --cloudwatch --cloudwatch-backend neuron",
        ] {
            assert!(command.contains(part), "want {part:?} in {command}");
        }
        assert_traces(&command, otlp);
    }
    assert_machine_untouched();
}

// --- the gateway ------------------------------------------------------------------------------

/// The gateway's blipserve.service: its configuration and keys; traces only with OtlpEndpoint.
#[test]
fn gateway_container_reads_its_configuration_and_traces_only_when_asked() {
    for otlp in ["", "https://otel.internal.example:4318/base"] {
        let command = Launch::new(Tier::Gateway).tracing_to(otlp).container();
        for part in [
            "--env-file /etc/blipserve/keys.env ",
            &format!(" {} gateway --config /etc/blipserve/gateway.toml", image_by_digest()),
        ] {
            assert!(command.contains(part), "want {part:?} in {command}");
        }
        assert_traces(&command, otlp);
    }
    assert_machine_untouched();
}

#[test]
fn gateway_goes_into_service_with_its_api_keys() {
    let launch = Launch::new(Tier::Gateway);
    let run = launch.boot(&image_by_digest(), &[]);
    assert_outcome(&run, "CONTINUE", "answers /health");
    assert_eq!(
        run.called(&format!("aws secretsmanager get-secret-value --region us-east-1 --secret-id {API_KEYS_SECRET} ")),
        1,
        "{}",
        run.describe()
    );
    let keys = launch.path("etc/blipserve/keys.env");
    assert_eq!(std::fs::read_to_string(&keys).expect("keys.env"), "BLIPSERVE_API_KEYS=key-one,key-two\n");
    let mode = std::fs::metadata(&keys).expect("keys.env").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keys.env is root's only");
    assert!(!run.output.contains("key-one") && !run.shipped.iter().any(|m| m.contains("key-one")), "a key was logged");
    let config = std::fs::read_to_string(launch.path("etc/blipserve/config/gateway.toml")).expect("gateway.toml");
    assert!(config.contains("port = 8080"), "{config}");
    assert_eq!(run.called("systemctl enable --now blipserve.service"), 1, "{}", run.describe());
    assert_machine_untouched();
}

#[test]
fn gateway_abandons_when_the_secret_fetch_fails() {
    let run = abandons(Tier::Gateway, &[("STUB_FAIL", "secret")], "get_api_keys failed 3 times");
    assert_eq!(run.called("aws secretsmanager get-secret-value"), 3, "three attempts\n{}", run.describe());
    assert_eq!(run.called("docker pull"), 0, "{}", run.describe());
}

#[test]
fn gateway_abandons_when_the_secret_fetch_hangs() {
    let run = abandons(Tier::Gateway, &[("STUB_HANG", "secret")], "get_api_keys failed 3 times");
    assert!(run.elapsed >= Duration::from_secs(3), "3 attempts of CALL_TIMEOUT_S each: {:?}", run.elapsed);
}

#[test]
fn gateway_abandons_on_a_secret_that_is_not_keys() {
    let run = abandons(Tier::Gateway, &[("STUB_SECRET", "key-one, key-two")], "is not the API keys");
    assert!(!run.shipped.iter().any(|m| m.contains("key-one")), "a key was logged\n{}", run.describe());
}

#[test]
fn gateway_abandons_when_its_configuration_cannot_be_read() {
    abandons(Tier::Gateway, &[("STUB_FAIL", "config")], "blipserve-config-sync failed 3 times");
}

#[test]
fn gateway_abandons_when_the_ecr_login_fails() {
    abandons(Tier::Gateway, &[("STUB_FAIL", "ecr-login")], "ecr_login failed 3 times");
}

#[test]
fn gateway_abandons_when_the_image_pull_fails() {
    abandons(Tier::Gateway, &[("STUB_FAIL", "docker-pull")], "pull_image failed 3 times");
}

#[test]
fn gateway_abandons_when_never_healthy() {
    abandons(Tier::Gateway, &[("STUB_FAIL", "never-ready")], "no /health within 2 s");
}

#[test]
fn gateway_abandons_a_crash_loop() {
    abandons(Tier::Gateway, &[("STUB_FAIL", "crash-loop")], "(a crash loop)");
}

#[test]
fn gateway_refuses_an_image_tag_unless_allowed() {
    let launch = Launch::new(Tier::Gateway);
    let run = launch.boot(&format!("{REGISTRY}/blipserve:0.1.0-gateway"), &[]);
    assert_outcome(&run, "ABANDON", "names a tag");
}

// --- the harness itself -----------------------------------------------------------------------

/// Every `${Name}` of the user data is either in its `!Sub` variable map or a template
/// parameter, a resource or a pseudo parameter, and the test knows them all.
#[test]
fn the_test_values_cover_every_substitution() {
    for tier in [Tier::Worker, Tier::Gateway] {
        let (text, vars) = user_data_sub(tier);
        let known = values(tier, &image_by_digest(), false);
        for v in vars {
            assert!(known.contains_key(v.as_str()), "{}: !Sub variable {v} has no test value", tier.template());
        }
        // substitute() panics on an unknown name.
        let script = substitute(&text, &known);
        assert!(!script.contains("${!"), "{}", tier.template());
    }
}

/// OtlpEndpoint lands in a settings file that bash sources and systemd reads: its pattern admits
/// a collector's URL and nothing a shell or systemd would act on.
#[test]
fn the_otlp_endpoint_admits_urls_and_nothing_a_shell_acts_on() {
    for tier in [Tier::Worker, Tier::Gateway] {
        let path = repo().join("deploy").join(tier.template());
        let doc: Value = serde_norway::from_str(&std::fs::read_to_string(&path).expect("read template")).expect("YAML");
        let parameter = &doc["Parameters"]["OtlpEndpoint"];
        assert_eq!(parameter["Default"].as_str(), Some(""), "{}: off by default", tier.template());
        let pattern = parameter["AllowedPattern"].as_str().expect("an AllowedPattern");
        // CloudFormation matches the whole value.
        let pattern = regex::Regex::new(&format!("^(?:{pattern})$")).expect("a regular expression");
        for good in ["", "http://127.0.0.1:4318", "https://otel.internal.example:4318/base/", "http://collector_1:4318"]
        {
            assert!(pattern.is_match(good), "{}: {good:?} refused", tier.template());
        }
        for bad in [
            "127.0.0.1:4318",
            "ftp://collector:4318",
            "http://collector:4318 --privileged",
            "http://collector/$(reboot)",
            "http://collector/`id`",
            "http://collector/';reboot;'",
            "http://collector/\"x",
            "http://collector/?token=x",
            "http://collector\nLD_PRELOAD=/tmp/x.so",
        ] {
            assert!(!pattern.is_match(bad), "{}: {bad:?} admitted", tier.template());
        }
    }
}

#[test]
fn the_write_check_finds_absolute_paths() {
    let script = "#!/bin/bash\nmkdir -p /etc/blipserve \"$root/ok\"  # not /etc/c\necho x > /etc/x\ncat >> \"/var/log/y\" <<'EOF'\nnot shell /etc/z\nEOF\nln -sf /snap/bin/aws /usr/local/bin/aws\ncat > \"$root/usr/local/bin/s\" <<'EOF'\n#!/bin/bash\ntouch /opt/q\nEOF\necho ok > /dev/null\n";
    let found = writes_outside_root(script);
    let paths: Vec<&str> = found.iter().map(|f| f.split_whitespace().next().unwrap_or_default()).collect();
    assert_eq!(paths, ["/etc/blipserve", "/etc/x", "\"/var/log/y\"", "/usr/local/bin/aws", "/opt/q"], "{found:#?}");
}

/// EC2 takes 16 KB of user data (before base64): the scripts, with long values (a 255-character
/// model prefix, a long stack name), must leave room.
#[test]
fn the_user_data_fits_in_16_kb() {
    const LIMIT: usize = 16 * 1024;
    for tier in [Tier::Worker, Tier::Gateway] {
        let (text, _) = user_data_sub(tier);
        let mut long = values(tier, &image_by_digest(), false);
        let stack = "s".repeat(128);
        for (name, value) in long.iter_mut() {
            match *name {
                "ModelPrefix" => *value = "m".repeat(255),
                "ModelBucket" => *value = "b".repeat(63),
                "LogGroup" => *value = format!("/blipserve/{stack}"),
                "GatewayConfig" => *value = format!("/blipserve/{stack}/gateway.toml"),
                "ApiKeysSecretArn" | "AdminKeySecretArn" => *value = format!("{API_KEYS_SECRET}{}", "k".repeat(200)),
                _ => {}
            }
        }
        let size = substitute(&text, &long).len();
        assert!(size + 2048 <= LIMIT, "{}: {size} bytes of user data, want 2 KB under {LIMIT}", tier.template());
    }
}
