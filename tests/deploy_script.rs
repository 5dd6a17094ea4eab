//! `make deploy` (scripts/deploy.sh) in its dry run: `make deploy DRY_RUN=1 ENV=example` prints
//! every docker, aws and curl command it would run, runs none of them, and exits 0. The printed
//! sequence is checked here: the images are built and pushed before any stack is deployed, the
//! model directories uploaded before the pools, base before the pools before api, the stacks get
//! images by digest (never a tag), and the smoke test through the public load balancer comes last.
//! The parameters the script passes, and those of every `deploy/env/*.json`, are checked against
//! the templates' `Parameters` (every key declared, every parameter without a default given), so
//! the environment files and the templates cannot drift apart. Bad input fails with one line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command with the environment the script reads set only as given.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(repo());
    for var in ["ENV", "DRY_RUN", "DEPLOY_ENV_DIR", "IMAGE_TAG", "BLIPSERVE_API_KEY", "MAKEFLAGS", "MFLAGS"] {
        c.env_remove(var);
    }
    c
}

fn make_deploy(args: &[&str]) -> Output {
    command("make").args(["--no-print-directory", "deploy"]).args(args).output().expect("run make")
}

/// scripts/deploy.sh in a dry run, with the environment files of `env_dir`.
fn script_dry_run(env_dir: &Path) -> Output {
    command("bash")
        .arg("scripts/deploy.sh")
        .env("ENV", "example")
        .env("DRY_RUN", "1")
        .env("DEPLOY_ENV_DIR", env_dir)
        .output()
        .expect("run scripts/deploy.sh")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Splits a printed command line as a shell would: spaces separate words, single quotes quote
/// (`'\''` included); `|` and `||` stay words of their own.
fn split(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if !quoted => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    any = true;
                }
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if any {
        words.push(word);
    }
    words
}

/// The dry run's commands, in order.
fn commands(stdout: &str) -> Vec<Vec<String>> {
    stdout.lines().filter_map(|l| l.strip_prefix("DRY-RUN: ")).map(split).collect()
}

fn starts(cmd: &[String], prefix: &[&str]) -> bool {
    cmd.len() >= prefix.len() && cmd.iter().zip(prefix).all(|(a, b)| a == b)
}

fn flag<'a>(cmd: &'a [String], name: &str) -> Option<&'a str> {
    cmd.iter().position(|w| w == name).and_then(|i| cmd.get(i + 1)).map(String::as_str)
}

/// One stack's deployment: its change set (created from an uploaded template, with these
/// parameters), waited for, executed, and the stack waited for.
struct StackDeploy {
    /// The create-change-set command's index.
    index: usize,
    /// The index of the last command for this stack (the wait for its status).
    end: usize,
    stack: String,
    /// The local template the change set's --template-url was uploaded from.
    template: String,
    params: BTreeMap<String, String>,
    rollback: Option<Json>,
}

/// `https://BUCKET.s3.REGION.amazonaws.com/KEY` → `s3://BUCKET/KEY`.
fn s3_uri(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or_else(|| panic!("template URL {url}"));
    let (host, key) = rest.split_once('/').expect("URL path");
    let bucket = host.split_once(".s3.").unwrap_or_else(|| panic!("not an S3 URL: {url}")).0;
    format!("s3://{bucket}/{key}")
}

