//! BLIP VQA as three TorchScript parts: load a model directory, preprocess frames, tokenise
//! questions, and answer them.
//!
//! A model directory (written by `models/export.py`) holds `image_encoder.pt`,
//! `text_encoder.pt`, `text_decoder.pt`, `tokenizer.json` and `manifest.json`; the manifest
//! states shapes, token ids and preprocessing, and everything here takes them from it.

pub mod manifest;
mod pipeline;
pub mod preprocess;
pub mod tokenize;

use std::path::{Path, PathBuf};

use crate::device::{self, Device, DeviceError};
pub use manifest::{Manifest, Shapes};
#[doc(hidden)]
pub use pipeline::stages;
pub use pipeline::{Answer, AnswerMode, FrameQuestions, InferenceError};
pub use preprocess::{ImageError, ImageLimits, Pixels, Preprocessor, RgbImage};
pub use tokenize::{Question, QuestionError, QuestionTokenizer};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{dir} is not a complete model directory: missing {}", missing.join(", "))]
    MissingFiles { dir: PathBuf, missing: Vec<String> },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("model directory is inconsistent: {0}")]
    Mismatch(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("the model was exported for {target} but device {device} was requested")]
    Target { target: String, device: Device },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the loaded parts do not behave as the manifest says: {0}")]
    SelfCheck(InferenceError),
}

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Operator libraries to load globally before the parts (e.g. a custom op's .so).
    pub op_libraries: Vec<PathBuf>,
    /// libtorchneuron.so for device neuron; found automatically when `None`.
    pub neuron_library: Option<PathBuf>,
    /// Device neuron: the NeuronCore (index among the visible ones) to bind this replica to;
    /// `None` lets the runtime choose.
    pub neuron_core: Option<usize>,
    pub image_limits: ImageLimits,
}

impl LoadOptions {
    /// These options for the replica placed at `slot`.
    pub fn placed(&self, slot: crate::device::Slot) -> LoadOptions {
        LoadOptions { device: slot.device, neuron_core: slot.neuron_core.map(|core| core.index), ..self.clone() }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            op_libraries: Vec::new(),
            neuron_library: None,
            neuron_core: None,
            image_limits: ImageLimits::default(),
        }
    }
}

/// One loaded model replica: the three parts on one device, with its tokenizer and
/// preprocessor. Not shared between threads: each replica belongs to one worker thread.
pub struct Model {
    manifest: Manifest,
    shapes: Shapes,
    device: Device,
    kind: tch::Kind,
    tokenizer: QuestionTokenizer,
    preprocessor: Preprocessor,
    image_encoder: tch::CModule,
    text_encoder: tch::CModule,
    text_decoder: tch::CModule,
    /// The cached decoder step (dynamic exports).
    text_decoder_step: Option<DecoderStep>,
}

/// The cached decoder step: a method of the text decoder's module, which holds the weights once.
struct DecoderStep {
    method: String,
    /// The cache's planes (a key and a value per decoder layer) and hidden size.
    dims: [i64; 2],
}

impl Model {
    /// Loads and checks a model directory, then runs one real forward pass through every part
    /// (which both proves the parts match the manifest and warms them up).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Model, LoadError> {
        check_files(dir)?;
        let manifest = Manifest::read(dir)?;
        let shapes = manifest.shapes()?;
        let kind = manifest.float_kind()?;
        check_target(&manifest, opts.device)?;
        opts.device.check_available()?;

        device::load_operator_libraries(opts.device, opts.neuron_library.as_deref(), &opts.op_libraries)?;

        let part = |file: &str| device::load_module(&dir.join(file), opts.device);
        let parts = || -> Result<_, DeviceError> {
            let image_encoder = part(&manifest.parts.image_encoder.file)?;
            let text_encoder = part(&manifest.parts.text_encoder.file)?;
            Ok((image_encoder, text_encoder, part(&manifest.parts.text_decoder.file)?))
        };
        let (image_encoder, text_encoder, text_decoder) = match opts.neuron_core {
            Some(core) if opts.device == Device::Neuron => {
                let helper = manifest.neuron_placement.as_ref().map(|file| dir.join(file));
                device::on_neuron_core(helper.as_deref(), core, parts)?
            }
            _ => parts()?,
        };
        let text_decoder_step = match &manifest.parts.text_decoder_step {
            Some(spec) if !manifest.static_shapes && opts.device != Device::Neuron => {
                let past = spec.inputs.iter().find(|t| t.name == "past").map(|t| t.shape.clone()).unwrap_or_default();
                let dims = match past.as_slice() {
                    [_, Some(planes), _, Some(hidden)] => [*planes, *hidden],
                    _ => {
                        return Err(LoadError::Manifest(
                            "text_decoder_step: past must be [B, planes, t, hidden]".into(),
                        ))
                    }
                };
                let method = match &spec.method {
                    Some(method) if spec.file == manifest.parts.text_decoder.file => method.clone(),
                    _ => {
                        return Err(LoadError::Manifest(
                            "text_decoder_step must be a method of text_decoder's module (an export before \
                             the decoder held it saved the weights twice): re-export with models/export.py"
                                .into(),
                        ))
                    }
                };
                Some(DecoderStep { method, dims })
            }
            _ => None,
        };
        let tokenizer = QuestionTokenizer::load(dir, &manifest.tokens, manifest.max_question_len)?;
        let preprocessor = Preprocessor::new(&manifest.preprocess, opts.image_limits);

