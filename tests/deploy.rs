//! The deployment speaks the publisher's language. Every scaling policy, alarm, dashboard widget
//! and IAM condition in `deploy/*.yaml` that names a metric of ours uses exactly the namespace,
//! metric names and dimension sets of `blipserve_api::cloudwatch`; renaming one on either side fails
//! here (and AWS's metrics are named as AWS publishes them, group metrics collected). And every
//! load balancer waits at least as long as the service takes to drain, and the pool's workers get
//! every NeuronCore or GPU of their instance type.
//!
//! And the templates are operable (issue 12): every launch abandons itself on failure with bounded
//! waits and says why, logs go to a log group per stack, instances take SSM sessions, the gateways'
//! API keys come from Secrets Manager, the public listener hides `/admin*` and `/metrics` and needs
//! a certificate unless told otherwise, AMIs and images are pinned, rollouts keep full capacity and
//! stop on the stacks' alarms, the worker pool has a warm pool, and the alarms cover launches stuck
//! pending, unhealthy hosts, a group at MaxSize, 5xx and p99 latency. (tests/user_data.rs runs the
//! launch scripts.)
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

/// The repository: this package's own directory (its tests are the root package's), so that the
/// templates read are the ones next to this file whatever else shares the target directory.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const METRICS: [&str; 5] = [REQUESTS, ERRORS, OVERLOADED, LATENCY, QUEUE_DEPTH];
/// AWS's own namespaces, which the templates read too. Any other namespace is a typo, or
/// `NAMESPACE` renamed on one side only.
const AWS_NAMESPACES: [&str; 3] = ["AWS/AutoScaling", "AWS/ApplicationELB", "AWS/EC2"];
/// AWS's metrics the templates read, as AWS names them (note `UnHealthyHostCount`), with their
/// dimension sets (sorted). A group metric must also be in its group's MetricsCollection.
const AWS_METRICS: [(&str, &str, &[&str]); 13] = [
    ("AWS/ApplicationELB", "RequestCount", &["LoadBalancer"]),
    ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", &["LoadBalancer"]),
    ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", &["LoadBalancer"]),
    ("AWS/ApplicationELB", "TargetResponseTime", &["LoadBalancer"]),
    ("AWS/ApplicationELB", "HealthyHostCount", &["LoadBalancer", "TargetGroup"]),
    ("AWS/ApplicationELB", "UnHealthyHostCount", &["LoadBalancer", "TargetGroup"]),
    ("AWS/AutoScaling", "GroupInServiceInstances", &[DIM_GROUP]),
    ("AWS/AutoScaling", "GroupDesiredCapacity", &[DIM_GROUP]),
    ("AWS/AutoScaling", "GroupPendingInstances", &[DIM_GROUP]),
    ("AWS/AutoScaling", "GroupTerminatingInstances", &[DIM_GROUP]),
    ("AWS/AutoScaling", "GroupMaxSize", &[DIM_GROUP]),
    ("AWS/AutoScaling", "WarmPoolWarmedCapacity", &[DIM_GROUP]),
    ("AWS/EC2", "CPUUtilization", &[DIM_GROUP]),
];
/// Marks a group dimension written as a `!Sub` until it is resolved to its group.
const SUB_PREFIX: &str = "!Sub ";

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

    /// The Auto Scaling group whose AutoScalingGroupName is this `!Sub` text.
    fn group_named(&self, sub: &str) -> Option<&str> {
        self.resources()
            .find(|(_, ty, p)| {
                *ty == "AWS::AutoScaling::AutoScalingGroup" && sub_text(&p["AutoScalingGroupName"]) == Some(sub)
            })
            .map(|(id, _, _)| id)
    }

    /// A whole resource (with its Condition, DependsOn, UpdatePolicy).
    fn resource(&self, id: &str) -> &Value {
        &self.doc["Resources"][id]
    }

    fn of_type(&self, ty: &'static str) -> impl Iterator<Item = (&str, &Value)> {
        self.resources().filter(move |(_, t, _)| *t == ty).map(|(id, _, p)| (id, p))
    }

    /// The launch template's user data: the `!Sub` value and its text.
    fn user_data(&self) -> Option<(&Value, &str)> {
        let (_, lt) = self.of_type("AWS::EC2::LaunchTemplate").next()?;
        let sub = &lt["LaunchTemplateData"]["UserData"]["Fn::Base64"];
        Some((sub, sub_text(sub)?))
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
                    // `!Ref Group`, or the group's name written out as its AutoScalingGroupName
                    // (`!Sub "${AWS::StackName}-workers"`: what alarms the group's UpdatePolicy
                    // names use, to avoid a dependency cycle); resolved in metric_refs.
                    group = d.get("Value").and_then(|v| {
                        ref_target(v).map(str::to_string).or_else(|| sub_text(v).map(|s| format!("{SUB_PREFIX}{s}")))
                    });
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
            if let Some(name) = r.group.as_deref().and_then(|g| g.strip_prefix(SUB_PREFIX)) {
                r.group = t.group_named(name).map(str::to_string);
            }
            r.group_is_asg = r.group.as_ref().is_some_and(|g| t.has_resource(g, "AWS::AutoScaling::AutoScalingGroup"));
        }
    }
    (refs, errors)
}

