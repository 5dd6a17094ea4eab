//! `blipserve ask`, run as the real binary, answers as the library does in-process (the
//! binary-only checks of `ask` are the root package's tests/cli.rs).

use std::process::Command;

use blipserve_model::model::{AnswerMode, FrameQuestions, LoadOptions, Model};
use blipserve_testkit::*;

#[test]
fn ask_prints_one_json_object_per_question_matching_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = jpeg(&synthetic_frame(640, 360, 21), 90, turbojpeg::Subsamp::Sub2x2);
    let image = write(tmp.path(), "frame.jpg", &bytes);
    let model = model_dir("tiny");
    let questions = ["is the dog barking?", "is the cat sleeping on the sofa?"];
    let out = Command::new(blipserve_exe())
        .args(["ask", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .args(questions)
        .output()
        .unwrap();
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
