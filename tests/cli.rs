//! `blipserve ask`, run as the real binary.

mod common;

use std::process::Command;

use blipserve::model::{AnswerMode, FrameQuestions, LoadOptions, Model};
use common::*;

fn blipserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blipserve"))
}

fn frame(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let bytes = jpeg(&synthetic_frame(640, 360, 21), 90, turbojpeg::Subsamp::Sub2x2);
    (write(dir, "frame.jpg", &bytes), bytes)
}

#[test]
fn ask_prints_one_json_object_per_question_matching_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, bytes) = frame(tmp.path());
    let model = model_dir("tiny");
    let questions = ["is the dog barking?", "is the cat sleeping on the sofa?"];
    let out =
        blipserve().args(["ask", "--model"]).arg(&model).arg("--image").arg(&image).args(questions).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), questions.len());

    let m = Model::load(&model, &LoadOptions::default()).unwrap();
    let pixels = m.preprocessor().pixels(&bytes).unwrap();
    let qs: Vec<_> = questions.iter().map(|q| m.tokenizer().encode(q).unwrap()).collect();
    let want = m.answer(&[FrameQuestions { pixels: &pixels, questions: &qs }], AnswerMode::YesNo).unwrap();
    for ((line, q), a) in lines.iter().zip(questions).zip(&want[0]) {
        assert_eq!(line["question"], q);
        assert_eq!(line["answer"], a.answer.as_str());
        let p = line["probability"].as_f64().unwrap();
        assert!((p - a.probability.unwrap()).abs() < 1e-12, "{p} vs {:?}", a.probability);
        assert!(line["p_yes"].is_f64() && line["p_no"].is_f64());
    }
}

#[test]
fn ask_generate_mode_gives_text_and_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, _) = frame(tmp.path());
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

    let (image, _) = frame(tmp.path());
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