/// An AWS metric: a name AWS publishes, with its dimensions; a group metric selects a group of
/// the template that collects it.
fn aws_metric_problems(templates: &[Template], r: &MetricRef, errors: &mut Vec<String>) {
    let Some((_, _, dims)) = AWS_METRICS.iter().find(|(ns, m, _)| *ns == r.namespace && *m == r.metric) else {
        errors.push(format!("{}: {}/{} is not a metric of AWS_METRICS (a typo?)", r.place, r.namespace, r.metric));
        return;
    };
    if r.dimensions != sorted(dims) {
        errors.push(format!(
            "{}: {} with dimensions {:?}, AWS publishes it with {dims:?}",
            r.place, r.metric, r.dimensions
        ));
    }
    if r.namespace == "AWS/AutoScaling" {
        let file = r.place.split_whitespace().next().unwrap_or_default();
        let t = templates.iter().find(|t| t.file == file).expect("the template of a metric");
        let collected = r.group.as_deref().is_some_and(|g| {
            let mut found = false;
            strings(&t.resource(g)["Properties"]["MetricsCollection"], &mut |m| found |= m == r.metric);
            found
        });
        if !collected {
            errors.push(format!(
                "{}: {} of {:?}, which its group does not collect (MetricsCollection)",
                r.place, r.metric, r.group
            ));
        }
    }
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
            } else if !r.search {
                aws_metric_problems(&templates, r, &mut errors);
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
    // Latency is alarmed on as a percentile of the load balancers' TargetResponseTime
    // (alarms_cover_the_common_failures): the service's statistic sets carry none.
    for metric in [REQUESTS, ERRORS, OVERLOADED] {
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

/// The body of the heredoc `cat > "$root/PATH" <<'EOF'` (or `<<EOF`, or without `$root`) … `EOF`
/// in a script.
fn heredoc<'a>(script: &'a str, path: &str) -> Option<&'a str> {
    let body = ["\"$root", ""].iter().find_map(|root| {
        let quote = if root.is_empty() { "" } else { "\"" };
        ["'EOF'", "EOF"].iter().find_map(|eof| {
            let start = format!("cat > {root}{path}{quote} <<{eof}\n");
            script.split_once(start.as_str()).map(|(_, body)| body)
        })
    })?;
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
    let unit = heredoc(script, "/etc/systemd/system/blipserve.service").expect("user data writes blipserve.service");
    for line in ["DEVICE_COUNT=${Devices}", "CORE_COUNT=${Cores}"] {
        if !conf.lines().any(|l| l == line) {
            errors.push(format!("worker.conf lacks the line {line}"));
        }
    }
    let run = heredoc(script, "/usr/local/bin/blipserve-run").expect("user data writes /usr/local/bin/blipserve-run");
    if !unit.contains("EnvironmentFile=/etc/blipserve/worker.conf")
        || !unit.contains("ExecStart=/usr/local/bin/blipserve-run")
    {
        errors.push("blipserve.service must run blipserve-run with worker.conf as its EnvironmentFile".to_string());
    }
    if !run.contains("\"$@\" \"$IMAGE\"") {
        errors.push("blipserve-run must give docker run its options (\"$@\")".to_string());
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
    let launch = heredoc(script, "/usr/local/bin/blipserve-launch").expect("user data writes blipserve-launch");
    if !launch.contains("until [ \"$(present)\" -ge \"$DEVICE_COUNT\" ]") {
        errors.push("blipserve-launch: no check at each start of the devices present against DEVICE_COUNT".to_string());
    }
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}

// --- operability (issue 12) -------------------------------------------------------------------

fn template(file: &str) -> Template {
    templates().into_iter().find(|t| t.file == file).unwrap_or_else(|| panic!("deploy/{file}"))
}

/// The templates that launch instances: (template, its user data text).
fn launching() -> Vec<(Template, String)> {
    let found: Vec<(Template, String)> = templates()
        .into_iter()
        .filter_map(|t| {
            let script = t.user_data()?.1.to_string();
            Some((t, script))
        })
        .collect();
    assert_eq!(found.len(), 2, "pool.yaml and api.yaml launch instances");
    found
}

/// The value of a short- or long-form intrinsic (`!Tag x` or `{Fn::Tag: x}`).
fn intrinsic<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    match v {
        Value::Tagged(t) if t.tag == tag => Some(&t.value),
        Value::Mapping(m) => m.get(format!("Fn::{tag}").as_str()),
        _ => None,
    }
}

/// `!If [Condition, then, else]`.
fn if_parts(v: &Value) -> Option<(&str, &Value, &Value)> {
    match intrinsic(v, "If")?.as_sequence()?.as_slice() {
        [c, a, b] => Some((c.as_str()?, a, b)),
        _ => None,
    }
}

/// `!GetAtt Id.Attribute` → (Id, Attribute).
fn get_att(v: &Value) -> Option<(&str, &str)> {
    match intrinsic(v, "GetAtt")? {
        Value::String(s) => s.split_once('.'),
        Value::Sequence(s) => Some((s.first()?.as_str()?, s.get(1)?.as_str()?)),
        _ => None,
    }
}

/// `!Equals [!Ref Parameter, "value"]`.
fn equals_ref(v: &Value) -> Option<(&str, &str)> {
    match intrinsic(v, "Equals")?.as_sequence()?.as_slice() {
        [r, value] => Some((ref_target(r)?, value.as_str()?)),
        _ => None,
    }
}

/// A number written as one or as a string.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A script's own lines: without the bodies of the heredocs it writes.
fn outside_heredocs(script: &str) -> String {
    let mut own = String::new();
    let mut in_heredoc = false;
    for line in script.lines() {
        if in_heredoc {
            in_heredoc = line != "EOF";
            continue;
        }
        own.push_str(line);
        own.push('\n');
        in_heredoc = line.ends_with("<<'EOF'") || line.ends_with("<<EOF");
    }
    own
}

/// The loops of a script (`until`/`while`, up to their `done`), with the shell scripts it writes.
fn loops(script: &str) -> Vec<String> {
    let lines: Vec<&str> = script.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        if !(code.starts_with("until ") || code.starts_with("while ")) {
            continue;
        }
        let indent = line.len() - code.len();
        if code.ends_with("done") {
            found.push(code.to_string());
            continue;
        }
        let end = lines[i + 1..]
            .iter()
            .position(|l| l.trim_start() == "done" && l.len() - l.trim_start().len() == indent)
            .unwrap_or_else(|| panic!("a loop without its done: {code}"));
        found.push(lines[i..=i + 1 + end].join("\n"));
    }
    found
}

