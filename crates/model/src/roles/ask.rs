//! `blipserve ask`: one image, some questions, answers on stdout (one JSON object per line).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use blipserve_api::frame::ImageLimits;

use crate::model::{Answer, FrameQuestions, Model};

use super::{AnswerModeArg, ModelArgs};

#[derive(Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Image file (JPEG, PNG, WebP, GIF or BMP).
    #[arg(long)]
    image: PathBuf,

    /// yesno: probability that the answer is yes; generate: free-text answer.
    #[arg(long, value_enum, default_value_t = AnswerModeArg::Yesno)]
    mode: AnswerModeArg,

    /// Longest generated answer in tokens (generate mode; default: the model's limit).
    #[arg(long)]
    max_new_tokens: Option<usize>,

    /// Questions, e.g. "is the dog barking?".
    #[arg(required = true)]
    questions: Vec<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    question: &'a str,
    #[serde(flatten)]
    answer: &'a Answer,
}

pub fn run(args: AskArgs) -> anyhow::Result<()> {
    tch::set_num_threads(args.model.threads(1) as i32);
    tch::set_num_interop_threads(1);
    let dir = &args.model.model;
    let model = Model::load(dir, &args.model.load_options(ImageLimits::DEFAULT))
        .with_context(|| format!("loading model {}", dir.display()))?;
    let bytes = std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let pixels = model.preprocessor().pixels(&bytes).with_context(|| format!("image {}", args.image.display()))?;
    let questions = args
        .questions
        .iter()
        .map(|q| model.tokenizer().encode(q).with_context(|| format!("question {q:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mode = args.mode.answer_mode(&model, args.max_new_tokens);
    let answers = model.answer(&[FrameQuestions { pixels: &pixels, questions: &questions }], mode)?;
    let mut out = std::io::stdout().lock();
    for (question, answer) in questions.iter().zip(&answers[0]) {
        serde_json::to_writer(&mut out, &Line { question: &question.text, answer })?;
        writeln!(out)?;
    }
    Ok(())
}
