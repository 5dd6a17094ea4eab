//! `blipserve throughput`: frames per second of one model replica in-process, without HTTP.
//!
//! The same work a replica of `blipserve serve` does for a frame (decode, resize, normalise,
//! tokenise, then the pipeline on a batch of frames), on the same frames and questions, so a
//! load test of the server compared with this shows what the server layer costs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use blipserve_api::frame::ImageLimits;

use crate::model::{FrameQuestions, Model};

use super::{AnswerModeArg, ModelArgs};

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Frame to answer (repeatable; used in turn)
    #[arg(long = "image", default_value = "models/sample-frame.jpg")]
    images: Vec<PathBuf>,

    /// Question asked about every frame (repeatable)
    #[arg(long = "question", default_values_t = blipserve_api::DEFAULT_QUESTIONS.map(String::from))]
    questions: Vec<String>,

    /// Frames to answer, after the warm-up
    #[arg(long, default_value_t = 20)]
    frames: usize,

    /// Frames per pipeline call, as the server's batcher would group them
    #[arg(long, default_value_t = 1)]
    batch_frames: usize,

    /// Batches answered first and not counted
    #[arg(long, default_value_t = 1)]
    warmup_batches: usize,

    /// yesno: one decoder step per question (the server's default); generate: free text
    #[arg(long, value_enum, default_value_t = AnswerModeArg::Yesno)]
    mode: AnswerModeArg,

    /// Write the report as JSON to this file
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    threads: usize,
    frames: usize,
    batch_frames: usize,
    questions_per_frame: usize,
    elapsed_s: f64,
    throughput_per_s: f64,
    /// Decoding, resizing and normalising the frames, and tokenising their questions.
    preprocess_s: f64,
    /// The pipeline: image encoder, text encoder, decoder.
    inference_s: f64,
    /// Each batch's time, preprocessing included, in order.
    batch_ms: Vec<f64>,
}

pub fn run(args: ThroughputArgs) -> anyhow::Result<()> {
    // On a thread of its own, as a server replica runs (libtorch's thread pool and the memory
    // allocator's arenas are per thread).
    std::thread::Builder::new()
        .name("replica-0".into())
        .spawn(move || measure(args))?
        .join()
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

fn measure(args: ThroughputArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.frames > 0 && args.batch_frames > 0, "--frames and --batch-frames must be positive");
    // As a server replica sets up its thread.
    let threads = args.model.threads(1);
    tch::set_num_threads(threads as i32);
    let dir = &args.model.model;
    let model = Model::load(dir, &args.model.load_options(ImageLimits::DEFAULT))
        .with_context(|| format!("loading model {}", dir.display()))?;
    let images = args
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mode = args.mode.answer_mode(&model, None);

    let mut next_image = 0usize;
    let mut batch = |frames: usize| -> anyhow::Result<(Duration, Duration)> {
        let started = Instant::now();
        let mut pixels = Vec::with_capacity(frames);
        let mut questions = Vec::with_capacity(frames);
        for _ in 0..frames {
            let bytes = &images[next_image % images.len()];
            next_image += 1;
            pixels.push(model.preprocessor().pixels(bytes)?);
            let asked = args.questions.iter().map(|q| model.tokenizer().encode(q)).collect::<Result<Vec<_>, _>>()?;
            questions.push(asked);
        }
        let preprocessed = Instant::now();
        let frames: Vec<FrameQuestions> =
            pixels.iter().zip(&questions).map(|(p, q)| FrameQuestions { pixels: p, questions: q }).collect();
        model.answer(&frames, mode)?;
        Ok((preprocessed - started, preprocessed.elapsed()))
    };

    for _ in 0..args.warmup_batches {
        batch(args.batch_frames)?;
    }
    let (mut preprocess, mut inference) = (Duration::ZERO, Duration::ZERO);
    let mut batch_ms = Vec::new();
    let started = Instant::now();
    let mut done = 0;
    while done < args.frames {
        let frames = args.batch_frames.min(args.frames - done);
        let (p, i) = batch(frames)?;
        preprocess += p;
        inference += i;
        batch_ms.push((p + i).as_secs_f64() * 1e3);
        done += frames;
        eprint!("\rthroughput: {done}/{} frames, {:.0} s", args.frames, started.elapsed().as_secs_f64());
    }
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    let report = Report {
        model: model.manifest().model_id.clone(),
        threads,
        frames: done,
        batch_frames: args.batch_frames,
        questions_per_frame: args.questions.len(),
        elapsed_s: elapsed,
        throughput_per_s: done as f64 / elapsed,
        preprocess_s: preprocess.as_secs_f64(),
        inference_s: inference.as_secs_f64(),
        batch_ms,
    };
    println!(
        "in-process, {} thread(s), {} frame(s) a batch: {} frames in {:.1} s = {:.2} frames/s × {} questions \
         (preprocess {:.1} s, inference {:.1} s)",
        report.threads,
        report.batch_frames,
        report.frames,
        report.elapsed_s,
        report.throughput_per_s,
        report.questions_per_frame,
        report.preprocess_s,
        report.inference_s
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