/// Every launch (each template's user data, and the worker's blipserve-launch, which runs at
/// every start) runs under `set -Eeuo pipefail` with an ERR trap that completes the launch hook
/// with ABANDON through blipserve-hook, which says why (log group, syslog) before completing
/// it; every wait has a deadline that abandons, the readiness wait also gives up on a crash
/// loop; every AWS call and image pull on the way is under `timeout`. The hook's timeout is
/// StartupTimeoutSeconds, which the scripts know.
#[test]
fn every_launch_abandons_on_failure_and_every_wait_is_bounded() {
    let mut errors = Vec::new();
    for (t, script) in launching() {
        let f = &t.file;
        let hook =
            heredoc(&script, "/usr/local/bin/blipserve-hook").unwrap_or_else(|| panic!("{f}: no blipserve-hook"));
        for needle in [
            "aws autoscaling complete-lifecycle-action",
            "--lifecycle-hook-name \"$LAUNCH_HOOK\"",
            "--lifecycle-action-result \"$result\"",
            "aws logs put-log-events",
            "--log-group-name \"$LOG_GROUP\"",
            "logger -t blipserve-launch",
        ] {
            if !hook.contains(needle) {
                errors.push(format!("{f}: blipserve-hook lacks {needle}"));
            }
        }
        let own = outside_heredocs(&script);
        let mut launches = vec![("user data", own.as_str())];
        if let Some(launch) = heredoc(&script, "/usr/local/bin/blipserve-launch") {
            launches.push(("blipserve-launch", launch));
        }
        for (what, s) in &launches {
            if !s.lines().any(|l| l == "set -Eeuo pipefail") {
                errors.push(format!(
                    "{f} {what}: not under `set -Eeuo pipefail` (errtrace: the ERR trap in functions too)"
                ));
            }
            let trap = s.lines().find(|l| l.starts_with("trap '") && l.ends_with("' ERR"));
            let handler = trap.and_then(|l| l.strip_prefix("trap '")?.split_whitespace().next());
            match handler {
                None => errors.push(format!("{f} {what}: no ERR trap")),
                Some(h) => {
                    // The handler leads to `blipserve-hook ABANDON`, directly or through abandon().
                    let body = |name: &str| {
                        s.split_once(&format!("{name}() {{")).map(|(_, b)| b.split_once("\n}").map_or(b, |(b, _)| b))
                    };
                    let direct = body(h).unwrap_or_default();
                    let through = direct.contains("abandon ")
                        && body("abandon").is_some_and(|b| b.contains("blipserve-hook ABANDON"));
                    if !direct.contains("blipserve-hook ABANDON") && !through {
                        errors.push(format!("{f} {what}: the ERR trap ({h}) does not complete the hook with ABANDON"));
                    }
                }
            }
        }
        // Bounded waits: every loop but the drain agent's (a daemon, polling for the instance's
        // life) checks a deadline and abandons past it.
        let drain = heredoc(&script, "/usr/local/bin/blipserve-drain").unwrap_or_default();
        let mut ready_waits = 0;
        for l in loops(&script) {
            if !drain.is_empty() && drain.contains(l.lines().next().unwrap_or_default()) && l.contains("Terminated") {
                continue;
            }
            if !(l.contains("deadline") && l.contains("abandon")) {
                errors.push(format!("{f}: a wait without a deadline that abandons:\n{l}"));
            }
            if l.contains("http://127.0.0.1:8080/") {
                ready_waits += 1;
                if !(l.contains("NRestarts") && l.contains("MAX_RESTARTS")) {
                    errors.push(format!("{f}: the readiness wait does not give up on a crash loop:\n{l}"));
                }
            }
        }
        if ready_waits != 1 {
            errors.push(format!("{f}: {ready_waits} readiness waits, want 1"));
        }
        // Every AWS call and image transfer has a timeout.
        for line in script.lines().map(str::trim_start).filter(|l| !l.starts_with('#')) {
            let calls = [
                "aws s3 ",
                "aws ecr ",
                "aws secretsmanager ",
                "aws ssm ",
                "aws autoscaling ",
                "aws logs ",
                "docker pull ",
                "docker login ",
            ];
            if let Some(call) = calls.iter().find(|c| line.contains(*c)) {
                let before = &line[..line.find(call).unwrap_or(0)];
                if !before.contains("timeout ") {
                    errors.push(format!("{f}: `{}` without a timeout: {line}", call.trim()));
                }
            }
        }
        // The launch hook's timeout is the scripts' too.
        let (_, group) = t.of_type("AWS::AutoScaling::AutoScalingGroup").next().expect("a group");
        let launch_hook = group["LifecycleHookSpecificationList"].as_sequence().and_then(|s| {
            s.iter().find(|h| h["LifecycleTransition"].as_str() == Some("autoscaling:EC2_INSTANCE_LAUNCHING"))
        });
        match launch_hook {
            Some(h)
                if ref_target(&h["HeartbeatTimeout"]) == Some("StartupTimeoutSeconds")
                    && h["DefaultResult"].as_str() == Some("ABANDON") => {}
            _ => errors.push(format!("{f}: the launch hook must time out after StartupTimeoutSeconds, to ABANDON")),
        }
        if !script.contains("STARTUP_TIMEOUT_S=${StartupTimeoutSeconds}") {
            errors.push(format!("{f}: the settings lack STARTUP_TIMEOUT_S=${{StartupTimeoutSeconds}}"));
        }
    }
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}

