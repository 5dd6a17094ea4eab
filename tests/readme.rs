//! The README's API examples, run with curl (and the Python ones with the tools environment's
//! tritonclient) against a live server: the documentation stays true.

use std::process::Command;

use blipserve_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_blipserve");

/// The README's "## API" section.
fn api_section() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let api = readme.split("\n## API\n").nth(1).expect("README has an API section");
    api.split("\n## ").next().unwrap().to_string()
}

/// `curl` lines of the `sh` code blocks in the README's "## API" section.
fn api_examples() -> Vec<String> {
    let mut examples = Vec::new();
    let mut in_sh = false;
    for line in api_section().lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("curl ") => examples.push(l.to_string()),
            _ => {}
        }
    }
    examples
}

/// The `python` code blocks of the README's "## API" section, whole.
fn python_examples() -> Vec<String> {
    let api = api_section();
    api.split("```python\n").skip(1).map(|block| block.split("```").next().unwrap().to_string()).collect()
}

#[test]
fn readme_python_examples_work() {
    let examples = python_examples();
    assert!(!examples.is_empty(), "the README shows a tritonclient example");
    let tools = tools_python();
    let server = Server::start(BIN, "tiny", &[]);
    for example in examples {
        let code = example.replace("127.0.0.1:8080", server.base.trim_start_matches("http://"));
        let out = Command::new(&tools).args(["-c", &code]).current_dir(repo()).output().expect("run python");
        assert!(out.status.success(), "{example}\n{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("yes") || stdout.contains("no"), "{example}: {stdout}");
    }
    assert!(server.metric("blipserve_requests_total{outcome=\"ok\"}") >= 1.0, "the example's request was answered");
}

#[test]
fn readme_api_examples_work() {
    assert!(repo().join("models/sample-frame.jpg").exists(), "run `make models` first");
    let examples = api_examples();
    assert!(examples.len() >= 8, "expected the README's curl examples, found {}", examples.len());
    let server = Server::start(BIN, "tiny", &[]);
    for example in examples {
        let command = example.replace("http://127.0.0.1:8080", &server.base);
        let out = Command::new("bash").args(["-c", &command]).current_dir(repo()).output().expect("run bash");
        assert!(out.status.success(), "{example}\n{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if example.contains("/metrics") {
            assert!(stdout.contains("blipserve_requests_total"), "{example}: {stdout}");
            continue;
        }
        let body: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{example}: not JSON ({e}): {stdout}"));
        assert!(body.get("code").is_none(), "{example} failed: {body}");
        if example.contains("/v1/detect") {
            let answers = body["answers"].as_array().unwrap_or_else(|| panic!("{example}: {body}"));
            assert!(!answers.is_empty());
        }
    }
}