fn stack_deploys(cmds: &[Vec<String>]) -> Vec<StackDeploy> {
    let uploads: BTreeMap<&str, (usize, &str)> = cmds
        .iter()
        .enumerate()
        .filter(|(_, c)| starts(c, &["aws", "s3", "cp"]))
        .map(|(i, c)| (c[4].as_str(), (i, c[3].as_str())))
        .collect();
    let mut deploys = Vec::new();
    for (index, c) in
        cmds.iter().enumerate().filter(|(_, c)| starts(c, &["aws", "cloudformation", "create-change-set"]))
    {
        let stack = flag(c, "--stack-name").expect("--stack-name").to_string();
        let change_set = flag(c, "--change-set-name").expect("--change-set-name");
        let url = flag(c, "--template-url").expect("--template-url (pool.yaml is too large for a template body)");
        let (uploaded, template) =
            *uploads.get(s3_uri(url).as_str()).unwrap_or_else(|| panic!("{stack}: {url} was not uploaded"));
        assert!(uploaded < index, "{stack}: the template is uploaded after its change set");
        let params_json: Json =
            serde_json::from_str(flag(c, "--parameters").expect("--parameters")).expect("JSON parameters");
        let mut params = BTreeMap::new();
        for p in params_json.as_array().expect("parameter list") {
            let (k, v) = (p["ParameterKey"].as_str().expect("key"), p["ParameterValue"].as_str().expect("value"));
            assert!(params.insert(k.to_string(), v.to_string()).is_none(), "{stack}: {k} given twice");
        }
        let rollback =
            flag(c, "--rollback-configuration").map(|r| serde_json::from_str(r).expect("JSON rollback configuration"));
        // Then, in this order and before anything else touches another stack: the change set
        // waited for, executed, and the stack waited for.
        let of_stack = |i: usize| flag(&cmds[i], "--stack-name") == Some(&stack);
        let mut at = index;
        for (step, what) in [
            (&["aws", "cloudformation", "wait", "change-set-create-complete"][..], "the change set waited for"),
            (&["aws", "cloudformation", "execute-change-set"][..], "the change set executed"),
            (&["aws", "cloudformation", "describe-stacks"][..], "the stack waited for"),
        ] {
            at += 1;
            assert!(
                at < cmds.len() && starts(&cmds[at], step) && of_stack(at),
                "{stack}: expected {what} after {:?}, got {:?}",
                cmds[at - 1],
                cmds.get(at)
            );
            if step[2] != "describe-stacks" {
                assert_eq!(flag(&cmds[at], "--change-set-name"), Some(change_set), "{stack}: {what}");
            } else {
                assert_eq!(flag(&cmds[at], "--query"), Some("Stacks[0].StackStatus"), "{stack}: {what}");
            }
        }
        deploys.push(StackDeploy { index, end: at, stack, template: template.to_string(), params, rollback });
    }
    deploys
}

fn env_file(name: &str) -> Json {
    let path = repo().join("deploy/env").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read env file")).expect("env file is JSON")
}

fn template(template: &str) -> serde_norway::Value {
    let path = repo().join(template);
    serde_norway::from_str(&std::fs::read_to_string(&path).expect("read template")).expect("template YAML")
}

/// A template's parameters: name → its default, if it has one. Short-form tags (`!Ref`, …) parse
/// as tagged values, which the Parameters section never holds.
fn template_parameters(name: &str) -> BTreeMap<String, Option<String>> {
    template(name)["Parameters"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{name}: no Parameters"))
        .iter()
        .map(|(k, v)| {
            let default = v.get("Default").map(|d| match d {
                serde_norway::Value::String(s) => s.clone(),
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::Bool(b) => b.to_string(),
                other => panic!("{name}: {k:?} default {other:?}"),
            });
            (k.as_str().expect("parameter name").to_string(), default)
        })
        .collect()
}

/// Evaluates a rule's condition or assertion for a stack's parameters, as far as the rules of
/// these templates go (`Equals`, `Not`, `And`, `Or`, `EachMemberEquals` over `Ref`s and strings);
/// None for anything else (`Contains` over instance types: CloudFormation checks those).
fn holds(v: &serde_norway::Value, value_of: &dyn Fn(&str) -> String) -> Option<bool> {
    use serde_norway::Value;
    let Value::Tagged(t) = v else { return None };
    let args = t.value.as_sequence();
    let operand = |x: &Value| -> Option<String> {
        match x {
            Value::String(s) => Some(s.clone()),
            Value::Tagged(r) if r.tag == "Ref" => r.value.as_str().map(value_of),
            _ => None,
        }
    };
    if t.tag == "Equals" {
        let [a, b] = args?.as_slice() else { return None };
        Some(operand(a)? == operand(b)?)
    } else if t.tag == "EachMemberEquals" {
        let [list, item] = args?.as_slice() else { return None };
        let (list, item) = (operand(list)?, operand(item)?);
        Some(list.split(',').all(|x| x == item))
    } else if t.tag == "Not" {
        Some(!holds(args?.first()?, value_of)?)
    } else if t.tag == "And" || t.tag == "Or" {
        let all: Option<Vec<bool>> = args?.iter().map(|x| holds(x, value_of)).collect();
        let all = all?;
        Some(if t.tag == "And" { all.iter().all(|b| *b) } else { all.iter().any(|b| *b) })
    } else {
        None
    }
}

/// The Dockerfile target of a pool's Backend.
fn target_of(backend: &str) -> &'static str {
    match backend {
        "neuron" => "neuron",
        "gpu" => "cuda",
        "cpu" => "cpu",
        other => panic!("unknown Backend {other}"),
    }
}