/// Each launching stack has its log group (retention a parameter with a default); the
/// containers log to it (docker's awslogs driver, non-blocking) and so does each launch
/// (blipserve-hook); the instance role may write there and nowhere else in CloudWatch Logs,
/// and carries the SSM managed-instance policy (Session Manager instead of SSH).
#[test]
fn instances_log_to_their_stacks_log_group_and_take_ssm_sessions() {
    let mut errors = Vec::new();
    for (t, script) in launching() {
        let f = &t.file;
        let groups: Vec<(&str, &Value)> = t.of_type("AWS::Logs::LogGroup").collect();
        let [(log_group, props)] = groups.as_slice() else {
            errors.push(format!("{f}: want one AWS::Logs::LogGroup, found {}", groups.len()));
            continue;
        };
        if ref_target(&props["RetentionInDays"]) != Some("LogRetentionDays") || t.default("LogRetentionDays").is_none()
        {
            errors.push(format!(
                "{f}: {log_group}'s RetentionInDays must be the parameter LogRetentionDays, with a default"
            ));
        }
        if !script.contains(&format!("LOG_GROUP=${{{log_group}}}")) {
            errors.push(format!("{f}: the settings lack LOG_GROUP=${{{log_group}}}"));
        }
        let run = heredoc(&script, "/usr/local/bin/blipserve-run").unwrap_or_default();
        for needle in
            ["--log-driver awslogs", "awslogs-group=\"$LOG_GROUP\"", "awslogs-region=\"$REGION\"", "mode=non-blocking"]
        {
            if !run.contains(needle) {
                errors.push(format!("{f}: blipserve-run's docker run lacks {needle}"));
            }
        }
        if script.contains("journald") {
            errors.push(format!("{f}: something still logs to journald only"));
        }
        if !script.contains("exec > >(tee -a \"$root/var/log/blipserve/launch.log\") 2>&1") {
            errors.push(format!("{f}: the user data's output does not go to the launch log"));
        }
        for (role, props) in t.of_type("AWS::IAM::Role") {
            let mut ssm = false;
            strings(&props["ManagedPolicyArns"], &mut |s| {
                ssm |= s.ends_with(":iam::aws:policy/AmazonSSMManagedInstanceCore")
            });
            if !ssm {
                errors.push(format!("{f} {role}: no AmazonSSMManagedInstanceCore"));
            }
            let mut writes_logs = false;
            walk(props, &mut |m| {
                let mut actions = Vec::new();
                strings(m.get("Action").unwrap_or(&Value::Null), &mut |a| actions.push(a.to_string()));
                if !actions.iter().any(|a| a.starts_with("logs:")) {
                    return;
                }
                let mut sorted_actions = actions.clone();
                sorted_actions.sort();
                let resource = m.get("Resource").and_then(get_att);
                if sorted_actions != ["logs:CreateLogStream", "logs:PutLogEvents"]
                    || resource != Some((log_group, "Arn"))
                {
                    errors.push(format!("{f} {role}: logs statement {actions:?} on {resource:?}, want CreateLogStream and PutLogEvents on {log_group}.Arn"));
                }
                writes_logs = true;
            });
            if !writes_logs {
                errors.push(format!("{f} {role}: may not write to {log_group}"));
            }
        }
    }
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}

/// The gateways' API keys: a Secrets Manager secret named by a required parameter, readable by
/// the gateway role alone (that ARN, nothing wider), fetched at boot into a root-only file that
/// docker gives the container as BLIPSERVE_API_KEYS, which the container cannot read itself.
#[test]
fn gateways_take_their_api_keys_from_secrets_manager() {
    let api = template("api.yaml");
    let p = &api.doc["Parameters"]["ApiKeysSecretArn"];
    assert!(p.get("Default").is_none(), "api.yaml: ApiKeysSecretArn is required (no default)");
    assert!(
        p["AllowedPattern"].as_str().is_some_and(|s| s.contains(":secretsmanager:")),
        "api.yaml: ApiKeysSecretArn's pattern"
    );

    let mut readers = Vec::new();
    for (role, props) in api.of_type("AWS::IAM::Role") {
        walk(props, &mut |m| {
            let mut actions = Vec::new();
            strings(m.get("Action").unwrap_or(&Value::Null), &mut |a| actions.push(a.to_string()));
            if actions.iter().any(|a| a.starts_with("secretsmanager:")) {
                assert_eq!(actions, ["secretsmanager:GetSecretValue"], "api.yaml {role}: Secrets Manager actions");
                let secret = m.get("Resource").and_then(ref_target).unwrap_or_else(|| {
                    panic!("api.yaml {role}: {actions:?} on {:?}, not on a secret parameter", m.get("Resource"))
                });
                readers.push(secret.to_string());
            }
        });
    }
    readers.sort();
    assert_eq!(readers, ["AdminKeySecretArn", "ApiKeysSecretArn"], "api.yaml: the secrets the gateways may read");

    let (_, script) = api.user_data().expect("api.yaml: user data");
    let conf = heredoc(script, "/etc/blipserve/gateway.conf").expect("api.yaml: gateway.conf");
    assert!(
        conf.lines().any(|l| l == "API_KEYS_SECRET=${ApiKeysSecretArn}"),
        "api.yaml: gateway.conf lacks API_KEYS_SECRET=${{ApiKeysSecretArn}}"
    );
    for needle in [
        "--secret-id \"$API_KEYS_SECRET\" --query SecretString --output text",
        "umask 077",
        "printf 'BLIPSERVE_API_KEYS=%s\\n' \"$keys\" > \"$root/etc/blipserve/keys.env\"",
    ] {
        assert!(script.contains(needle), "api.yaml: the user data lacks {needle}");
    }
    let run = heredoc(script, "/usr/local/bin/blipserve-run").expect("api.yaml: blipserve-run");
    assert!(run.contains("--env-file /etc/blipserve/keys.env"), "api.yaml: the container does not get the keys");
    assert!(
        !run.contains("--volume /etc/blipserve:"),
        "api.yaml: the container sees keys.env (mount the config directory only)"
    );
}

