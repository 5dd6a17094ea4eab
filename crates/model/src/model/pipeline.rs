//! The three-part pipeline: image encoder once per frame, then every question of every frame
//! through the text encoder and the decoder as one batch.
//!
//! The image encoder turns a frame into the keys and values the text encoder's cross-attention
//! reads (`image_kv`), so the most expensive part of encoding a question is paid once per frame,
//! whatever the number of questions about it; the text encoder picks each question's frame by
//! `frame_index`.
//!
//! Padding never changes an answer. Questions of different lengths are right-padded and their
//! padded positions masked both in the text encoder and in the decoder's cross-attention
//! (transformers' batched `generate` leaves the latter all ones, so its answers depend on what a
//! question was batched with; ours do not). Fixed-shape parts get filler rows and frames, whose
//! results are dropped.

use serde::Serialize;
use tch::{Kind, Tensor};

use super::preprocess::Pixels;
use super::tokenize::{Question, QuestionError};
use super::{DecoderStep, Model};

/// How a question is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMode {
    /// One decoder step on [DEC]: P(yes | yes or no) from the first answer token's logits.
    YesNo,
    /// Greedy decoding, as transformers' `generate` does, up to `max_new_tokens` or [SEP].
    Generate { max_new_tokens: usize },
}

/// One frame and the questions asked about it.
pub struct FrameQuestions<'a> {
    pub pixels: &'a Pixels,
    pub questions: &'a [Question],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// "yes"/"no" in yes/no mode; the decoded text in generate mode.
    pub answer: String,
    /// P(yes | yes or no) = sigmoid(l_yes − l_no) (yes/no mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Full-vocabulary probabilities of "yes" and "no" for the first answer token (yes/no mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_yes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_no: Option<f64>,
    /// Generated token ids after [DEC], the closing [SEP] included when reached (generate mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub token_ids: Vec<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("{part}: expected output shape {expected:?}, got {got:?}")]
    Shape { part: &'static str, expected: Vec<i64>, got: Vec<i64> },
    #[error("frame pixels have shape {got:?}; the model takes {expected:?}")]
    PixelShape { expected: Vec<i64>, got: Vec<i64> },
    #[error("at most {max} new tokens can be generated with this model, {requested} requested")]
    MaxNewTokens { requested: usize, max: usize },
    #[error("question of {tokens} tokens exceeds the model's {max}")]
    QuestionTooLong { tokens: usize, max: usize },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("self-check question: {0}")]
    SelfCheck(QuestionError),
}

