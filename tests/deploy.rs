//! The deployment speaks the publisher's language. Every scaling policy, alarm, dashboard widget
//! and IAM condition in `deploy/*.yaml` that names a metric of ours uses exactly the namespace,
//! metric names and dimension sets of `blipserve_api::cloudwatch`; renaming one on either side fails
//! here. And every load balancer waits at least as long as the service takes to drain, and the
//! pool's workers get every NeuronCore or GPU of their instance type.
//!
//! The templates are parsed as YAML with CloudFormation's short-form tags (`!Ref`, `!Sub`, …)
//! kept as tagged values; dashboard bodies are parsed as JSON once their `${…}` are filled in.
//!
//! (Over 500 lines: most of it is the template walker that finds every metric reference, which
//! the checks share.)

use std::path::PathBuf;

use serde_norway::{Mapping, Value};

use blipserve_api::cloudwatch::{
    DIMENSION_SETS, DIM_BACKEND, DIM_GROUP, ERRORS, LATENCY, NAMESPACE, OVERLOADED, QUEUE_DEPTH, REQUESTS,
};
use blipserve_api::settings::ShutdownArgs;
use blipserve_testkit::repo;

const METRICS: [&str; 5] = [REQUESTS, ERRORS, OVERLOADED, LATENCY, QUEUE_DEPTH];
/// AWS's own namespaces, which the templates read too. Any other namespace is a typo, or
/// `NAMESPACE` renamed on one side only.
const AWS_NAMESPACES: [&str; 3] = ["AWS/AutoScaling", "AWS/ApplicationELB", "AWS/EC2"];

struct Template {
    file: String,
    doc: Value,
}

impl Template {
    fn resources(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.doc["Resources"].as_mapping().expect("Resources").iter().map(|(id, r)| {
            (id.as_str().expect("logical id"), r["Type"].as_str().expect("resource Type"), &r["Properties"])
        })
    }

    fn has_resource(&self, id: &str, ty: &str) -> bool {
        self.resources().any(|(i, t, _)| i == id && t == ty)
    }

    /// A parameter's default, as a number.
    fn default(&self, parameter: &str) -> Option<f64> {
        let d = self.doc.get("Parameters")?.get(parameter)?.get("Default")?;
        Some(match d {
            Value::Number(n) => n.as_f64().expect("number"),
            Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{}: {parameter} default {s:?}", self.file)),
            other => panic!("{}: {parameter} default {other:?}", self.file),
        })
    }
}

fn templates() -> Vec<Template> {
    let dir = repo().join("deploy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no templates in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read template");
            let file = path.file_name().expect("file name").to_string_lossy().into_owned();
            let doc = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            Template { file, doc }
        })
        .collect()
}

/// Calls `f` on every mapping under `v`, looking through tags.
fn walk<'a>(v: &'a Value, f: &mut dyn FnMut(&'a Mapping)) {
    match v {
        Value::Mapping(m) => {
            f(m);
            m.values().for_each(|x| walk(x, f));
        }
        Value::Sequence(s) => s.iter().for_each(|x| walk(x, f)),
        Value::Tagged(t) => walk(&t.value, f),
        _ => {}
    }
}

/// Calls `f` on every string under `v`, looking through tags.
fn strings<'a>(v: &'a Value, f: &mut dyn FnMut(&'a str)) {
    match v {
        Value::String(s) => f(s),
        Value::Mapping(m) => m.values().for_each(|x| strings(x, f)),
        Value::Sequence(s) => s.iter().for_each(|x| strings(x, f)),
        Value::Tagged(t) => strings(&t.value, f),
        _ => {}
    }
}

/// The names must be written out, not computed: a `!Ref` or `!Sub` here could say anything.
fn literal(v: Option<&Value>, what: &str) -> Result<String, String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{what} is not a literal string: {other:?}")),
        None => Err(format!("{what} is missing")),
    }
}

/// `!Ref Id` → `Id`.
fn ref_target(v: &Value) -> Option<&str> {
    match v {
        Value::Tagged(t) if t.tag == "Ref" => t.value.as_str(),
        Value::Mapping(m) => m.get("Ref").and_then(Value::as_str),
        _ => None,
    }
}