/// The public endpoint: HTTPS with a modern policy and HTTP redirected when there is a
/// certificate, which a stack rule requires unless AllowPlainHttp is "true"; the listener that
/// serves answers /admin* and /metrics with a fixed 404 (a rule: rules come before the default
/// forward); and the clients are named (CIDRs or a prefix list), never open by default.
#[test]
fn the_public_endpoint_is_closed_by_default() {
    let api = template("api.yaml");
    assert_eq!(
        api.doc["Parameters"]["AllowPlainHttp"]["Default"].as_str(),
        Some("false"),
        "api.yaml: AllowPlainHttp defaults to \"false\""
    );
    let rules = api.doc["Rules"].as_mapping().expect("api.yaml: Rules");
    let certificate_required = rules.values().any(|r| {
        equals_ref(&r["RuleCondition"]) == Some(("AllowPlainHttp", "false"))
            && r["Assertions"].as_sequence().into_iter().flatten().any(|a| {
                intrinsic(&a["Assert"], "Not")
                    .and_then(|n| n.as_sequence())
                    .and_then(|n| n.first())
                    .and_then(equals_ref)
                    == Some(("CertificateArn", ""))
            })
    });
    assert!(certificate_required, "api.yaml: no rule requiring CertificateArn unless AllowPlainHttp is \"true\"");

    // The listeners: which one forwards to the gateways, and when.
    let (mut https, mut http) = (None, None);
    for (id, props) in api.of_type("AWS::ElasticLoadBalancingV2::Listener") {
        match props["Protocol"].as_str() {
            Some("HTTPS") => https = Some((id, props)),
            Some("HTTP") => http = Some((id, props)),
            other => panic!("api.yaml {id}: protocol {other:?}"),
        }
    }
    let (https, https_props) = https.expect("api.yaml: an HTTPS listener");
    let (http, http_props) = http.expect("api.yaml: an HTTP listener");
    assert!(
        https_props["SslPolicy"].as_str().is_some_and(|p| p.starts_with("ELBSecurityPolicy-TLS13-")),
        "api.yaml: a TLS 1.3 policy"
    );
    let certificate =
        api.resource(https)["Condition"].as_str().expect("api.yaml: the HTTPS listener exists with a certificate");
    let (c, with_cert, without) =
        if_parts(&http_props["DefaultActions"]).expect("api.yaml: HTTP's default action depends on the certificate");
    assert_eq!(c, certificate);
    assert_eq!(with_cert[0]["Type"].as_str(), Some("redirect"), "api.yaml: HTTP redirects when there is a certificate");
    assert_eq!(with_cert[0]["RedirectConfig"]["Protocol"].as_str(), Some("HTTPS"));
    assert_eq!(without[0]["Type"].as_str(), Some("forward"));
    assert_eq!(https_props["DefaultActions"][0]["Type"].as_str(), Some("forward"));

    let mut hidden: Vec<String> = Vec::new();
    for (id, props) in api.of_type("AWS::ElasticLoadBalancingV2::ListenerRule") {
        let action = &props["Actions"][0];
        if action["Type"].as_str() != Some("fixed-response") {
            continue;
        }
        assert_eq!(action["FixedResponseConfig"]["StatusCode"].as_str(), Some("404"), "api.yaml {id}: a 404");
        assert!(number(&props["Priority"]).is_some(), "api.yaml {id}: a priority");
        // On the listener that forwards: HTTPS with a certificate, HTTP without.
        let (c, a, b) = if_parts(&props["ListenerArn"])
            .unwrap_or_else(|| panic!("api.yaml {id}: ListenerArn is not !If [{certificate}, HTTPS, HTTP]"));
        assert_eq!(
            (c, ref_target(a), ref_target(b)),
            (certificate, Some(https), Some(http)),
            "api.yaml {id}: on the serving listener"
        );
        for condition in props["Conditions"].as_sequence().into_iter().flatten() {
            if condition["Field"].as_str() == Some("path-pattern") {
                strings(&condition["PathPatternConfig"]["Values"], &mut |v| hidden.push(v.to_string()));
            }
        }
    }
    for path in ["/admin*", "/metrics"] {
        assert!(
            hidden.iter().any(|h| h == path),
            "api.yaml: the public listener does not answer {path} with a 404 (rules: {hidden:?})"
        );
    }

    let base = template("base.yaml");
    for (name, p) in base.doc["Parameters"].as_mapping().expect("Parameters") {
        assert_ne!(p["Default"].as_str(), Some("0.0.0.0/0"), "base.yaml {name:?}: open to the world by default");
    }
    assert_eq!(
        base.doc["Parameters"]["ClientCidrs"]["Type"].as_str(),
        Some("CommaDelimitedList"),
        "base.yaml: several client CIDRs"
    );
    assert!(base.doc["Parameters"]["ClientPrefixListId"].is_mapping(), "base.yaml: a client prefix list");
    assert!(base.doc["Rules"].as_mapping().is_some_and(|r| !r.is_empty()), "base.yaml: a rule that clients are named");
    let (_, sg) = base
        .of_type("AWS::EC2::SecurityGroup")
        .find(|(id, _)| *id == "PublicLoadBalancerSecurityGroup")
        .expect("base.yaml: PublicLoadBalancerSecurityGroup");
    let mut sources = 0;
    walk(&sg["SecurityGroupIngress"], &mut |m| {
        assert!(!m.contains_key("CidrIp"), "base.yaml: a CidrIp ingress on the public load balancer: {m:?}");
        sources += m.contains_key("SourcePrefixListId") as usize;
    });
    assert_eq!(sources, 4, "base.yaml: 80 and 443 from ClientCidrs' prefix list and from ClientPrefixListId");
}

/// Whether `pattern` (an AllowedPattern: these use nothing beyond POSIX extended regular
/// expressions) matches `text` in full, by grep -E.
fn matches(pattern: &str, text: &str) -> bool {
    use std::io::Write;
    let mut child = std::process::Command::new("grep")
        .args(["-Eqx", "--", pattern])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("grep");
    child.stdin.take().expect("stdin").write_all(format!("{text}\n").as_bytes()).expect("write");
    child.wait().expect("grep").success()
}

