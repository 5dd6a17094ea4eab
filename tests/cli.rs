//! `blipserve ask` and the binary itself (its allocator), run as the real binary. (That `ask`'s
//! answers are the library's is checked in crates/model/tests/ask.rs, which loads the model
//! in-process.)

use std::process::Command;

use blipserve_testkit::*;

fn blipserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blipserve"))
}

fn frame(dir: &std::path::Path) -> std::path::PathBuf {
    write(dir, "frame.jpg", &jpeg(&synthetic_frame(640, 360, 21), 90, Subsamp::Sub2x2))
}

#[test]
fn ask_generate_mode_gives_text_and_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let image = frame(tmp.path());
    let out = blipserve()
        .args(["ask", "--mode", "generate", "--max-new-tokens", "3", "--model"])
        .arg(model_dir("tiny-static"))
        .arg("--image")
        .arg(&image)
        .arg("what is the dog doing?")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = line["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 3, "{line}");
    assert!(line["answer"].is_string() && line.get("probability").is_none());
}

#[test]
fn ask_reports_bad_input_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = write(tmp.path(), "bad.jpg", b"\xFF\xD8\xFFnot really");
    let out = blipserve()
        .args(["ask", "--model"])
        .arg(model_dir("tiny"))
        .arg("--image")
        .arg(&bad)
        .arg("q?")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains("bad.jpg"), "{err}");

    let image = frame(tmp.path());
    let out = blipserve()
        .args(["ask", "--model"])
        .arg(model_dir("tiny"))
        .arg("--image")
        .arg(&image)
        .arg("   ")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    let out =
        blipserve().args(["ask", "--model", "/nonexistent/model", "--image"]).arg(&image).arg("q?").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("manifest.json"));
}

#[test]
fn help_documents_environment_twins() {
    let out = blipserve().args(["ask", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in ["BLIPSERVE_MODEL", "BLIPSERVE_DEVICE", "BLIPSERVE_THREADS", "BLIPSERVE_NEURON_LIB"] {
        assert!(help.contains(var), "--help lacks {var}:\n{help}");
    }
}

/// The binary's allocator is jemalloc with its settings, and libtorch allocates through it (the
/// dynamic linker binds libtorch's `malloc` to the executable's, not glibc's).
#[test]
fn jemalloc_allocates_for_libtorch_too() {
    let out = blipserve().arg("--version").env("MALLOC_CONF", "stats_print:true").output().unwrap();
    let stats = String::from_utf8_lossy(&out.stderr);
    assert!(stats.contains("opt.oversize_threshold: 0"), "no jemalloc statistics with its settings:\n{stats}");

    let out = blipserve().arg("--version").env("LD_DEBUG", "bindings").output().unwrap();
    let bindings = String::from_utf8_lossy(&out.stderr);
    let bound_to = |library: &str, symbol: &str| {
        let binding = bindings.lines().find(|l| l.contains(library) && l.contains(&format!("symbol `{symbol}'")));
        let binding = binding.unwrap_or_else(|| panic!("no binding of {library}'s {symbol}"));
        binding.split(" to ").nth(1).unwrap_or_default().to_string()
    };
    // libtorch allocates tensors with posix_memalign and frees them in c10.
    for (library, symbol) in
        [("/libtorch_cpu.so", "malloc"), ("/libtorch_cpu.so", "posix_memalign"), ("/libc10.so", "free")]
    {
        let to = bound_to(library, symbol);
        assert!(to.contains(env!("CARGO_BIN_EXE_blipserve")), "{library}'s {symbol} binds to {to}");
    }
}

/// `throughput` measures once and writes its report; with `--repeat-on-stdin` it keeps the model
/// and measures a round per line read (a benchmark's rounds), until its input ends.
#[test]
fn throughput_measures_once_or_a_round_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let image = frame(tmp.path());
    let json = tmp.path().join("report.json");
    let out = blipserve()
        .args(["throughput", "--frames", "3", "--batch-frames", "2", "--model"])
        .arg(model_dir("tiny"))
        .arg("--image")
        .arg(&image)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 frames in"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // 3 frames in batches of 2: two batches, the last of one frame.
    assert_eq!(
        (report["frames"].as_u64(), report["batch_ms"].as_array().map(Vec::len)),
        (Some(3), Some(2)),
        "{report}"
    );

    let mut child = blipserve()
        .args(["throughput", "--frames", "2", "--repeat-on-stdin", "--model"])
        .arg(model_dir("tiny"))
        .arg("--image")
        .arg(&image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\n\n\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "one line once loaded and one per round: {lines:?}");
    assert_eq!(lines[0]["model"], "tiny");
    assert!(lines[0]["load_s"].as_f64().unwrap() > 0.0);
    for round in &lines[1..] {
        assert_eq!(round["frames"], 2, "{round}");
        assert!(round["throughput_per_s"].as_f64().unwrap() > 0.0, "{round}");
    }
}