/// The template text of a `!Sub` (short or long form, with or without a variable map).
fn sub_text(v: &Value) -> Option<&str> {
    let inner = match v {
        Value::Tagged(t) if t.tag == "Sub" => &t.value,
        Value::Mapping(m) => m.get("Fn::Sub")?,
        Value::String(s) => return Some(s),
        _ => return None,
    };
    match inner {
        Value::String(s) => Some(s),
        Value::Sequence(s) => s.first()?.as_str(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    ScalingPolicy,
    Alarm,
    Dashboard,
    Other,
}

/// One metric a template names, wherever it names it.
#[derive(Debug)]
struct MetricRef {
    place: String,
    used_by: Use,
    namespace: String,
    metric: String,
    /// Dimension names, sorted.
    dimensions: Vec<String>,
    /// Which Auto Scaling group the AutoScalingGroupName dimension selects (a logical id), when
    /// it says.
    group: Option<String>,
    /// Whether that is an Auto Scaling group of the same template.
    group_is_asg: bool,
    /// A SEARCH expression: every group with these dimensions, none in particular.
    search: bool,
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Metrics named by a CloudFormation metric structure: `{Namespace, MetricName, Dimensions}`
/// (alarms, scaling policies, `MetricStat.Metric`) or a SEARCH expression.
fn yaml_metric_refs(place: &str, used_by: Use, props: &Value, out: &mut Vec<MetricRef>, errors: &mut Vec<String>) {
    walk(props, &mut |m| {
        if let Some(expression) = m.get("Expression") {
            match expression.as_str() {
                Some(e) => search_refs(place, used_by, e, out, errors),
                None => errors.push(format!("{place}: Expression is not a literal string")),
            }
        }
        if !m.contains_key("MetricName") {
            return;
        }
        let fields = (|| -> Result<MetricRef, String> {
            let namespace = literal(m.get("Namespace"), "Namespace")?;
            let metric = literal(m.get("MetricName"), "MetricName")?;
            let mut dimensions = Vec::new();
            let mut group = None;
            for d in m.get("Dimensions").and_then(Value::as_sequence).into_iter().flatten() {
                let name = literal(d.get("Name"), "dimension Name")?;
                if name == DIM_GROUP {
                    group = d.get("Value").and_then(ref_target).map(str::to_string);
                }
                dimensions.push(name);
            }
            dimensions.sort();
            Ok(MetricRef {
                place: place.to_string(),
                used_by,
                namespace,
                metric,
                dimensions,
                group,
                group_is_asg: false,
                search: false,
            })
        })();
        match fields {
            Ok(r) => out.push(r),
            Err(e) => errors.push(format!("{place}: {e}")),
        }
    });
}

/// `SEARCH('{Namespace,Dim1,Dim2} MetricName="Name"', …)`: the schema in braces selects metrics
/// with exactly those dimensions.
fn search_refs(place: &str, used_by: Use, expression: &str, out: &mut Vec<MetricRef>, errors: &mut Vec<String>) {
    for (i, _) in expression.match_indices("SEARCH(") {
        let rest = &expression[i..];
        let schema = rest.find('{').zip(rest.find('}')).map(|(a, b)| &rest[a + 1..b]);
        let metric = rest.split_once("MetricName=\"").and_then(|(_, r)| r.split_once('"')).map(|(m, _)| m);
        let (Some(schema), Some(metric)) = (schema, metric) else {
            errors.push(format!(
                "{place}: a SEARCH needs a {{Namespace,Dimensions}} schema and MetricName=\"…\": {expression}"
            ));
            continue;
        };
        let mut parts = schema.split(',').map(|s| s.trim().trim_matches('"').to_string());
        let namespace = parts.next().unwrap_or_default();
        let mut dimensions: Vec<String> = parts.collect();
        dimensions.sort();
        out.push(MetricRef {
            place: place.to_string(),
            used_by,
            namespace,
            metric: metric.to_string(),
            dimensions,
            group: None,
            group_is_asg: false,
            search: true,
        });
    }
}

/// A dashboard body is JSON inside a `!Sub`: a `${…}` inside a JSON string stays as it is, one
/// outside (a number) becomes 0.
fn dashboard_json(sub: &str) -> Result<serde_json::Value, String> {
    let mut json = String::with_capacity(sub.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = sub.chars().peekable();
    while let Some(c) = chars.next() {
        if !in_string && c == '$' && chars.peek() == Some(&'{') {
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
            json.push('0');
            continue;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        }
        json.push(c);
    }
    serde_json::from_str(&json).map_err(|e| format!("dashboard body is not JSON: {e}"))
}

/// Metrics of a dashboard widget's `metrics` rows: `[Namespace, MetricName, Dim, Value, …,
/// {options}]`, or `[{"expression": …}]`.
fn dashboard_metric_refs(place: &str, body: &serde_json::Value, out: &mut Vec<MetricRef>, errors: &mut Vec<String>) {
    fn rows<'a>(v: &'a serde_json::Value, f: &mut dyn FnMut(&'a serde_json::Value)) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::Array(metrics)) = o.get("metrics") {
                    metrics.iter().for_each(&mut *f);
                }
                o.values().for_each(|x| rows(x, f));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| rows(x, f)),
            _ => {}
        }
    }
    rows(body, &mut |row| {
        let Some(row) = row.as_array() else {
            errors.push(format!("{place}: a metrics row is not an array: {row}"));
            return;
        };
        let words: Vec<&str> = row.iter().map_while(serde_json::Value::as_str).collect();
        if words.is_empty() {
            match row.first().and_then(|o| o.get("expression")).and_then(serde_json::Value::as_str) {
                Some(e) => search_refs(place, Use::Dashboard, e, out, errors),
                None => errors.push(format!("{place}: a metrics row names no metric: {row:?}")),
            }
            return;
        }
        if words.iter().any(|w| *w == "." || *w == "...") || words.len() < 2 || !words.len().is_multiple_of(2) {
            errors.push(format!("{place}: write each metrics row in full (no \".\" or \"...\"): {row:?}"));
            return;
        }
        let mut dimensions = Vec::new();
        let mut group = None;
        for pair in words[2..].chunks(2) {
            if pair[0] == DIM_GROUP {
                group = pair[1].strip_prefix("${").and_then(|v| v.strip_suffix('}')).map(str::to_string);
            }
            dimensions.push(pair[0].to_string());
        }
        dimensions.sort();
        out.push(MetricRef {
            place: place.to_string(),
            used_by: Use::Dashboard,
            namespace: words[0].to_string(),
            metric: words[1].to_string(),
            dimensions,
            group,
            group_is_asg: false,
            search: false,
        });
    });
}

/// Every metric every template names, with the problems met while collecting them.
fn metric_refs(templates: &[Template]) -> (Vec<MetricRef>, Vec<String>) {
    let (mut refs, mut errors) = (Vec::new(), Vec::new());
    for t in templates {
        let first = refs.len();
        for (id, ty, props) in t.resources() {
            let place = format!("{} {id}", t.file);
            let used_by = match ty {
                "AWS::AutoScaling::ScalingPolicy" => Use::ScalingPolicy,
                "AWS::CloudWatch::Alarm" => Use::Alarm,
                "AWS::CloudWatch::Dashboard" => Use::Dashboard,
                _ => Use::Other,
            };
            if used_by == Use::Dashboard {
                match sub_text(&props["DashboardBody"]).map(dashboard_json) {
                    Some(Ok(body)) => dashboard_metric_refs(&place, &body, &mut refs, &mut errors),
                    Some(Err(e)) => errors.push(format!("{place}: {e}")),
                    None => errors.push(format!("{place}: DashboardBody is neither a string nor a !Sub")),
                }
            } else {
                yaml_metric_refs(&place, used_by, props, &mut refs, &mut errors);
            }
        }
        for r in &mut refs[first..] {
            r.group_is_asg = r.group.as_ref().is_some_and(|g| t.has_resource(g, "AWS::AutoScaling::AutoScalingGroup"));
        }
    }
    (refs, errors)
}

#[test]
fn templates_use_the_publishers_namespace_metrics_and_dimensions() {
    let templates = templates();
    let (refs, mut errors) = metric_refs(&templates);
    let dimension_sets: Vec<Vec<String>> = DIMENSION_SETS.iter().map(|s| sorted(s)).collect();
    let group_only = sorted(&[DIM_GROUP]);

    for r in &refs {
        if r.namespace != NAMESPACE {
            if !AWS_NAMESPACES.contains(&r.namespace.as_str()) {
                errors.push(format!(
                    "{}: namespace {:?} is neither {NAMESPACE:?} (blipserve_api::cloudwatch::NAMESPACE) nor AWS's",
                    r.place, r.namespace
                ));
            }
            continue;
        }
        if !METRICS.contains(&r.metric.as_str()) {
            errors.push(format!(
                "{}: {NAMESPACE} has no metric {:?}; the publisher sends {METRICS:?}",
                r.place, r.metric
            ));
        }
        if !dimension_sets.contains(&r.dimensions) {
            errors.push(format!(
                "{}: {} with dimensions {:?}; the publisher sends {DIMENSION_SETS:?}",
                r.place, r.metric, r.dimensions
            ));
        }
        // Scaling and alarms look at the whole group, whatever the backend.
        if matches!(r.used_by, Use::ScalingPolicy | Use::Alarm) && r.dimensions != group_only {
            errors.push(format!("{}: {} must select on {DIM_GROUP} alone, not {:?}", r.place, r.metric, r.dimensions));
        }
        if !r.search && r.used_by != Use::Other && r.dimensions.iter().any(|d| d == DIM_GROUP) && !r.group_is_asg {
            errors.push(format!(
                "{}: {} selects {DIM_GROUP} {:?}, not the template's Auto Scaling group",
                r.place, r.metric, r.group
            ));
        }
    }

    // Each place the publisher's names must appear, with what must appear there.
    let ours = |used_by: Use| refs.iter().filter(move |r| r.used_by == used_by && r.namespace == NAMESPACE);
    if !ours(Use::ScalingPolicy).any(|r| r.metric == REQUESTS) {
        errors.push(format!("no scaling policy on {NAMESPACE}/{REQUESTS}"));
    }
    for metric in [REQUESTS, ERRORS, LATENCY, OVERLOADED] {
        if !ours(Use::Alarm).any(|r| r.metric == metric) {
            errors.push(format!("no alarm on {NAMESPACE}/{metric}"));
        }
    }
    for metric in METRICS {
        if !ours(Use::Dashboard).any(|r| r.metric == metric) {
            errors.push(format!("no dashboard widget shows {NAMESPACE}/{metric}"));
        }
    }
    for set in &dimension_sets {
        if !ours(Use::Dashboard).any(|r| &r.dimensions == set) {
            errors.push(format!("no dashboard widget uses the dimensions {set:?}"));
        }
    }
    assert!(dimension_sets.iter().flatten().any(|d| d == DIM_BACKEND), "{DIM_BACKEND} is in no dimension set");
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}

/// The scaling policy holds requests per second per in-service instance at the target:
/// Requests (Sum) ÷ the period ÷ GroupInServiceInstances.
#[test]
fn scaling_policy_tracks_requests_per_instance() {
    let mut found = 0;
    for t in templates() {
        for (id, ty, props) in t.resources() {
            if ty != "AWS::AutoScaling::ScalingPolicy" {
                continue;
            }
            let spec = &props["TargetTrackingConfiguration"]["CustomizedMetricSpecification"];
            let Some(queries) = spec["Metrics"].as_sequence() else { continue };
            let stat_of = |metric: &str| {
                queries.iter().find(|q| q["MetricStat"]["Metric"]["MetricName"].as_str() == Some(metric)).map(|q| {
                    (q["Id"].as_str().unwrap_or_default(), q["MetricStat"]["Stat"].as_str().unwrap_or_default())
                })
            };
            let Some((requests, "Sum")) = stat_of(REQUESTS) else {
                panic!("{} {id}: no {REQUESTS} with Stat Sum", t.file)
            };
            let Some((instances, _)) = stat_of("GroupInServiceInstances") else {
                panic!("{} {id}: no GroupInServiceInstances", t.file)
            };
            let returned: Vec<&str> = queries
                .iter()
                .filter(|q| q["ReturnData"].as_bool() != Some(false))
                .filter_map(|q| q["Expression"].as_str())
                .collect();
            let expected = format!("{requests} / PERIOD({requests}) / {instances}");
            assert_eq!(returned, [expected.as_str()], "{} {id}: the returned expression", t.file);
            assert_eq!(
                ref_target(&props["TargetTrackingConfiguration"]["TargetValue"]),
                Some("TargetRequestsPerInstance"),
                "{} {id}: the target is the parameter",
                t.file
            );
            found += 1;
        }
    }
    assert!(found > 0, "no target-tracking policy with a customised metric");
}

/// Missing data from the publisher (nothing publishes: every interval sends zeros otherwise) is
/// an alarm, and metric publishing is allowed in our namespace only.
#[test]
fn missing_metrics_alarm_and_namespace_condition() {
    let mut breaching = 0;
    let mut put_metric_statements = 0;
    for t in templates() {
        for (id, ty, props) in t.resources() {
            if ty == "AWS::CloudWatch::Alarm"
                && props["Namespace"].as_str() == Some(NAMESPACE)
                && props["MetricName"].as_str() == Some(REQUESTS)
                && props["TreatMissingData"].as_str() == Some("breaching")
            {
                breaching += 1;
            }
            walk(props, &mut |m| {
                let actions = match m.get("Action") {
                    Some(Value::String(a)) => vec![a.as_str()],
                    Some(Value::Sequence(s)) => s.iter().filter_map(Value::as_str).collect(),
                    _ => return,
                };
                if actions.iter().any(|a| a.starts_with("cloudwatch:")) {
                    assert_eq!(actions, ["cloudwatch:PutMetricData"], "{} {id}: CloudWatch actions", t.file);
                    let condition = &m.get("Condition").expect("PutMetricData without a Condition")["StringEquals"];
                    assert_eq!(condition["cloudwatch:namespace"].as_str(), Some(NAMESPACE), "{} {id}", t.file);
                    put_metric_statements += 1;
                }
            });
            strings(props, &mut |s| {
                if let Some((_, rest)) = s.split_once("--cloudwatch-namespace") {
                    let value = rest.trim_start_matches(['=', ' ']).split_whitespace().next();
                    assert_eq!(value, Some(NAMESPACE), "{} {id}: --cloudwatch-namespace", t.file);
                }
            });
        }
    }
    assert!(breaching > 0, "no alarm on {NAMESPACE}/{REQUESTS} with TreatMissingData: breaching");
    assert!(put_metric_statements > 0, "no IAM statement allows cloudwatch:PutMetricData");
}

/// The service's default for a flag of [`ShutdownArgs`], as its clap declaration says (the one
/// place the defaults are written).
fn shutdown_default(id: &str) -> f64 {
    use clap::Args;
    let cmd = ShutdownArgs::augment_args(clap::Command::new("blipserve"));
    let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap_or_else(|| panic!("ShutdownArgs has no {id}"));
    let default = arg.get_default_values().first().unwrap_or_else(|| panic!("{id} has no default"));
    let default = default.to_str().unwrap_or_else(|| panic!("{id}: default {default:?}"));
    default.parse::<u64>().unwrap_or_else(|_| panic!("{id}: default {default:?} is not a whole number")) as f64
}

/// A deregistered instance keeps its in-flight requests until the load balancer's deregistration
/// delay ends; the service needs its drain delay plus its shutdown grace at most. The delay must
/// cover that, and the service must be started with the template's values.
#[test]
fn deregistration_delay_covers_drain_and_shutdown_grace() {
    let (default_grace_s, default_drain_ms) =
        (shutdown_default("shutdown_grace_s"), shutdown_default("drain_delay_ms"));
    let mut target_groups = 0;
    for t in templates() {
        let grace_s = t.default("ShutdownGraceSeconds").unwrap_or(default_grace_s);
        let drain_ms = t.default("DrainDelayMs").unwrap_or(default_drain_ms);
        if let Some(g) = t.default("ShutdownGraceSeconds") {
            assert_eq!(g, default_grace_s, "{}: ShutdownGraceSeconds default = the service's", t.file);
            let user_data: Vec<String> = t
                .resources()
                .filter(|(_, ty, _)| *ty == "AWS::EC2::LaunchTemplate")
                .filter_map(|(_, _, p)| sub_text(&p["LaunchTemplateData"]["UserData"]["Fn::Base64"]).map(String::from))
                .collect();
            for needle in ["--shutdown-grace-s", "${ShutdownGraceSeconds}", "--drain-delay-ms", "${DrainDelayMs}"] {
                assert!(user_data.iter().any(|u| u.contains(needle)), "{}: user data lacks {needle}", t.file);
            }
        }
        for (id, ty, props) in t.resources() {
            if ty != "AWS::ElasticLoadBalancingV2::TargetGroup" {
                continue;
            }
            target_groups += 1;
            // Workers are checked on their readiness (model loaded, inference working, not
            // draining); gateways on their own health, never their upstreams' (a pool's outage
            // must not replace every gateway).
            let want = if t.file.ends_with("api.yaml") { "/health" } else { "/ready" };
            assert_eq!(props["HealthCheckPath"].as_str(), Some(want), "{} {id}: health check", t.file);
            let attribute = props["TargetGroupAttributes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|a| a["Key"].as_str() == Some("deregistration_delay.timeout_seconds"))
                .unwrap_or_else(|| panic!("{} {id}: no deregistration_delay.timeout_seconds", t.file));
            let parameter = ref_target(&attribute["Value"])
                .unwrap_or_else(|| panic!("{} {id}: the deregistration delay is not a parameter", t.file));
            let delay_s = t.default(parameter).unwrap_or_else(|| panic!("{}: {parameter} has no default", t.file));
            let needed_s = grace_s + (drain_ms / 1000.0).ceil();
            assert!(
                delay_s >= needed_s,
                "{} {id}: deregistration delay {delay_s} s < drain delay {drain_ms} ms + shutdown grace {grace_s} s",
                t.file
            );
        }
    }
    assert!(target_groups > 0, "no target groups");
}

#[test]
fn dashboard_json_fills_in_substitutions() {
    let body = dashboard_json(r#"{"a": "${X} and ${Y.Arn}", "b": ${N}, "c": "\"${Z}\""}"#).unwrap();
    assert_eq!(body["a"], "${X} and ${Y.Arn}");
    assert_eq!(body["b"], 0);
    assert_eq!(body["c"], "\"${Z}\"");
}

/// The gateway's pools on AWS are internal load balancers: every `[[pools]]` entry the api stack
/// renders is marked `load_balancer = true`, so that one failed request does not eject a pool.
#[test]
fn the_api_stack_marks_its_pools_as_load_balancers() {
    let api = templates().into_iter().find(|t| t.file == "api.yaml").expect("deploy/api.yaml");
    let mut rendered = Vec::new();
    strings(&api.doc["Resources"]["GatewayConfig"]["Properties"]["Value"], &mut |s| {
        if s.contains("[[pools]]") {
            rendered.push(s.to_string());
        }
    });
    assert!(!rendered.is_empty(), "api.yaml: no gateway configuration with [[pools]] found");
    for config in rendered {
        let pools = config.matches("[[pools]]").count();
        assert_eq!(
            config.matches("load_balancer = true").count(),
            pools,
            "api.yaml: every pool is a load balancer:\n{config}"
        );
    }
}

/// NeuronCores per inf2 size: every Inferentia2 device has 2 NeuronCores (NeuronCore-v2), and
/// inf2.xlarge and inf2.8xlarge have 1 device, inf2.24xlarge 6, inf2.48xlarge 12 (AWS's Inf2
/// instance-type page; the Neuron documentation's Inf2 architecture page).
const INF2_NEURON_CORES: [(&str, u64); 4] =
    [("inf2.xlarge", 2), ("inf2.8xlarge", 2), ("inf2.24xlarge", 12), ("inf2.48xlarge", 24)];
const NEURON_CORES_PER_DEVICE: u64 = 2;
/// GPUs per g5 (A10G) and g6 (L4) size (AWS's G5 and G6 instance-type pages).
const GPUS: [(&str, u64); 8] = [
    ("g5.xlarge", 1),
    ("g5.2xlarge", 1),
    ("g5.4xlarge", 1),
    ("g5.12xlarge", 4),
    ("g6.xlarge", 1),
    ("g6.2xlarge", 1),
    ("g6.4xlarge", 1),
    ("g6.12xlarge", 4),
];

fn lookup(table: &[(&str, u64)], instance_type: &str) -> Option<u64> {
    table.iter().find(|(t, _)| *t == instance_type).map(|&(_, n)| n)
}

/// A count in a mapping, written as a number or a string.
fn count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `!FindInMap [Map, !Ref Parameter, Key]` (short or long form) → `(Map, Parameter, Key)`.
fn find_in_map(v: &Value) -> Option<(&str, &str, &str)> {
    let args = match v {
        Value::Tagged(t) if t.tag == "FindInMap" => &t.value,
        Value::Mapping(m) => m.get("Fn::FindInMap")?,
        _ => return None,
    };
    match args.as_sequence()?.as_slice() {
        [map, key, field] => Some((map.as_str()?, ref_target(key)?, field.as_str()?)),
        _ => None,
    }
}

/// The body of the quoted heredoc `cat > PATH <<'EOF'` … `EOF` in a script.
fn heredoc<'a>(script: &'a str, path: &str) -> Option<&'a str> {
    let start = format!("cat > {path} <<'EOF'\n");
    let (_, body) = script.split_once(start.as_str())?;
    body.split_once("\nEOF\n").map(|(b, _)| b)
}

/// The instance types of a rule `Assert: !Contains [[types…], !Ref InstanceType]`.
fn rule_instance_types<'a>(t: &'a Template, rule: &str) -> Vec<&'a str> {
    let contains = &t.doc["Rules"][rule]["Assertions"][0]["Assert"];
    assert!(
        matches!(contains, Value::Tagged(c) if c.tag == "Contains") && ref_target(&contains[1]) == Some("InstanceType"),
        "{}: rule {rule} is not `!Contains [[types…], !Ref InstanceType]`",
        t.file
    );
    contains[0]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: rule {rule} lists no instance types", t.file))
        .iter()
        .map(|v| v.as_str().expect("instance type"))
        .collect()
}

