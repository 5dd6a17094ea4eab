//! The model directory's `manifest.json`: what the export promises about the three parts.
//!
//! Shapes, token ids and preprocessing come from here and nowhere else. A dimension is either
//! fixed (a number: Neuron artifacts fix batch and sequence lengths) or dynamic (`null`).

use std::path::Path;

use serde::Deserialize;

use super::LoadError;

pub const MANIFEST_FILE: &str = "manifest.json";
/// 2: the image encoder outputs the text encoder's cross-attention keys and values (`image_kv`),
/// computed once per frame; format 1 handed `image_embeds` to the text encoder.
const SUPPORTED_FORMAT: u32 = 2;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub model_id: String,
    #[serde(default)]
    pub source: serde_json::Value,
    pub torch_version: String,
    pub transformers_version: String,
    pub target: String,
    pub dtype: String,
    pub static_shapes: bool,
    pub parts: Parts,
    pub tokens: SpecialTokens,
    pub generate: GenerateSpec,
    /// Longest question in tokens, [CLS] and [SEP] included.
    pub max_question_len: usize,
    /// Whether the decoder masks padded question positions (its cross-attention mask works).
    /// When it does not, questions of different lengths are never padded into one batch.
    #[serde(default)]
    pub question_padding_masked: bool,
    pub preprocess: PreprocessSpec,
    /// Neuron exports: the TorchScript helper that binds modules to a chosen NeuronCore.
    #[serde(default)]
    pub neuron_placement: Option<String>,
    /// int8 exports: how the linear layers were quantised (weights, activations, what stayed
    /// float32), as the export describes it.
    #[serde(default)]
    pub quantization: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Parts {
    pub image_encoder: PartSpec,
    pub text_encoder: PartSpec,
    pub text_decoder: PartSpec,
    /// One decoder step with a key/value cache (dynamic exports; generate mode uses it).
    #[serde(default)]
    pub text_decoder_step: Option<PartSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PartSpec {
    pub file: String,
    /// The module's method that implements the part (`forward` when absent): the cached decoder
    /// step is the decoder module's `step`, so the decoder's weights load once.
    #[serde(default)]
    pub method: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// `None` marks a dynamic dimension.
    pub shape: Vec<Option<i64>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct SpecialTokens {
    pub pad: i64,
    pub cls: i64,
    pub sep: i64,
    /// The decoder's start token, [DEC].
    pub dec: i64,
    pub yes: i64,
    pub no: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GenerateSpec {
    /// transformers' `max_length`: the decoded sequence's length limit, counting [DEC].
    pub max_length: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessSpec {
    /// [height, width]
    pub size: [u32; 2],
    pub resample: String,
    pub convert_rgb: bool,
    pub rescale: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// The shapes the pipeline works with, checked for consistency across the three parts.
/// `None` means dynamic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shapes {
    pub image_batch: Option<usize>,
    pub question_batch: Option<usize>,
    pub question_len: Option<usize>,
    pub decoder_len: Option<usize>,
    pub image_size: (usize, usize),
    /// Frames the text encoder takes image keys and values for; fixed shapes need room for one
    /// frame per question of its batch.
    pub question_frames: Option<usize>,
    /// One frame's `image_kv`: [2 × text layers, image tokens, text hidden].
    pub image_kv: [usize; 3],
    pub text_hidden: usize,
    pub vocab: usize,
}

impl Manifest {
    /// What the weights' arithmetic runs in: `int8` for quantised exports (their tensors are
    /// float32 between layers), otherwise the parts' dtype.
    pub fn precision(&self) -> &str {
        match &self.quantization {
            Some(q) => q.get("weights").and_then(|w| w.as_str()).unwrap_or("quantized"),
            None => &self.dtype,
        }
    }

    pub fn read(dir: &Path) -> Result<Manifest, LoadError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LoadError::Manifest(format!("cannot read {}: {e}", path.display())))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| LoadError::Manifest(format!("{} is not a valid manifest: {e}", path.display())))?;
        manifest.checked()
    }

    /// A manifest from its JSON text, checked as [`Manifest::read`] checks the file.
    pub fn from_json(text: &str) -> Result<Manifest, LoadError> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| LoadError::Manifest(format!("not a valid manifest: {e}")))?;
        manifest.checked()
    }

    /// The format and the preprocessing the reader supports.
    fn checked(self) -> Result<Manifest, LoadError> {
        if self.format != SUPPORTED_FORMAT {
            return Err(LoadError::Manifest(format!(
                "manifest format {} is not supported (this build reads format {SUPPORTED_FORMAT}): export the \
                 model directory again with models/export.py",
                self.format
            )));
        }
        if self.preprocess.resample != "bicubic" {
            return Err(LoadError::Manifest(format!(
                "preprocess.resample {:?} is not supported (bicubic only)",
                self.preprocess.resample
            )));
        }
        if self.preprocess.std.iter().any(|s| *s <= 0.0) || self.preprocess.rescale <= 0.0 {
            return Err(LoadError::Manifest("preprocess.std and rescale must be positive".into()));
        }
        Ok(self)
    }

    /// The tensor kind of the floating-point inputs and outputs.
    pub fn float_kind(&self) -> Result<tch::Kind, LoadError> {
        match self.dtype.as_str() {
            "float32" => Ok(tch::Kind::Float),
            "float16" => Ok(tch::Kind::Half),
            "bfloat16" => Ok(tch::Kind::BFloat16),
            other => Err(LoadError::Manifest(format!("dtype {other:?} is not supported"))),
        }
    }

    /// Cross-checks the three parts' shapes and returns them.
    pub fn shapes(&self) -> Result<Shapes, LoadError> {
        let p = &self.parts;
        let pixels = input(&p.image_encoder, "pixel_values", 4)?;
        let image_kv = output(&p.image_encoder, "image_kv", 4)?;
        let ids = input(&p.text_encoder, "input_ids", 2)?;
        let enc_kv = input(&p.text_encoder, "image_kv", 4)?;
        let frame_index = input(&p.text_encoder, "frame_index", 1)?;
        let question_embeds = output(&p.text_encoder, "question_embeds", 3)?;
        let dec_ids = input(&p.text_decoder, "input_ids", 2)?;
        let dec_question = input(&p.text_decoder, "question_embeds", 3)?;
        let logits = output(&p.text_decoder, "logits", 3)?;

        let fixed = |what: &str, d: Option<i64>| -> Result<usize, LoadError> {
            match d {
                Some(n) if n > 0 => Ok(n as usize),
                _ => Err(LoadError::Manifest(format!("{what} must be a fixed positive size, got {d:?}"))),
            }
        };
        let dim = |what: &str, d: Option<i64>| -> Result<Option<usize>, LoadError> {
            match d {
                None => Ok(None),
                Some(n) if n > 0 => Ok(Some(n as usize)),
                Some(n) => Err(LoadError::Manifest(format!("{what} must be positive or null, got {n}"))),
            }
        };
        let shapes = Shapes {
            image_batch: dim("image batch", pixels[0])?,
            question_batch: dim("question batch", ids[0])?,
            question_len: dim("question length", ids[1])?,
            decoder_len: dim("decoder length", dec_ids[1])?,
            image_size: (fixed("pixel_values height", pixels[2])?, fixed("pixel_values width", pixels[3])?),
            question_frames: dim("text encoder frames", enc_kv[0])?,
            image_kv: [
                fixed("image_kv planes", image_kv[1])?,
                fixed("image_kv tokens", image_kv[2])?,
                fixed("image_kv hidden size", image_kv[3])?,
            ],
            text_hidden: fixed("question_embeds hidden size", question_embeds[2])?,
            vocab: fixed("logits vocabulary", logits[2])?,
        };

        let mismatch = |what: &str| Err(LoadError::Manifest(format!("parts disagree: {what}")));
        if fixed("pixel_values channels", pixels[1])? != 3 {
            return mismatch("pixel_values must have 3 channels");
        }
        let [h, w] = self.preprocess.size;
        if (h as usize, w as usize) != shapes.image_size {
            return mismatch("preprocess.size differs from the image encoder's input size");
        }
        if enc_kv[1..] != image_kv[1..] {
            return mismatch("text encoder's image_kv differ from the image encoder's output");
        }
        if !shapes.image_kv[0].is_multiple_of(2) {
            return mismatch("image_kv must hold a key and a value per layer");
        }
        if dec_question[1..] != question_embeds[1..] || dec_question[0] != question_embeds[0] {
            return mismatch("text decoder's question_embeds differ from the text encoder's output");
        }
        if dec_ids[0] != ids[0] {
            return mismatch("text encoder and decoder batch sizes differ");
        }
        if frame_index[0] != ids[0] {
            return mismatch("text encoder's frame_index batch differs from its input_ids batch");
        }
        let frames_fit = match (shapes.question_frames, shapes.question_batch) {
            (None, None) => true,
            (Some(frames), Some(batch)) => frames >= batch,
            _ => false,
        };
        if !frames_fit {
            return mismatch(
                "text encoder's image_kv batch must be dynamic, or fixed with room for a frame per question",
            );
        }
        let fixed_dims = [shapes.image_batch, shapes.question_batch, shapes.question_len, shapes.decoder_len];
        if self.static_shapes != fixed_dims.iter().all(Option::is_some) {
            return mismatch("static_shapes does not match the parts' batch and sequence dimensions");
        }
        let t = self.tokens;
        let max_id = [t.pad, t.cls, t.sep, t.dec, t.yes, t.no].into_iter().max().unwrap_or(0);
        if max_id < 0 || max_id as usize >= shapes.vocab {
            return mismatch("a special token id is outside the decoder's vocabulary");
        }
        if let Some(td) = shapes.decoder_len {
            if self.generate.max_length > td {
                return mismatch("generate.max_length exceeds the fixed decoder length");
            }
        }
        if shapes.question_len.is_some_and(|lq| self.max_question_len > lq) || self.max_question_len < 3 {
            return mismatch("max_question_len must be at least 3 and fit the fixed question length");
        }
        if self.generate.max_length < 2 {
            return mismatch("generate.max_length must allow at least one answer token");
        }
        Ok(shapes)
    }
}

fn find<'a>(list: &'a [TensorSpec], part: &str, name: &str, kind: &str) -> Result<&'a TensorSpec, LoadError> {
    list.iter()
        .find(|t| t.name == name)
        .ok_or_else(|| LoadError::Manifest(format!("{part} has no {kind} named {name:?}")))
}

fn ranked(spec: &TensorSpec, rank: usize) -> Result<&[Option<i64>], LoadError> {
    if spec.shape.len() != rank {
        return Err(LoadError::Manifest(format!("{} has rank {}, expected {rank}", spec.name, spec.shape.len())));
    }
    Ok(&spec.shape)
}

fn input<'a>(part: &'a PartSpec, name: &str, rank: usize) -> Result<&'a [Option<i64>], LoadError> {
    ranked(find(&part.inputs, &part.file, name, "input")?, rank)
}

fn output<'a>(part: &'a PartSpec, name: &str, rank: usize) -> Result<&'a [Option<i64>], LoadError> {
    ranked(find(&part.outputs, &part.file, name, "output")?, rank)
}