#[test]
fn dry_run_prints_the_full_sequence_in_order() {
    // Stand-ins that record any call: a dry run must run none of them.
    let stubs = tempfile::tempdir().expect("tempdir");
    let calls = stubs.path().join("calls");
    for tool in ["docker", "aws", "curl"] {
        let path = stubs.path().join(tool);
        std::fs::write(&path, format!("#!/bin/sh\necho {tool} \"$@\" >> '{}'\nexit 1\n", calls.display())).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    let path = format!("{}:{}", stubs.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = command("make")
        .args(["--no-print-directory", "deploy", "DRY_RUN=1", "ENV=example"])
        .env("PATH", path)
        .output()
        .expect("run make");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "make deploy DRY_RUN=1 ENV=example failed: {}\n{stdout}\n{stderr}", out.status);
    assert!(!calls.exists(), "the dry run ran commands:\n{}", std::fs::read_to_string(&calls).unwrap_or_default());
    let cmds = commands(&stdout);
    assert!(!cmds.is_empty(), "no DRY-RUN lines:\n{stdout}\n{stderr}");
    for c in &cmds {
        let programs: Vec<&str> = std::iter::once(c[0].as_str())
            .chain(c.windows(2).filter(|w| w[0] == "|" || w[0] == "||").map(|w| w[1].as_str()))
            .collect();
        for p in programs {
            assert!(["docker", "aws", "curl"].contains(&p), "an unexpected command: {c:?}");
        }
    }
    let env = env_file("example");
    let region = env["region"].as_str().unwrap();
    let registry = format!("{}.dkr.ecr.{region}.amazonaws.com", env["account"].as_str().unwrap());
    let repository = env["repository"].as_str().unwrap();
    let bucket = env["model"]["bucket"].as_str().unwrap();
    let pools = env["pools"].as_array().unwrap();
    assert!(!pools.is_empty());

    // 1. images: logged in, then every target built and pushed.
    let builds: Vec<(usize, &Vec<String>)> =
        cmds.iter().enumerate().filter(|(_, c)| starts(c, &["docker", "buildx", "build"])).collect();
    let login = cmds.iter().position(|c| c.windows(2).any(|w| w == ["docker", "login"])).expect("docker login");
    let mut targets: BTreeSet<&str> =
        pools.iter().map(|p| target_of(p["parameters"]["Backend"].as_str().unwrap())).collect();
    targets.insert("gateway");
    let built: BTreeSet<&str> = builds.iter().map(|(_, c)| flag(c, "--target").expect("--target")).collect();
    assert_eq!(built, targets, "images built");
    for (i, c) in &builds {
        assert!(*i > login, "a build before docker login: {c:?}");
        assert!(c.iter().any(|w| w == "--push"), "a build that does not push: {c:?}");
        let tag = flag(c, "--tag").expect("--tag");
        assert!(tag.starts_with(&format!("{registry}/{repository}:")), "pushed to {tag}");
        assert!(flag(c, "--metadata-file").is_some(), "no --metadata-file (where the digest comes from): {c:?}");
    }

    // 2. models: each pool's directory uploaded, under its content-addressed prefix.
    let syncs: Vec<(usize, &Vec<String>)> =
        cmds.iter().enumerate().filter(|(_, c)| starts(c, &["aws", "s3", "sync"])).collect();
    assert!(!syncs.is_empty(), "no model upload");

    // 3. stacks: base, every pool, api, in that order, each after every build and upload.
    let deploys = stack_deploys(&cmds);
    let templates: Vec<&str> = deploys.iter().map(|d| d.template.as_str()).collect();
    let mut expected = vec!["deploy/base.yaml"];
    expected.extend(std::iter::repeat_n("deploy/pool.yaml", pools.len()));
    expected.push("deploy/api.yaml");
    assert_eq!(templates, expected, "stacks deployed in order");
    let first_deploy = deploys[0].index;
    for (i, c) in builds.iter().chain(&syncs) {
        assert!(*i < first_deploy, "{c:?} comes after a stack deploy");
    }
    for w in deploys.windows(2) {
        assert!(w[0].end < w[1].index, "{} starts before {} is deployed", w[1].stack, w[0].stack);
    }
    let (base, api) = (&deploys[0], &deploys[deploys.len() - 1]);
    // The pools and the api stack roll back when their alarms go off (an update in the dry run).
    for d in &deploys[1..] {
        let triggers = d.rollback.as_ref().map(|r| r["RollbackTriggers"].clone()).unwrap_or_default();
        let triggers = triggers.as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(
            !triggers.is_empty() && triggers.iter().all(|t| t["Type"] == "AWS::CloudWatch::Alarm"),
            "{}: no rollback triggers: {:?}",
            d.stack,
            d.rollback
        );
    }
    assert_eq!(base.stack, env["base"]["stack"].as_str().unwrap());
    assert_eq!(api.stack, env["api"]["stack"].as_str().unwrap());

    let image_refs = |d: &StackDeploy| -> Vec<String> {
        d.params.values().filter(|v| v.contains(repository) && v.contains(&registry)).cloned().collect()
    };
    for (pool, d) in pools.iter().zip(&deploys[1..deploys.len() - 1]) {
        assert_eq!(d.stack, pool["stack"].as_str().unwrap());
        assert_eq!(d.params.get("BaseStack").map(String::as_str), Some(base.stack.as_str()), "{}: BaseStack", d.stack);
        for (k, v) in pool["parameters"].as_object().unwrap() {
            let want = match v {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(d.params.get(k), Some(&want), "{}: {k} from the env file", d.stack);
        }
        // The pool's model: uploaded before, from its own directory, to the prefix it is given.
        let prefix = d.params.get("ModelPrefix").expect("ModelPrefix");
        assert_eq!(d.params.get("ModelBucket").map(String::as_str), Some(bucket));
        let dest = format!("s3://{bucket}/{prefix}");
        let dir = pool["model_dir"].as_str().unwrap();
        assert!(
            syncs.iter().any(|(_, c)| c[3] == dir && c[4] == dest),
            "{}: no `aws s3 sync {dir} {dest}` before it",
            d.stack
        );
        // The image by digest: the build of the pool's backend.
        let target = target_of(pool["parameters"]["Backend"].as_str().unwrap());
        let images = image_refs(d);
        assert_eq!(images.len(), 1, "{}: one image parameter: {:?}", d.stack, d.params);
        assert!(
            images[0].starts_with(&format!("{registry}/{repository}@sha256:")) && images[0].contains(target),
            "{}: image {} is not the {target} image by digest",
            d.stack,
            images[0]
        );
    }
    assert_eq!(api.params.get("BaseStack").map(String::as_str), Some(base.stack.as_str()), "api: BaseStack");
    for pool in pools {
        let slot = pool["api_parameter"].as_str().unwrap();
        assert_eq!(api.params.get(slot).map(String::as_str), pool["stack"].as_str(), "api: {slot}");
    }
    let images = image_refs(api);
    assert_eq!(images.len(), 1, "api: one image parameter: {:?}", api.params);
    assert!(images[0].starts_with(&format!("{registry}/{repository}@sha256:")) && images[0].contains("gateway"));
    for d in &deploys {
        for (k, v) in &d.params {
            assert!(!v.contains(&format!("{repository}:")), "{}: {k}={v} names an image by tag", d.stack);
        }
        assert_ne!(d.params.get("AllowImageTag").map(String::as_str), Some("true"), "{}: tags allowed", d.stack);
    }

    // 4. the smoke test, last: the api stack's URL, /health, /ready, then /v1/detect.
    let url = cmds
        .iter()
        .position(|c| {
            starts(c, &["aws", "cloudformation", "describe-stacks"])
                && flag(c, "--stack-name") == Some(&api.stack)
                && flag(c, "--query").is_some_and(|q| q.contains("`Url`"))
        })
        .expect("the api stack's Url read");
    assert!(url > api.end, "the Url is read before the api stack is deployed");
    let curls: Vec<(usize, &Vec<String>)> = cmds.iter().enumerate().filter(|(_, c)| c[0] == "curl").collect();
    let urls: Vec<&str> = curls.iter().map(|(_, c)| c.last().unwrap().as_str()).collect();
    assert_eq!(urls.len(), 3, "three requests: {urls:?}");
    for (u, path) in urls.iter().zip(["/health", "/ready", "/v1/detect"]) {
        assert!(u.ends_with(path), "{u} is not {path}");
    }
    assert!(curls[0].0 > url, "a request before the Url is known");
    assert_eq!(curls[2].0, cmds.len() - 1, "the smoke test is not last");
    let detect = curls[2].1;
    for c in &curls {
        assert!(flag(c.1, "--max-time").is_some() && flag(c.1, "--retry").is_some(), "unbounded request: {:?}", c.1);
    }
    // The API key: from the gateways' secret, given to curl in a file, never on a command line.
    if let Some(secret) = api.params.get("ApiKeysSecretArn") {
        let read = cmds
            .iter()
            .position(|c| {
                starts(c, &["aws", "secretsmanager", "get-secret-value"]) && flag(c, "--secret-id") == Some(secret)
            })
            .expect("the API key read from ApiKeysSecretArn");
        assert!(read < curls[2].0, "the API key is read after /v1/detect");
        assert!(
            flag(detect, "--header").is_some_and(|h| h.starts_with('@')),
            "/v1/detect without the key file: {detect:?}"
        );
    }
    assert!(!stdout.contains("Bearer"), "a key on a command line:\n{stdout}");
    let form: Vec<&str> = detect.windows(2).filter(|w| w[0].starts_with("--form")).map(|w| w[1].as_str()).collect();
    let image = env["smoke"]["image"].as_str().unwrap();
    assert!(form.iter().any(|f| f.starts_with(&format!("image=@{image}"))), "detect form {form:?}");
    assert!(form.iter().any(|f| f.starts_with("question=")), "detect form {form:?}");
}

/// Every key of every environment file exists in the template it is passed to, and every
/// parameter without a default is given, by the file or the script (as the dry run prints).
#[test]
fn parameters_match_the_templates() {
    let [base, pool, api] = ["deploy/base.yaml", "deploy/pool.yaml", "deploy/api.yaml"].map(template_parameters);
    let check_keys =
        |file: &str, what: &str, keys: Vec<&str>, template: &BTreeMap<String, Option<String>>, name: &str| {
            for k in keys {
                assert!(template.contains_key(k), "{file}: {what} {k} is not a parameter of {name}");
            }
        };
    let dir = repo().join("deploy/env");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/env")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("example.json")), "no deploy/env/example.json");
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let env: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("JSON");
        fn keys(v: &Json) -> Vec<&str> {
            v["parameters"].as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
        }
        check_keys(&file, "base.parameters", keys(&env["base"]), &base, "base.yaml");
        check_keys(&file, "api.parameters", keys(&env["api"]), &api, "api.yaml");
        for (i, p) in env["pools"].as_array().expect("pools").iter().enumerate() {
            check_keys(&file, &format!("pools[{i}].parameters"), keys(p), &pool, "pool.yaml");
            let slot = p["api_parameter"].as_str().expect("api_parameter");
            check_keys(&file, &format!("pools[{i}].api_parameter"), vec![slot], &api, "api.yaml");
        }
    }

    let out = make_deploy(&["DRY_RUN=1", "ENV=example"]);
    assert!(out.status.success(), "dry run failed: {}", text(&out.stderr));
    let deploys = stack_deploys(&commands(&text(&out.stdout)));
    assert!(!deploys.is_empty());
    for d in &deploys {
        let template = template_parameters(&d.template);
        for k in d.params.keys() {
            assert!(template.contains_key(k), "{}: {k} is not a parameter of {}", d.stack, d.template);
        }
        for (k, default) in &template {
            assert!(
                default.is_some() || d.params.contains_key(k),
                "{}: {} needs {k}, which is not given",
                d.stack,
                d.template
            );
        }
        // The template's Rules (AMI pinned, a certificate, the clients named, …) hold.
        let value_of = |k: &str| -> String {
            d.params.get(k).cloned().or_else(|| template.get(k).cloned().flatten()).unwrap_or_default()
        };
        let doc = self::template(&d.template);
        for (name, rule) in doc.get("Rules").and_then(|r| r.as_mapping()).into_iter().flatten() {
            if rule.get("RuleCondition").is_some_and(|c| holds(c, &value_of) != Some(true)) {
                continue;
            }
            for a in rule["Assertions"].as_sequence().expect("Assertions") {
                assert_ne!(
                    holds(&a["Assert"], &value_of),
                    Some(false),
                    "{}: rule {} of {} fails: {}",
                    d.stack,
                    name.as_str().unwrap_or_default(),
                    d.template,
                    a["AssertDescription"].as_str().unwrap_or_default()
                );
            }
        }
    }
}

#[test]
fn unknown_or_missing_env_fails_with_a_message() {
    for (args, message) in [
        (&["DRY_RUN=1", "ENV=no-such-env"][..], "unknown ENV 'no-such-env'"),
        (&["DRY_RUN=1"][..], "ENV is required"),
        (&["DRY_RUN=1", "ENV=../example"][..], "not an environment name"),
        (&["DRY_RUN=maybe", "ENV=example"][..], "DRY_RUN must be 0 or 1"),
    ] {
        let out = make_deploy(args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "make deploy {args:?} succeeded:\n{stdout}");
        let line: Vec<&str> = stderr.lines().filter(|l| l.starts_with("deploy: ")).collect();
        assert_eq!(line.len(), 1, "make deploy {args:?}: not one line:\n{stderr}");
        assert!(line[0].contains(message), "make deploy {args:?}: {:?} does not say {message:?}", line[0]);
        assert!(!stdout.contains("DRY-RUN:"), "make deploy {args:?} went on:\n{stdout}");
    }
}

/// A copy of example.json, changed by `edit`, in a directory of its own.
fn edited_example(edit: impl FnOnce(&mut Json)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = env_file("example");
    edit(&mut env);
    std::fs::write(dir.path().join("example.json"), serde_json::to_string_pretty(&env).unwrap()).unwrap();
    dir
}

#[test]
fn a_bad_env_file_fails_with_one_line() {
    type Edit = fn(&mut Json);
    let cases: [(Edit, &str); 6] = [
        (|e| drop(e["api"].as_object_mut().unwrap().remove("stack")), "missing required key api.stack"),
        (|e| drop(e.as_object_mut().unwrap().remove("pools")), "missing required key pools"),
        (|e| e["account"] = "1234".into(), "account"),
        (|e| e["pools"][0]["parameters"]["Backend"] = "tpu".into(), "pools[0].parameters.Backend"),
        (
            |e| e["pools"][0]["parameters"]["ModelPrefix"] = "models/x".into(),
            "pools[0].parameters.ModelPrefix is set by the script",
        ),
        (|e| e["pools"][1]["stack"] = e["pools"][0]["stack"].clone(), "named twice"),
    ];
    for (edit, message) in cases {
        let dir = edited_example(edit);
        let out = script_dry_run(dir.path());
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{message}: accepted:\n{stdout}");
        assert_eq!(stderr.lines().count(), 1, "{message}: not one line:\n{stderr}");
        assert!(stderr.contains(message), "{message}: {stderr}");
        assert!(!stdout.contains("DRY-RUN:"), "{message}: went on:\n{stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.json"), "{ not json").unwrap();
    let out = script_dry_run(dir.path());
    assert!(!out.status.success() && text(&out.stderr).contains("not valid JSON"), "{}", text(&out.stderr));
}

/// The S3 prefix is the directory's content hash: the same files give the same prefix, one
/// changed byte another; a model exported for another backend is refused.
#[test]
fn model_prefix_is_content_addressed() {
    let models = tempfile::tempdir().expect("tempdir");
    let write_model = |name: &str, target: &str, weights: &str| {
        let d = models.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("manifest.json"), format!("{{\"format\": 2, \"target\": \"{target}\"}}")).unwrap();
        std::fs::write(d.join("weights.bin"), weights).unwrap();
    };
    write_model("neuron-model", "neuron", "a");
    write_model("cuda-model", "cuda", "b");
    let root = models.path().to_path_buf();
    let env_dir = edited_example(|e| {
        for p in e["pools"].as_array_mut().unwrap() {
            let name = if p["parameters"]["Backend"] == "neuron" { "neuron-model" } else { "cuda-model" };
            p["model_dir"] = root.join(name).to_string_lossy().into_owned().into();
        }
    });
    let prefixes = || -> BTreeMap<String, String> {
        let out = script_dry_run(env_dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        stack_deploys(&commands(&text(&out.stdout)))
            .into_iter()
            .filter_map(|d| Some((d.stack, d.params.get("ModelPrefix")?.clone())))
            .collect()
    };
    let first = prefixes();
    assert_eq!(first.len(), 2, "{first:?}");
    for (stack, prefix) in &first {
        let hash = prefix.rsplit('/').next().unwrap();
        assert!(
            hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "{stack}: {prefix} has no content hash"
        );
    }
    assert_eq!(prefixes(), first, "the same files, another prefix");
    write_model("neuron-model", "neuron", "c");
    let second = prefixes();
    for (stack, prefix) in &first {
        if stack.contains("inf2") {
            assert_ne!(&second[stack], prefix, "{stack}: the model changed, the prefix did not");
        } else {
            assert_eq!(&second[stack], prefix, "{stack}: its model did not change, its prefix did");
        }
    }

    write_model("neuron-model", "cpu", "c");
    let out = script_dry_run(env_dir.path());
    assert!(!out.status.success(), "a cpu export accepted for the neuron pool");
    assert!(text(&out.stderr).contains("--target neuron"), "{}", text(&out.stderr));
}
