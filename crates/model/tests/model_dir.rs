//! Model directories that must be refused, each with a message that says what is wrong; and an
//! older export, without the cached decoder step, that must still answer the same.

use std::path::{Path, PathBuf};

use blipserve_model::device::{self, Device};
use blipserve_model::model::{AnswerMode, FrameQuestions, LoadError, LoadOptions, Model};
use blipserve_testkit::*;

const FILES: [&str; 5] = ["manifest.json", "tokenizer.json", "image_encoder.pt", "text_encoder.pt", "text_decoder.pt"];

/// A private copy of the tiny model's runtime files.
fn copy_of_tiny() -> (tempfile::TempDir, PathBuf) {
    let src = model_dir("tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in FILES {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
}

fn load(dir: &Path) -> Result<Model, LoadError> {
    Model::load(dir, &LoadOptions::default())
}

fn message(result: Result<Model, LoadError>) -> String {
    match result {
        Ok(_) => panic!("the directory must be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_copy_itself_loads() {
    let (_tmp, dir) = copy_of_tiny();
    let model = load(&dir).expect("a complete copy loads");
    assert_eq!(model.manifest().model_id, "tiny");
}

#[test]
fn missing_part_is_named() {
    let (_tmp, dir) = copy_of_tiny();
    std::fs::remove_file(dir.join("text_decoder.pt")).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load(&dir);
    assert!(matches!(err, Err(LoadError::MissingFiles { .. })));
    let msg = message(err);
    assert!(msg.contains("text_decoder.pt") && msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn missing_manifest_is_named() {
    let (_tmp, dir) = copy_of_tiny();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let msg = message(load(&dir));
    assert!(msg.contains("manifest.json"), "{msg}");
}

#[test]
fn manifest_that_is_not_json() {
    let (_tmp, dir) = copy_of_tiny();
    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    let msg = message(load(&dir));
    assert!(msg.contains("not a valid manifest"), "{msg}");
}

#[test]
fn parts_that_disagree_in_the_manifest() {
    let (_tmp, dir) = copy_of_tiny();
    edit_manifest(&dir, |m| m["parts"]["text_encoder"]["inputs"][2]["shape"][3] = 64.into());
    let msg = message(load(&dir));
    assert!(msg.contains("image_kv differ"), "{msg}");
}

#[test]
fn a_directory_exported_before_image_kv_asks_for_a_new_export() {
    let (_tmp, dir) = copy_of_tiny();
    edit_manifest(&dir, |m| m["format"] = 1.into());
    let msg = message(load(&dir));
    assert!(msg.contains("format 1") && msg.contains("models/export.py"), "{msg}");
}

#[test]
fn the_cached_decoder_step_is_a_method_of_the_decoder() {
    let (_tmp, dir) = copy_of_tiny();
    edit_manifest(&dir, |m| m["parts"]["text_decoder_step"]["method"] = "no_such_method".into());
    let msg = message(load(&dir));
    assert!(msg.contains("no_such_method"), "{msg}");
    // How exports before the decoder held its step saved it: a module of its own, the weights twice.
    std::fs::copy(dir.join("text_decoder.pt"), dir.join("text_decoder_step.pt")).unwrap();
    edit_manifest(&dir, |m| m["parts"]["text_decoder_step"]["file"] = "text_decoder_step.pt".into());
    let msg = message(load(&dir));
    assert!(msg.contains("re-export"), "{msg}");
}

#[test]
fn non_positive_fixed_sizes_are_refused() {
    let (_tmp, dir) = copy_of_tiny();
    edit_manifest(&dir, |m| m["parts"]["image_encoder"]["inputs"][0]["shape"][0] = 0.into());
    let msg = message(load(&dir));
    assert!(msg.contains("image batch must be positive"), "{msg}");
}

#[test]
fn manifest_that_does_not_match_the_modules() {
    let (_tmp, dir) = copy_of_tiny();
    // Self-consistent, but the traced image encoder really produces 32-wide keys and values.
    edit_manifest(&dir, |m| {
        m["parts"]["image_encoder"]["outputs"][0]["shape"][3] = 64.into();
        m["parts"]["text_encoder"]["inputs"][2]["shape"][3] = 64.into();
    });
    let err = load(&dir);
    assert!(matches!(err, Err(LoadError::SelfCheck(_))));
    let msg = message(err);
    assert!(msg.contains("image_encoder") && msg.contains("64") && msg.contains("32"), "{msg}");
}

#[test]
fn token_ids_that_disagree_with_the_tokenizer() {
    let (_tmp, dir) = copy_of_tiny();
    edit_manifest(&dir, |m| m["tokens"]["yes"] = 2749.into());
    let msg = message(load(&dir));
    assert!(msg.contains("yes") && msg.contains("2749"), "{msg}");
}

#[test]
fn swapped_part_file_is_caught() {
    let (_tmp, dir) = copy_of_tiny();
    // The decoder file replaced by the image encoder: it cannot take the decoder's inputs.
    std::fs::copy(dir.join("image_encoder.pt"), dir.join("text_decoder.pt")).unwrap();
    let msg = message(load(&dir));
    assert!(msg.contains("do not behave as the manifest says"), "{msg}");
}

#[test]
fn artifacts_for_another_device() {
    let (_tmp, dir) = copy_of_tiny();
    let neuron = LoadOptions { device: Device::Neuron, ..LoadOptions::default() };
    let msg = message(Model::load(&dir, &neuron));
    assert!(msg.contains("exported for cpu") && msg.contains("neuron"), "{msg}");

    edit_manifest(&dir, |m| m["target"] = "neuron".into());
    let msg = message(load(&dir));
    assert!(msg.contains("exported for neuron"), "{msg}");
}

/// Asking for cuda loads libtorch_cuda.so from beside libtorch_cpu.so (the process did not map it
/// before), and the error for want of a GPU says where CUDA support came from.
#[test]
fn cuda_without_a_gpu() {
    let mapped = |name: &str| std::fs::read_to_string("/proc/self/maps").unwrap().contains(name);
    assert!(mapped("/libtorch_cpu.so"));
    assert!(!mapped("/libtorch_cuda.so"), "CUDA support was loaded before any CUDA device was asked for");
    if device::cuda_device_count() > 0 {
        return skip("this host has a CUDA device, so loading on cuda:0 cannot fail for want of one");
    }
    let (_tmp, dir) = copy_of_tiny();
    let cuda = LoadOptions { device: Device::Cuda(0), ..LoadOptions::default() };
    let msg = message(Model::load(&dir, &cuda));
    assert!(msg.contains("cuda:0") && msg.contains("0 CUDA device"), "{msg}");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let cpu = maps.lines().find_map(|l| l.split_whitespace().nth(5).filter(|p| p.ends_with("/libtorch_cpu.so")));
    let cuda_library = Path::new(cpu.unwrap()).with_file_name("libtorch_cuda.so");
    if cuda_library.exists() {
        assert!(mapped("/libtorch_cuda.so"), "asking for cuda did not load {}", cuda_library.display());
        assert!(msg.contains("CUDA support from") && msg.contains("libtorch_cuda.so"), "{msg}");
        // Loaded late, its CUDA kernels are registered all the same: a CUDA tensor now fails for
        // want of a driver or a device, not for want of a CUDA backend.
        let cuda = (tch::Kind::Float, tch::Device::Cuda(0));
        let err = tch::Tensor::f_zeros([1], cuda).unwrap_err().to_string();
        assert!(!err.contains("from the 'CUDA' backend"), "CUDA kernels not registered: {err}");
    } else {
        assert!(msg.contains("no CUDA support") && msg.contains("CPU build"), "{msg}");
    }
}

/// Generated token ids for three questions of different lengths about a synthetic frame.
fn generated(model: &Model) -> Vec<Vec<i64>> {
    let frame = jpeg(&synthetic_frame(640, 360, 4), 90, Subsamp::Sub2x2);
    let pixels = model.preprocessor().pixels(&frame).unwrap();
    let questions: Vec<_> = ["is the dog barking?", "is the cat asleep on the sofa by the window?", "what is this?"]
        .iter()
        .map(|q| model.tokenizer().encode(q).unwrap())
        .collect();
    let frames = [FrameQuestions { pixels: &pixels, questions: &questions }];
    let mode = AnswerMode::Generate { max_new_tokens: model.max_new_tokens() };
    model.answer(&frames, mode).unwrap().remove(0).into_iter().map(|a| a.token_ids).collect()
}

#[test]
fn an_export_without_the_cached_decoder_step_generates_the_same_tokens() {
    let (_tmp, dir) = copy_of_tiny();
    let cached = generated(&load(&dir).unwrap());
    edit_manifest(&dir, |m| {
        m["parts"].as_object_mut().unwrap().remove("text_decoder_step");
    });
    let uncached = generated(&load(&dir).unwrap());
    assert!(cached.iter().all(|ids| ids.len() > 1), "answers of one token prove little: {cached:?}");
    assert_eq!(cached, uncached, "the key/value cache changed the answers");
}