        let model = Model {
            manifest,
            shapes,
            device: opts.device,
            kind,
            tokenizer,
            preprocessor,
            image_encoder,
            text_encoder,
            text_decoder,
            text_decoder_step,
        };
        if model.shapes.question_len.is_some() && !model.manifest.question_padding_masked {
            tracing::warn!(
                "this export's decoder does not mask padded question positions and its question length is \
                 fixed: answers depend slightly on question length; re-export with models/export.py"
            );
        }
        model.self_check().map_err(LoadError::SelfCheck)?;
        tracing::info!(model = %model.manifest.model_id, device = %model.device, "model loaded");
        Ok(model)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn shapes(&self) -> &Shapes {
        &self.shapes
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn tokenizer(&self) -> &QuestionTokenizer {
        &self.tokenizer
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// The most answer tokens `generate` can produce ([DEC] counts against max_length).
    pub fn max_new_tokens(&self) -> usize {
        self.manifest.generate.max_length - 1
    }

    /// A blank frame and a short question through every part, in both answer modes.
    pub fn self_check(&self) -> Result<(), InferenceError> {
        let (h, w) = self.shapes.image_size;
        let blank = RgbImage { width: w as u32, height: h as u32, data: vec![128; h * w * 3] };
        let pixels = self.preprocessor.normalize(&blank);
        let question = self.tokenizer.encode("is this a test?").map_err(InferenceError::SelfCheck)?;
        let frame = [FrameQuestions { pixels: &pixels, questions: std::slice::from_ref(&question) }];
        self.answer(&frame, AnswerMode::YesNo)?;
        self.answer(&frame, AnswerMode::Generate { max_new_tokens: 1 })?;
        Ok(())
    }

    /// Runs the largest batch this replica will be given, `frames` frames of `questions` questions
    /// each, so that the first real one finds libtorch's allocations and the TorchScript
    /// executor's optimised graphs for that shape ready rather than paying for them.
    pub fn warm_up(&self, frames: usize, questions: usize) -> Result<(), InferenceError> {
        let (h, w) = self.shapes.image_size;
        let blank = RgbImage { width: w as u32, height: h as u32, data: vec![128; h * w * 3] };
        let pixels = self.preprocessor.normalize(&blank);
        let questions = blipserve_api::DEFAULT_QUESTIONS
            .iter()
            .cycle()
            .take(questions.max(1))
            .map(|q| self.tokenizer.encode(q).map_err(InferenceError::SelfCheck))
            .collect::<Result<Vec<_>, _>>()?;
        let batch: Vec<FrameQuestions> =
            (0..frames.max(1)).map(|_| FrameQuestions { pixels: &pixels, questions: &questions }).collect();
        self.answer(&batch, AnswerMode::YesNo)?;
        Ok(())
    }
}

fn check_files(dir: &Path) -> Result<(), LoadError> {
    let mut missing: Vec<String> = [manifest::MANIFEST_FILE, tokenize::TOKENIZER_FILE]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(String::from)
        .collect();
    if dir.join(manifest::MANIFEST_FILE).is_file() {
        // Part files are named by the manifest.
        let manifest = Manifest::read(dir)?;
        let p = &manifest.parts;
        let step = p.text_decoder_step.as_ref().map(|s| &s.file);
        for file in [&p.image_encoder.file, &p.text_encoder.file, &p.text_decoder.file].into_iter().chain(step) {
            if !dir.join(file).is_file() {
                missing.push(file.clone());
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::MissingFiles { dir: dir.to_path_buf(), missing })
    }
}

/// CPU artifacts also run on CUDA (weights move with the module); Neuron artifacts run only on
/// Neuron, and CUDA artifacts only on CUDA.
fn check_target(manifest: &Manifest, device: Device) -> Result<(), LoadError> {
    let ok = matches!(
        (manifest.target.as_str(), device),
        ("cpu", Device::Cpu | Device::Cuda(_)) | ("cuda", Device::Cuda(_)) | ("neuron", Device::Neuron)
    );
    if ok {
        Ok(())
    } else {
        Err(LoadError::Target { target: manifest.target.clone(), device })
    }
}