/// AMIs are pinned per release (AmiId required unless UseLatestAmi is "true", and never an SSM
/// parameter type, which re-resolves on every stack update: the latest AMI is a dynamic
/// reference in the launch template, resolved only when it changes); images by digest, a tag
/// only with AllowImageTag (the launch scripts refuse one otherwise: tests/user_data.rs).
#[test]
fn amis_and_images_are_pinned() {
    let digest = format!("123456789012.dkr.ecr.us-east-1.amazonaws.com/blipserve@sha256:{}", "0a".repeat(32));
    for (t, script) in launching() {
        let f = &t.file;
        let params = t.doc["Parameters"].as_mapping().expect("Parameters");
        for (name, p) in params {
            assert!(
                !p["Type"].as_str().unwrap_or_default().starts_with("AWS::SSM::Parameter::Value"),
                "{f} {name:?}: an SSM parameter type re-resolves on every update"
            );
        }
        let ami = &params["AmiId"];
        assert_eq!((ami["Type"].as_str(), ami["Default"].as_str()), (Some("String"), Some("")), "{f}: AmiId");
        let ami_pattern = ami["AllowedPattern"].as_str().expect("AmiId pattern");
        assert!(
            matches(ami_pattern, "ami-0123456789abcdef0")
                && matches(ami_pattern, "")
                && !matches(ami_pattern, "latest"),
            "{f}: AmiId pattern {ami_pattern}"
        );
        assert_eq!(params["UseLatestAmi"]["Default"].as_str(), Some("false"), "{f}: UseLatestAmi");
        let pinned = t.doc["Rules"].as_mapping().into_iter().flatten().any(|(_, r)| {
            equals_ref(&r["RuleCondition"]) == Some(("UseLatestAmi", "false"))
                && r["Assertions"].as_sequence().into_iter().flatten().any(|a| {
                    intrinsic(&a["Assert"], "Not")
                        .and_then(|n| n.as_sequence())
                        .and_then(|n| n.first())
                        .and_then(equals_ref)
                        == Some(("AmiId", ""))
                })
        });
        assert!(pinned, "{f}: no rule requiring AmiId unless UseLatestAmi is \"true\"");
        let (_, lt) = t.of_type("AWS::EC2::LaunchTemplate").next().expect("launch template");
        let (_, given, latest) = if_parts(&lt["LaunchTemplateData"]["ImageId"])
            .unwrap_or_else(|| panic!("{f}: ImageId is not !If [HasAmiId, AmiId, latest]"));
        assert_eq!(ref_target(given), Some("AmiId"), "{f}: ImageId");
        let mut dynamic = false;
        strings(latest, &mut |s| dynamic |= s.starts_with("{{resolve:ssm:"));
        assert!(dynamic, "{f}: the latest AMI is a {{{{resolve:ssm:…}}}} dynamic reference");

        let image = &params["ImageUri"];
        assert!(image.get("Default").is_none(), "{f}: ImageUri is required");
        let pattern = image["AllowedPattern"].as_str().expect("ImageUri pattern");
        assert!(matches(pattern, &digest), "{f}: ImageUri refuses a digest: {pattern}");
        for bad in [
            digest.replace(&"0a".repeat(32), &"0a".repeat(31)),
            digest.replace("@sha256:", "@sha512:"),
            digest.replace("123456789012.dkr.ecr.us-east-1.amazonaws.com", "docker.io"),
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/blipserve".to_string(),
        ] {
            assert!(!matches(pattern, &bad), "{f}: ImageUri accepts {bad}");
        }
        assert!(
            matches(pattern, "123456789012.dkr.ecr.us-east-1.amazonaws.com/blipserve:0.1.0-neuron"),
            "{f}: a tag (opt-in)"
        );
        assert_eq!(params["AllowImageTag"]["Default"].as_str(), Some("false"), "{f}: tags are opt-in");
        assert!(
            script.contains("IMAGE=${ImageUri}") && script.contains("ALLOW_IMAGE_TAG=${AllowImageTag}"),
            "{f}: the settings"
        );
        assert!(script.contains("[ \"$ALLOW_IMAGE_TAG\" = true ] ||"), "{f}: the launch does not refuse a tag");
    }
}

/// Rollouts: a new launch template version is rolled out by instance refresh (the group's
/// UpdatePolicy) at full capacity — new instances first, old ones replaced only once the new are
/// in service (100 % to 200 %) — with checkpoints, failing (and the stack update rolling back) on
/// the stack's alarms: 5xx, p99 latency, unhealthy hosts, launches stuck pending. Those alarms
/// exist before the group (DependsOn) and their ARNs are exported for a stack-level
/// --rollback-configuration.
#[test]
fn rollouts_keep_full_capacity_and_roll_back_on_the_alarms() {
    for (t, _) in launching() {
        let f = &t.file;
        let (group, _) = t.of_type("AWS::AutoScaling::AutoScalingGroup").next().expect("a group");
        let resource = t.resource(group);
        let policy = &resource["UpdatePolicy"];
        assert!(policy.get("AutoScalingRollingUpdate").is_none(), "{f}: a rolling update and an instance refresh");
        let refresh = &policy["AutoScalingInstanceRefresh"];
        assert_eq!(
            refresh["Strategy"].as_str(),
            Some("Rolling"),
            "{f} {group}: UpdatePolicy.AutoScalingInstanceRefresh"
        );
        let prefs = &refresh["Preferences"];
        assert_eq!(number(&prefs["MinHealthyPercentage"]), Some(100.0), "{f}: full capacity in service throughout");
        assert_eq!(number(&prefs["MaxHealthyPercentage"]), Some(200.0), "{f}: new instances before old ones go");
        let checkpoints: Vec<f64> =
            prefs["CheckpointPercentages"].as_sequence().into_iter().flatten().filter_map(number).collect();
        assert!(
            checkpoints.len() >= 2 && checkpoints.windows(2).all(|w| w[0] < w[1]) && checkpoints.last() == Some(&100.0),
            "{f}: checkpoints {checkpoints:?} (ascending, ending at 100)"
        );
        assert!(number(&prefs["CheckpointDelay"]).is_some_and(|d| d > 0.0), "{f}: a pause at each checkpoint");

        // The alarms, by name: each is an alarm of the template, named so.
        let names: Vec<&str> =
            prefs["AlarmSpecification"]["Alarms"].as_sequence().into_iter().flatten().filter_map(sub_text).collect();
        let mut watched: Vec<&str> = names
            .iter()
            .map(|n| {
                t.of_type("AWS::CloudWatch::Alarm")
                    .find(|(_, p)| sub_text(&p["AlarmName"]) == Some(n))
                    .map(|(id, _)| id)
                    .unwrap_or_else(|| panic!("{f}: the rollout watches {n:?}, which names no alarm of the template"))
            })
            .collect();
        watched.sort();
        let metrics_of = |id: &str| {
            let mut m = Vec::new();
            walk(&t.resource(id)["Properties"], &mut |x| {
                if let Some(name) = x.get("MetricName").and_then(Value::as_str) {
                    m.push(name.to_string());
                }
            });
            m
        };
        for (what, metric) in [
            ("5xx", "HTTPCode_Target_5XX_Count"),
            ("p99 latency", "TargetResponseTime"),
            ("unhealthy hosts", "UnHealthyHostCount"),
            ("launches stuck pending", "GroupPendingInstances"),
        ] {
            assert!(
                watched.iter().any(|a| metrics_of(a).iter().any(|m| m == metric)),
                "{f}: the rollout does not watch {what} ({metric})"
            );
        }
        let mut depends: Vec<&str> = match &resource["DependsOn"] {
            Value::String(s) => vec![s.as_str()],
            Value::Sequence(s) => s.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        depends.sort();
        for a in &watched {
            assert!(depends.contains(a), "{f}: {group} does not depend on {a}, which its rollout watches");
        }
        // Exported, for --rollback-configuration.
        let output = &t.doc["Outputs"]["RollbackAlarmArns"];
        assert!(output["Export"].is_mapping(), "{f}: RollbackAlarmArns is exported");
        let joined =
            intrinsic(&output["Value"], "Join").and_then(|j| j.as_sequence()).expect("RollbackAlarmArns: !Join");
        let mut exported: Vec<&str> = joined[1]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|v| match get_att(v) {
                Some((id, "Arn")) => id,
                other => panic!("{f}: RollbackAlarmArns has {other:?}, not an alarm's Arn"),
            })
            .collect();
        exported.sort();
        assert_eq!(exported, watched, "{f}: RollbackAlarmArns = the alarms the rollout watches");
    }
}