/// The pool uses every accelerator of its instance type. `Mappings.Accelerators` has every type
/// `InstanceType` allows (a `!FindInMap` on a missing key fails only at deploy time), with each
/// inf2 size's NeuronCores and devices and each g5/g6 size's GPUs; the stack rules allow the same
/// types per backend. The user data looks the type up, writes the counts to worker.conf, passes
/// `NEURON_RT_VISIBLE_CORES=0-(cores - 1)` into the container (the worker runs one replica per
/// core, without `--replicas`), and checks at boot that the devices are there.
#[test]
fn the_pool_uses_every_neuron_core_and_gpu_of_its_instance_type() {
    let pool = templates().into_iter().find(|t| t.file == "pool.yaml").expect("deploy/pool.yaml");
    let mut errors = Vec::new();
    let allowed: Vec<&str> = pool.doc["Parameters"]["InstanceType"]["AllowedValues"]
        .as_sequence()
        .expect("pool.yaml: InstanceType has AllowedValues")
        .iter()
        .map(|v| v.as_str().expect("instance type"))
        .collect();
    let table = pool.doc["Mappings"]["Accelerators"].as_mapping().expect("pool.yaml: Mappings.Accelerators");
    let neuron_rule = rule_instance_types(&pool, "NeuronRunsOnInf2");
    let gpu_rule = rule_instance_types(&pool, "GpuRunsOnGpuInstances");

    for ty in &allowed {
        let is_gpu = ty.starts_with("g5.") || ty.starts_with("g6.");
        if ty.starts_with("inf2.") != neuron_rule.contains(ty) {
            errors.push(format!("{ty}: NeuronRunsOnInf2 must allow it if and only if it is an inf2 type"));
        }
        if is_gpu != gpu_rule.contains(ty) {
            errors.push(format!("{ty}: GpuRunsOnGpuInstances must allow it if and only if it is a g5/g6 type"));
        }
        let Some(entry) = table.get(*ty) else {
            errors.push(format!("InstanceType allows {ty}, which Mappings.Accelerators lacks (!FindInMap would fail)"));
            continue;
        };
        // (Devices, Cores)
        let expected = if ty.starts_with("inf2.") {
            let Some(cores) = lookup(&INF2_NEURON_CORES, ty) else {
                errors.push(format!("InstanceType allows {ty}: add its NeuronCores to INF2_NEURON_CORES"));
                continue;
            };
            (cores / NEURON_CORES_PER_DEVICE, cores)
        } else if is_gpu {
            let Some(gpus) = lookup(&GPUS, ty) else {
                errors.push(format!("InstanceType allows {ty}: add its GPUs to GPUS"));
                continue;
            };
            (gpus, gpus)
        } else {
            (0, 0) // CPU instances: the worker sizes itself from the vCPUs.
        };
        let found = (count(&entry["Devices"]), count(&entry["Cores"]));
        if found != (Some(expected.0), Some(expected.1)) {
            errors.push(format!(
                "Mappings.Accelerators {ty}: (Devices, Cores) = {found:?}, expected {expected:?} \
                 (inf2: {NEURON_CORES_PER_DEVICE} NeuronCores per Inferentia2 device)"
            ));
        }
    }
    for ty in table.keys().filter_map(Value::as_str) {
        if !allowed.contains(&ty) {
            errors.push(format!("Mappings.Accelerators has {ty}, which InstanceType does not allow"));
        }
    }
    for ty in neuron_rule.iter().chain(&gpu_rule) {
        if !allowed.contains(ty) {
            errors.push(format!("a stack rule names {ty}, which InstanceType does not allow"));
        }
    }

    // The user data: the lookup, worker.conf, the container's environment and devices.
    let (_, _, launch) =
        pool.resources().find(|(_, ty, _)| *ty == "AWS::EC2::LaunchTemplate").expect("pool.yaml: a launch template");
    let user_data = &launch["LaunchTemplateData"]["UserData"]["Fn::Base64"];
    let script = sub_text(user_data).expect("pool.yaml: the user data is a !Sub");
    for key in ["Devices", "Cores"] {
        if find_in_map(&user_data[1][key]) != Some(("Accelerators", "InstanceType", key)) {
            errors.push(format!(
                "user data: the !Sub variable {key} is not !FindInMap [Accelerators, !Ref InstanceType, {key}]"
            ));
        }
    }
    let conf = heredoc(script, "/etc/blipserve/worker.conf").expect("user data writes /etc/blipserve/worker.conf");
    for line in ["DEVICE_COUNT=${Devices}", "CORE_COUNT=${Cores}"] {
        if !conf.lines().any(|l| l == line) {
            errors.push(format!("worker.conf lacks the line {line}"));
        }
    }
    let run = heredoc(script, "/usr/local/bin/blipserve-run").expect("user data writes /usr/local/bin/blipserve-run");
    if !run.contains(". /etc/blipserve/worker.conf") || !run.contains("\"$@\" \"$IMAGE\"") {
        errors.push("blipserve-run must read worker.conf and give docker run its options (\"$@\")".to_string());
    }
    match run.lines().find(|l| !l.trim_start().starts_with('#') && l.contains("NEURON_RT_VISIBLE_CORES=")) {
        None => errors.push("blipserve-run does not pass NEURON_RT_VISIBLE_CORES to the container".to_string()),
        Some(line) => {
            let value: String = line
                .split_once("NEURON_RT_VISIBLE_CORES=")
                .map(|(_, v)| v)
                .unwrap_or_default()
                .split('"')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            // inf2.xlarge: 0-1, inf2.48xlarge: 0-23.
            if !(line.contains("--env ") || line.contains(" -e ")) || value != "0-$((CORE_COUNT-1))" {
                errors.push(format!(
                    "blipserve-run: want `--env \"NEURON_RT_VISIBLE_CORES=0-$(( CORE_COUNT - 1 ))\"`, found: {}",
                    line.trim()
                ));
            }
        }
    }
    if !run.contains("--gpus all") {
        errors.push("blipserve-run does not give the container every GPU (--gpus all)".to_string());
    }
    if run.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("--replicas")) {
        errors.push("blipserve-run sets --replicas: the worker runs one replica per visible core or GPU".to_string());
    }
    if !script.contains("-lt \"$DEVICE_COUNT\"") {
        errors.push("user data: no boot check of the devices present against DEVICE_COUNT".to_string());
    }
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}