impl Model {
    /// Answers every question of every frame. The result has one vector per frame, in order.
    pub fn answer(&self, frames: &[FrameQuestions<'_>], mode: AnswerMode) -> Result<Vec<Vec<Answer>>, InferenceError> {
        let _no_grad = tch::no_grad_guard();
        if let AnswerMode::Generate { max_new_tokens } = mode {
            if max_new_tokens == 0 || max_new_tokens > self.max_new_tokens() {
                return Err(InferenceError::MaxNewTokens { requested: max_new_tokens, max: self.max_new_tokens() });
            }
        }
        let rows: Vec<Row<'_>> = frames
            .iter()
            .enumerate()
            .flat_map(|(f, fq)| fq.questions.iter().enumerate().map(move |(i, q)| (f, i, q)))
            .collect();
        let mut answers: Vec<Vec<Option<Answer>>> = frames.iter().map(|f| vec![None; f.questions.len()]).collect();
        if rows.is_empty() {
            return Ok(frames.iter().map(|_| Vec::new()).collect());
        }
        for (_, _, q) in &rows {
            if q.ids.len() > self.manifest.max_question_len {
                return Err(InferenceError::QuestionTooLong {
                    tokens: q.ids.len(),
                    max: self.manifest.max_question_len,
                });
            }
        }
        let pixels: Vec<&Pixels> = frames.iter().map(|f| f.pixels).collect();
        let image_kv = self.encode_images(&pixels)?;

        for group in self.question_groups(rows) {
            let encoded = self.encode_questions(&image_kv, &group)?;
            let group_answers = match mode {
                AnswerMode::YesNo => self.yes_no(&encoded, group.len())?,
                AnswerMode::Generate { max_new_tokens } => {
                    self.generate_answers(&encoded, group.len(), max_new_tokens, true)?
                }
            };
            for ((frame, index, _), answer) in group.iter().zip(group_answers) {
                answers[*frame][*index] = Some(answer);
            }
        }
        Ok(answers.into_iter().map(|f| f.into_iter().flatten().collect()).collect())
    }

    /// Splits the questions into text-encoder batches: the fixed batch size, or all at once.
    /// Without a working question mask, only questions of equal length share a batch.
    fn question_groups<'a>(&self, mut rows: Vec<Row<'a>>) -> Vec<Vec<Row<'a>>> {
        let chunk = self.shapes.question_batch.unwrap_or(rows.len()).max(1);
        if self.manifest.question_padding_masked || self.shapes.question_len.is_some() {
            return rows.chunks(chunk).map(<[Row<'a>]>::to_vec).collect();
        }
        rows.sort_by_key(|(_, _, q)| q.ids.len());
        let mut groups: Vec<Vec<Row<'a>>> = Vec::new();
        for row in rows {
            match groups.last_mut() {
                Some(g) if g.len() < chunk && g[0].2.ids.len() == row.2.ids.len() => g.push(row),
                _ => groups.push(vec![row]),
            }
        }
        groups
    }

    fn tensor_device(&self) -> tch::Device {
        self.device.tensor_device()
    }

    /// `image_kv` of every frame, `[frames, planes, tokens, hidden]`, in chunks of the fixed image
    /// batch (zero frames as filler).
    fn encode_images(&self, frames: &[&Pixels]) -> Result<Tensor, InferenceError> {
        let (h, w) = self.shapes.image_size;
        for p in frames {
            if (p.height, p.width) != (h, w) || p.values.len() != 3 * h * w {
                return Err(InferenceError::PixelShape {
                    expected: vec![3, h as i64, w as i64],
                    got: vec![(p.values.len() / (p.height * p.width).max(1)) as i64, p.height as i64, p.width as i64],
                });
            }
        }
        let chunk = self.shapes.image_batch.unwrap_or(frames.len());
        let mut outputs = Vec::new();
        for group in frames.chunks(chunk) {
            let mut values = Vec::with_capacity(chunk * 3 * h * w);
            for p in group {
                values.extend_from_slice(&p.values);
            }
            values.resize(chunk * 3 * h * w, 0.0);
            let input = Tensor::from_slice(&values)
                .f_view([chunk as i64, 3, h as i64, w as i64])?
                .f_to_device(self.tensor_device())?
                .f_to_kind(self.kind)?;
            let kv = self.image_encoder.forward_ts(&[input])?;
            let [planes, tokens, hidden] = self.shapes.image_kv.map(|d| d as i64);
            check_shape("image_encoder", &kv, &[chunk as i64, planes, tokens, hidden])?;
            outputs.push(kv.f_narrow(0, 0, group.len() as i64)?);
        }
        if outputs.len() == 1 {
            return Ok(outputs.remove(0)); // one chunk: no copy
        }
        Ok(Tensor::f_cat(&outputs, 0)?)
    }

    /// Runs the text encoder over one group of questions, padded to the group's (or the fixed)
    /// batch and length, with the image keys and values of their frames.
    fn encode_questions(&self, image_kv: &Tensor, group: &[Row<'_>]) -> Result<Encoded, InferenceError> {
        let t = self.manifest.tokens;
        let batch = self.shapes.question_batch.unwrap_or(group.len());
        let width =
            self.shapes.question_len.unwrap_or_else(|| group.iter().map(|(_, _, q)| q.ids.len()).max().unwrap_or(2));
        let filler = [t.cls, t.sep];
        let mut ids = vec![t.pad; batch * width];
        let mut mask = vec![0i64; batch * width];
        for row in 0..batch {
            let tokens: &[i64] = group.get(row).map_or(&filler, |(_, _, q)| &q.ids);
            ids[row * width..row * width + tokens.len()].copy_from_slice(tokens);
            mask[row * width..row * width + tokens.len()].fill(1);
        }
        let (frames, frame_index) = self.question_frames(image_kv, group, batch)?;
        let dev = self.tensor_device();
        let ids = matrix(&ids, batch, width, dev)?;
        let mask = matrix(&mask, batch, width, dev)?;
        let frame_index = Tensor::from_slice(&frame_index).f_to_device(dev)?;
        let embeds = self.text_encoder.forward_ts(&[&ids, &mask, &frames, &frame_index])?;
        check_shape("text_encoder", &embeds, &[batch as i64, width as i64, self.shapes.text_hidden as i64])?;
        Ok(Encoded { embeds, mask })
    }

    /// The image keys and values the text encoder gets for `group`, and each of its `batch` rows'
    /// frame among them (filler rows take the first). Dynamic shapes: every frame of the batch,
    /// as it is. Fixed shapes: the group's own frames, repeated up to the fixed frame count.
    fn question_frames(
        &self,
        image_kv: &Tensor,
        group: &[Row<'_>],
        batch: usize,
    ) -> Result<(Tensor, Vec<i64>), InferenceError> {
        let Some(fixed) = self.shapes.question_frames else {
            let mut index: Vec<i64> = group.iter().map(|(frame, _, _)| *frame as i64).collect();
            index.resize(batch, index[0]);
            return Ok((image_kv.shallow_clone(), index));
        };
        let mut frames: Vec<i64> = Vec::new();
        let mut index = Vec::with_capacity(batch);
        for (frame, _, _) in group {
            let frame = *frame as i64;
            let position = frames.iter().position(|&f| f == frame).unwrap_or_else(|| {
                frames.push(frame);
                frames.len() - 1
            });
            index.push(position as i64);
        }
        index.resize(batch, 0);
        frames.resize(fixed, frames[0]);
        let frames = Tensor::from_slice(&frames).f_to_device(self.tensor_device())?;
        Ok((image_kv.f_index_select(0, &frames)?, index))
    }

    /// Runs the decoder on `prefixes` (one per row of `encoded`, all the same length), padded to
    /// the fixed decoder length when there is one; returns the logits at the last prefix position.
    fn decoder_step(&self, encoded: &Encoded, prefixes: &[Vec<i64>]) -> Result<Tensor, InferenceError> {
        let rows = prefixes.len();
        let len = prefixes.first().map_or(0, Vec::len);
        let width = self.shapes.decoder_len.unwrap_or(len);
        let mut ids = vec![self.manifest.tokens.pad; rows * width];
        let mut mask = vec![0i64; rows * width];
        for (r, prefix) in prefixes.iter().enumerate() {
            ids[r * width..r * width + prefix.len()].copy_from_slice(prefix);
            mask[r * width..r * width + prefix.len()].fill(1);
        }
        let dev = self.tensor_device();
        let ids = matrix(&ids, rows, width, dev)?;
        let mask = matrix(&mask, rows, width, dev)?;
        let logits = self.text_decoder.forward_ts(&[&ids, &mask, &encoded.embeds, &encoded.mask])?;
        check_shape("text_decoder", &logits, &[rows as i64, width as i64, self.shapes.vocab as i64])?;
        Ok(logits.f_select(1, len as i64 - 1)?.f_to_kind(Kind::Double)?)
    }

    fn yes_no(&self, encoded: &Encoded, real: usize) -> Result<Vec<Answer>, InferenceError> {
        let t = self.manifest.tokens;
        let rows = encoded.embeds.size()[0] as usize;
        let logits = self.decoder_step(encoded, &vec![vec![t.dec]; rows])?;
        let pair = Tensor::from_slice(&[t.yes, t.no]).f_to_device(self.tensor_device())?;
        let probs = logits.f_softmax(-1, Kind::Double)?.f_index_select(1, &pair)?;
        let pair_logits = logits.f_index_select(1, &pair)?;
        let pair_logits: Vec<f64> = Vec::try_from(pair_logits.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?;
        let probs: Vec<f64> = Vec::try_from(probs.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?;
        Ok((0..real)
            .map(|r| {
                let (l_yes, l_no) = (pair_logits[2 * r], pair_logits[2 * r + 1]);
                let probability = 1.0 / (1.0 + (l_no - l_yes).exp());
                Answer {
                    answer: if probability >= 0.5 { "yes" } else { "no" }.to_string(),
                    probability: Some(probability),
                    p_yes: Some(probs[2 * r]),
                    p_no: Some(probs[2 * r + 1]),
                    token_ids: Vec::new(),
                }
            })
            .collect())
    }

    /// Greedy decoding with the key/value cache when the export has one and `use_cache`, else by
    /// re-running the decoder over each prefix.
    fn generate_answers(
        &self,
        encoded: &Encoded,
        real: usize,
        max_new_tokens: usize,
        use_cache: bool,
    ) -> Result<Vec<Answer>, InferenceError> {
        match &self.text_decoder_step {
            Some(step) if use_cache => self.generate_cached(step, encoded, real, max_new_tokens),
            _ => self.generate(encoded, real, max_new_tokens),
        }
    }

    /// Greedy decoding without a key/value cache (fixed-shape exports, or one without the cached
    /// step): each step re-runs the decoder over the prefix, which keeps every part a pure
    /// function of fixed-shape inputs (what Neuron needs).
    fn generate(&self, encoded: &Encoded, real: usize, max_new_tokens: usize) -> Result<Vec<Answer>, InferenceError> {
        let t = self.manifest.tokens;
        let rows = encoded.embeds.size()[0] as usize;
        let fixed_batch = self.shapes.question_batch.is_some();
        let mut seqs: Vec<Vec<i64>> = vec![vec![t.dec]; rows];
        let mut done: Vec<bool> = (0..rows).map(|r| r >= real).collect();
        for _ in 0..max_new_tokens {
            let active: Vec<usize> = (0..rows).filter(|&r| !done[r]).collect();
            if active.is_empty() {
                break;
            }
            // Dynamic batch: only unfinished rows. Fixed batch: every row (finished rows idle).
            let (call_rows, logits) = if fixed_batch || active.len() == rows {
                ((0..rows).collect::<Vec<_>>(), self.decoder_step(encoded, &seqs)?)
            } else {
                let index = Tensor::from_slice(&active.iter().map(|&r| r as i64).collect::<Vec<_>>())
                    .f_to_device(self.tensor_device())?;
                let subset = Encoded {
                    embeds: encoded.embeds.f_index_select(0, &index)?,
                    mask: encoded.mask.f_index_select(0, &index)?,
                };
                let prefixes: Vec<Vec<i64>> = active.iter().map(|&r| seqs[r].clone()).collect();
                (active.clone(), self.decoder_step(&subset, &prefixes)?)
            };
            let next: Vec<i64> = Vec::try_from(logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)?;
            for (k, &r) in call_rows.iter().enumerate() {
                if done[r] {
                    continue;
                }
                seqs[r].push(next[k]);
                if next[k] == t.sep {
                    done[r] = true;
                }
            }
            // Finished rows keep their length; fixed-batch calls need equal prefixes.
            if fixed_batch {
                let len = seqs.iter().map(Vec::len).max().unwrap_or(1);
                for seq in seqs.iter_mut() {
                    seq.resize(len, t.pad);
                }
            }
        }
        Ok(self.generated(seqs, real))
    }

    /// Greedy decoding with the key/value cache of dynamic exports: each step runs the decoder
    /// on every unfinished row's newest token only, which attends to the cached keys and values
    /// of the tokens before it, so a step costs the same at any length.
    fn generate_cached(
        &self,
        step: &DecoderStep,
        encoded: &Encoded,
        real: usize,
        max_new_tokens: usize,
    ) -> Result<Vec<Answer>, InferenceError> {
        let t = self.manifest.tokens;
        let dev = self.tensor_device();
        let [planes, hidden] = step.dims;
        let mut seqs: Vec<Vec<i64>> = vec![vec![t.dec]; real];
        // The rows still generating, and their cache, question embeddings and mask.
        let mut rows: Vec<usize> = (0..real).collect();
        let (mut embeds, mut mask) =
            (encoded.embeds.f_narrow(0, 0, real as i64)?, encoded.mask.f_narrow(0, 0, real as i64)?);
        let mut past = Tensor::f_zeros([real as i64, planes, 0, hidden], (self.kind, dev))?;
        for position in 0..max_new_tokens {
            if rows.is_empty() {
                break;
            }
            let n = rows.len() as i64;
            let newest: Vec<i64> = rows.iter().map(|&r| seqs[r].last().copied().unwrap_or(t.dec)).collect();
            let ids = matrix(&newest, rows.len(), 1, dev)?;
            let positions = Tensor::f_full([n, 1], position as i64, (Kind::Int64, dev))?;
            let inputs = [ids, positions, past, embeds.shallow_clone(), mask.shallow_clone()].map(tch::IValue::Tensor);
            let (logits, cache) =
                two_tensors(self.text_decoder.method_is(&step.method, &inputs)?).ok_or_else(|| {
                    InferenceError::Torch(tch::TchError::Kind("text_decoder_step must return (logits, past)".into()))
                })?;
            check_shape("text_decoder_step", &logits, &[n, self.shapes.vocab as i64])?;
            let next: Vec<i64> = Vec::try_from(logits.f_argmax(-1, false)?.f_to_device(tch::Device::Cpu)?)?;
            let mut unfinished = Vec::with_capacity(rows.len());
            for (k, &r) in rows.iter().enumerate() {
                seqs[r].push(next[k]);
                if next[k] != t.sep {
                    unfinished.push(k as i64);
                }
            }
            past = cache;
            if unfinished.len() < rows.len() {
                let keep = Tensor::from_slice(&unfinished).f_to_device(dev)?;
                past = past.f_index_select(0, &keep)?;
                embeds = embeds.f_index_select(0, &keep)?;
                mask = mask.f_index_select(0, &keep)?;
                rows = unfinished.iter().map(|&k| rows[k as usize]).collect();
            }
        }
        Ok(self.generated(seqs, real))
    }

    /// The answers of generated sequences ([DEC] first), each cut after its [SEP].
    fn generated(&self, seqs: Vec<Vec<i64>>, real: usize) -> Vec<Answer> {
        let t = self.manifest.tokens;
        seqs.into_iter()
            .take(real)
            .map(|seq| {
                let mut generated: Vec<i64> = seq[1..].to_vec();
                if let Some(end) = generated.iter().position(|&id| id == t.sep) {
                    generated.truncate(end + 1);
                }
                Answer {
                    answer: self.tokenizer.decode(&generated),
                    probability: None,
                    p_yes: None,
                    p_no: None,
                    token_ids: generated,
                }
            })
            .collect()
    }
}

/// A question with the frame it is about and its position among that frame's questions.
type Row<'a> = (usize, usize, &'a Question);

/// A group's question embeddings and their mask (1 = real token).
struct Encoded {
    embeds: Tensor,
    mask: Tensor,
}

fn matrix(data: &[i64], rows: usize, cols: usize, device: tch::Device) -> Result<Tensor, InferenceError> {
    Ok(Tensor::from_slice(data).f_view([rows as i64, cols as i64])?.f_to_device(device)?)
}

/// The two tensors of a `(Tensor, Tensor)` tuple.
fn two_tensors(value: tch::IValue) -> Option<(Tensor, Tensor)> {
    match value {
        tch::IValue::Tuple(items) => match <[tch::IValue; 2]>::try_from(items) {
            Ok([tch::IValue::Tensor(a), tch::IValue::Tensor(b)]) => Some((a, b)),
            _ => None,
        },
        _ => None,
    }
}

fn check_shape(part: &'static str, t: &Tensor, expected: &[i64]) -> Result<(), InferenceError> {
    let got = t.size();
    if got != expected {
        return Err(InferenceError::Shape { part, expected: expected.to_vec(), got });
    }
    Ok(())
}

/// The pipeline's stages one at a time, for the criterion benches (`benches/pipeline.rs`): what
/// [`Model::answer`] does for a batch, split where the three parts are called. Not a stable API.
#[doc(hidden)]
pub mod stages {
    use tch::Tensor;

    use super::{Encoded, InferenceError, Model, Pixels, Question};

    /// Question embeddings of one text-encoder batch, ready for the decoder.
    pub struct EncodedQuestions(Encoded);

    /// Image encoder: the frames' `image_kv`, `[frames, planes, tokens, hidden]`.
    pub fn encode_images(model: &Model, frames: &[&Pixels]) -> Result<Tensor, InferenceError> {
        let _no_grad = tch::no_grad_guard();
        model.encode_images(frames)
    }

    /// Text encoder over `questions`, each about the frame at that index of `image_kv`, as one
    /// batch.
    pub fn encode_questions(
        model: &Model,
        image_kv: &Tensor,
        questions: &[(usize, &Question)],
    ) -> Result<EncodedQuestions, InferenceError> {
        let _no_grad = tch::no_grad_guard();
        let rows: Vec<_> = questions.iter().enumerate().map(|(i, &(frame, q))| (frame, i, q)).collect();
        model.encode_questions(image_kv, &rows).map(EncodedQuestions)
    }

    /// One decoder step on [DEC] for every question: the yes/no answer's logits `[rows, vocab]`
    /// (a generated answer runs one such step per token).
    pub fn decoder_step(model: &Model, encoded: &EncodedQuestions) -> Result<Tensor, InferenceError> {
        let _no_grad = tch::no_grad_guard();
        let rows = encoded.0.embeds.size()[0] as usize;
        model.decoder_step(&encoded.0, &vec![vec![model.manifest.tokens.dec]; rows])
    }

    /// Greedy generation of up to `max_new_tokens` for every question, with the key/value cache
    /// when the model has one and `cached`, else re-running the decoder over each prefix.
    pub fn generate(
        model: &Model,
        encoded: &EncodedQuestions,
        max_new_tokens: usize,
        cached: bool,
    ) -> Result<Vec<super::Answer>, InferenceError> {
        let _no_grad = tch::no_grad_guard();
        let rows = encoded.0.embeds.size()[0] as usize;
        model.generate_answers(&encoded.0, rows, max_new_tokens, cached)
    }
}