/// The worker pool keeps a warm pool of stopped instances, prepared on their first boot (image
/// pulled, model synced) by blipserve-launch, which a boot unit runs again at every start: it
/// completes the launch hook without serving while the instance goes into the warm pool, and
/// starts blipserve.service (not enabled at boot by itself) when it leaves it.
#[test]
fn the_worker_pool_keeps_a_warm_pool() {
    let pool = template("pool.yaml");
    let pools: Vec<(&str, &Value)> = pool.of_type("AWS::AutoScaling::WarmPool").collect();
    let [(id, wp)] = pools.as_slice() else {
        panic!("pool.yaml: want one AWS::AutoScaling::WarmPool, found {}", pools.len())
    };
    let group = ref_target(&wp["AutoScalingGroupName"]).expect("the warm pool's group");
    assert!(pool.has_resource(group, "AWS::AutoScaling::AutoScalingGroup"), "pool.yaml {id}: of the worker group");
    assert_eq!(wp["PoolState"].as_str(), Some("Stopped"), "pool.yaml {id}: PoolState");
    assert_eq!(ref_target(&wp["MinSize"]), Some("WarmPoolSize"), "pool.yaml {id}: MinSize");
    assert_eq!(
        ref_target(&wp["MaxGroupPreparedCapacity"]),
        Some("WarmPoolSize"),
        "pool.yaml {id}: a fixed size (MaxGroupPreparedCapacity = MinSize)"
    );
    assert!(pool.default("WarmPoolSize").is_some_and(|n| n >= 1.0), "pool.yaml: WarmPoolSize defaults to a warm pool");

    let (_, script) = pool.user_data().expect("pool.yaml: user data");
    let unit =
        heredoc(script, "/etc/systemd/system/blipserve-launch.service").expect("pool.yaml: blipserve-launch.service");
    for line in [
        "ExecStart=/usr/local/bin/blipserve-launch",
        "EnvironmentFile=/etc/blipserve/worker.conf",
        "WantedBy=multi-user.target",
        "RuntimeMaxSec=${StartupTimeoutSeconds}",
    ] {
        assert!(unit.lines().any(|l| l == line), "pool.yaml: blipserve-launch.service lacks {line}");
    }
    assert!(script.contains("systemctl enable blipserve-launch.service"), "pool.yaml: the boot unit is not enabled");
    assert!(
        script.trim_end().ends_with("exec blipserve-launch"),
        "pool.yaml: the first boot does not end in blipserve-launch"
    );
    let service = heredoc(script, "/etc/systemd/system/blipserve.service").expect("blipserve.service");
    assert!(
        !service.contains("[Install]"),
        "pool.yaml: blipserve.service starts at boot by itself (a warm instance would serve)"
    );
    let launch = heredoc(script, "/usr/local/bin/blipserve-launch").expect("blipserve-launch");
    let warm = launch.find("Warmed:*)").expect("pool.yaml: blipserve-launch has no Warmed:* case");
    let start = launch.find("systemctl start blipserve.service").expect("blipserve-launch starts the service");
    let warm_case = &launch[warm..launch[warm..].find(";;").map_or(launch.len(), |e| warm + e)];
    assert!(
        warm < start
            && warm_case.contains("blipserve-hook CONTINUE")
            && warm_case.contains("exit 0")
            && !warm_case.contains("systemctl start"),
        "pool.yaml: a warm-pool instance completes the hook and stops there, not serving:\n{warm_case}"
    );
    let sync = launch.find("retry 3 sync_model").expect("blipserve-launch syncs the model");
    let pull = launch.find("retry 3 pull_image").expect("blipserve-launch pulls the image");
    assert!(sync < warm && pull < warm, "pool.yaml: the warm pool gets instances with the model and the image");
}

