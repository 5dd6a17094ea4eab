//! models/export.py paths the parity tests do not take: a local checkpoint directory as the
//! source, and the Neuron target on a machine without torch-neuronx.

use std::process::Command;

use blipserve_model::model::{AnswerMode, FrameQuestions, LoadOptions, Model};
use blipserve_testkit::*;

#[test]
fn export_from_a_local_checkpoint_reproduces_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("from-checkpoint");
    let tiny = model_dir("tiny");
    // models/tiny holds config.json, model.safetensors and the processor: a checkpoint.
    let status = Command::new(python())
        .args(["models/export.py".as_ref(), tiny.as_os_str(), out.as_os_str()])
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success());

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["source"]["kind"], "checkpoint");

    let a = Model::load(&tiny, &LoadOptions::default()).unwrap();
    let b = Model::load(&out, &LoadOptions::default()).unwrap();
    let frame = jpeg(&synthetic_frame(500, 300, 31), 90, turbojpeg::Subsamp::Sub2x2);
    let questions = ["is the dog barking?", "is the cat on the sofa next to the window?"];
    let answers = |m: &Model| {
        let pixels = m.preprocessor().pixels(&frame).unwrap();
        let qs: Vec<_> = questions.iter().map(|q| m.tokenizer().encode(q).unwrap()).collect();
        let batch = [FrameQuestions { pixels: &pixels, questions: &qs }];
        (
            m.answer(&batch, AnswerMode::YesNo).unwrap(),
            m.answer(&batch, AnswerMode::Generate { max_new_tokens: 5 }).unwrap(),
        )
    };
    assert_eq!(answers(&a), answers(&b));
}

#[test]
fn neuron_target_without_torch_neuronx_fails_clearly() {
    let probe = Command::new(python()).args(["-c", "import torch_neuronx"]).output().unwrap();
    if probe.status.success() {
        return skip("torch-neuronx is installed (a Neuron machine): the Neuron export would really compile");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .args([
            "models/export.py".as_ref(),
            "tiny".as_ref(),
            tmp.path().join("neuron").as_os_str(),
            "--target".as_ref(),
            "neuron".as_ref(),
            "--static".as_ref(),
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("torch-neuronx") && err.contains("not installed"), "{err}");

    let out = Command::new(python())
        .args([
            "models/export.py".as_ref(),
            "tiny".as_ref(),
            tmp.path().join("n2").as_os_str(),
            "--target".as_ref(),
            "neuron".as_ref(),
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--static"));
}