/// The alarms on the common failures, per launching stack: instances pending longer than the
/// launch timeout (a group metric collected for it), unhealthy hosts in the group's target group,
/// the group at its MaxSize (metric math on GroupInServiceInstances >= GroupMaxSize), the 5xx
/// rate (HTTPCode_Target_5XX_Count / RequestCount) and the p99 of the load balancer's
/// TargetResponseTime (never the per-minute Maximum of a latency). Their metric names and
/// dimensions are checked against AWS's and the publisher's in
/// templates_use_the_publishers_namespace_metrics_and_dimensions.
#[test]
fn alarms_cover_the_common_failures() {
    let mut errors = Vec::new();
    for (t, _) in launching() {
        let f = &t.file;
        let (group, group_props) = t.of_type("AWS::AutoScaling::AutoScalingGroup").next().expect("a group");
        let group_name = sub_text(&group_props["AutoScalingGroupName"]).unwrap_or_default();
        let selects_group =
            |v: &Value| ref_target(v) == Some(group) || (sub_text(v).is_some() && sub_text(v) == Some(group_name));
        let target_groups: Vec<&str> =
            group_props["TargetGroupARNs"].as_sequence().into_iter().flatten().filter_map(ref_target).collect();
        let (lb, _) = t.of_type("AWS::ElasticLoadBalancingV2::LoadBalancer").next().expect("a load balancer");
        let alarms: Vec<(&str, &Value)> = t.of_type("AWS::CloudWatch::Alarm").collect();
        let dim = |p: &Value, name: &str| -> Option<Value> {
            p["Dimensions"].as_sequence()?.iter().find(|d| d["Name"].as_str() == Some(name)).map(|d| d["Value"].clone())
        };
        // A metric query of a math alarm, by metric name.
        let query = |p: &Value, metric: &str| -> Option<Value> {
            p["Metrics"]
                .as_sequence()?
                .iter()
                .find(|q| q["MetricStat"]["Metric"]["MetricName"].as_str() == Some(metric))
                .cloned()
        };
        let returned = |p: &Value| -> String {
            p["Metrics"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter(|q| q["ReturnData"].as_bool() != Some(false))
                .filter_map(|q| q["Expression"].as_str())
                .collect()
        };

        // Pending too long.
        let pending = alarms.iter().find(|(_, p)| p["MetricName"].as_str() == Some("GroupPendingInstances"));
        match pending {
            None => errors.push(format!("{f}: no alarm on GroupPendingInstances")),
            Some((id, p)) => {
                if !dim(p, DIM_GROUP).is_some_and(|v| selects_group(&v)) {
                    errors.push(format!("{f} {id}: not on {group}"));
                }
                if p["Statistic"].as_str() != Some("Minimum")
                    || p["ComparisonOperator"].as_str() != Some("GreaterThanThreshold")
                    || number(&p["Threshold"]) != Some(0.0)
                    || number(&p["Period"]) != Some(60.0)
                {
                    errors.push(format!("{f} {id}: want Minimum > 0 each minute (an instance pending all along)"));
                }
                // EvaluationPeriods: FindInMap [LaunchTimeouts, !Ref StartupTimeoutSeconds, …],
                // longer than the timeout for every value it may take.
                match find_in_map(&p["EvaluationPeriods"]) {
                    Some((map, "StartupTimeoutSeconds", key)) => {
                        for allowed in t.doc["Parameters"]["StartupTimeoutSeconds"]["AllowedValues"]
                            .as_sequence()
                            .into_iter()
                            .flatten()
                        {
                            let seconds = number(allowed).expect("a number");
                            let minutes = number(&t.doc["Mappings"][map][format!("{seconds}").as_str()][key]);
                            if !minutes.is_some_and(|m| m * 60.0 > seconds) {
                                errors.push(format!("{f} {id}: {map}[{seconds}].{key} = {minutes:?} minutes, not longer than the launch timeout"));
                            }
                        }
                        if p["DatapointsToAlarm"] != p["EvaluationPeriods"] {
                            errors.push(format!("{f} {id}: every datapoint of the window must breach"));
                        }
                    }
                    _ => errors.push(format!(
                        "{f} {id}: EvaluationPeriods is not !FindInMap [LaunchTimeouts, !Ref StartupTimeoutSeconds, …]"
                    )),
                }
            }
        }
        // Unhealthy hosts, in the group's target group.
        let unhealthy = alarms.iter().any(|(_, p)| {
            p["MetricName"].as_str() == Some("UnHealthyHostCount")
                && dim(p, "TargetGroup")
                    .as_ref()
                    .and_then(get_att)
                    .is_some_and(|(tg, a)| target_groups.contains(&tg) && a == "TargetGroupFullName")
                && dim(p, "LoadBalancer").as_ref().and_then(get_att) == Some((lb, "LoadBalancerFullName"))
        });
        if !unhealthy {
            errors.push(format!("{f}: no UnHealthyHostCount alarm on {group}'s target group"));
        }
        // At MaxSize.
        let at_max = alarms.iter().any(|(_, p)| {
            let (Some(i), Some(m)) = (query(p, "GroupInServiceInstances"), query(p, "GroupMaxSize")) else {
                return false;
            };
            let ids = (i["Id"].as_str().unwrap_or("?"), m["Id"].as_str().unwrap_or("?"));
            selects_group(&i["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
                && selects_group(&m["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
                && returned(p).contains(&format!("{} >= {}", ids.0, ids.1))
        });
        if !at_max {
            errors.push(format!("{f}: no alarm on GroupInServiceInstances >= GroupMaxSize of {group}"));
        }
        // The 5xx rate at the load balancer.
        let rate = alarms.iter().any(|(_, p)| {
            let (Some(e), Some(r)) = (query(p, "HTTPCode_Target_5XX_Count"), query(p, "RequestCount")) else {
                return false;
            };
            let expression = returned(p);
            expression.contains(e["Id"].as_str().unwrap_or("?"))
                && expression.contains(&format!("/ {}", r["Id"].as_str().unwrap_or("?")))
        });
        if !rate {
            errors.push(format!("{f}: no alarm on HTTPCode_Target_5XX_Count / RequestCount"));
        }
        // p99 latency at this stack's load balancer.
        let p99 = alarms.iter().any(|(_, p)| {
            p["MetricName"].as_str() == Some("TargetResponseTime")
                && p["ExtendedStatistic"].as_str() == Some("p99")
                && dim(p, "LoadBalancer").as_ref().and_then(get_att) == Some((lb, "LoadBalancerFullName"))
        });
        if !p99 {
            errors.push(format!("{f}: no p99 TargetResponseTime alarm on {lb}"));
        }
    }
    // Never the per-minute Maximum of a latency.
    for t in templates() {
        for (id, p) in t.of_type("AWS::CloudWatch::Alarm") {
            let mut latency = false;
            strings(&p["MetricName"], &mut |m| latency |= m == LATENCY || m == "TargetResponseTime");
            if latency && p["ExtendedStatistic"].as_str().is_none_or(|s| !s.starts_with('p')) {
                errors.push(format!("{} {id}: a latency alarm on {:?}, not a percentile", t.file, p["Statistic"]));
            }
        }
    }
    assert!(errors.is_empty(), "{} problem(s):\n{}", errors.len(), errors.join("\n"));
}
