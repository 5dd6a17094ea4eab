//! `blipserve throughput`: frames per second of one model replica in-process, without HTTP.
//!
//! The same work a replica of `blipserve serve` does for a frame (decode, resize, normalise,
//! tokenise, then the pipeline on a batch of frames), on the same frames and questions, so a
//! load test of the server compared with this shows what the server layer costs.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use blipserve_api::frame::ImageLimits;

use crate::model::{AnswerMode, FrameQuestions, Model};

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

    /// Keep the model loaded and measure a round (the warm-up, then --frames frames) each time a
    /// line arrives on standard input, until it ends: standard output gets one JSON line once the
    /// model is loaded, then each round's report as a JSON line (for a benchmark that pairs
    /// in-process rounds with load tests of a server without reloading the model in between)
    #[arg(long, conflicts_with = "json")]
    repeat_on_stdin: bool,
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
    let loading = Instant::now();
    let model = Model::load(dir, &args.model.load_options(ImageLimits::DEFAULT))
        .with_context(|| format!("loading model {}", dir.display()))?;
    let load_s = loading.elapsed().as_secs_f64();
    let images = args
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mode = args.mode.answer_mode(&model, None);
    let mut measure = Measure { args: &args, model: &model, images, next_image: 0, threads, mode };

    if !args.repeat_on_stdin {
        let report = measure.round()?;
        println!("{}", report.summary());
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    // One JSON line once loaded, then one report per line read, until the input ends.
    let mut out = std::io::stdout().lock();
    let loaded = serde_json::json!({ "model": model.manifest().model_id, "threads": threads, "load_s": load_s });
    writeln!(out, "{loaded}")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        line.context("reading standard input")?;
        let report = measure.round()?;
        eprintln!("{}", report.summary());
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
        out.flush()?;
    }
    Ok(())
}

/// One loaded replica and the frames it answers in turn.
struct Measure<'a> {
    args: &'a ThroughputArgs,
    model: &'a Model,
    images: Vec<Vec<u8>>,
    next_image: usize,
    threads: usize,
    mode: AnswerMode,
}

impl Measure<'_> {
    /// Preprocesses and answers the next `frames` frames as one batch: (preprocessing, inference).
    fn batch(&mut self, frames: usize) -> anyhow::Result<(Duration, Duration)> {
        let (model, args) = (self.model, self.args);
        let started = Instant::now();
        let mut pixels = Vec::with_capacity(frames);
        let mut questions = Vec::with_capacity(frames);
        for _ in 0..frames {
            let bytes = &self.images[self.next_image % self.images.len()];
            self.next_image += 1;
            pixels.push(model.preprocessor().pixels(bytes)?);
            let asked = args.questions.iter().map(|q| model.tokenizer().encode(q)).collect::<Result<Vec<_>, _>>()?;
            questions.push(asked);
        }
        let preprocessed = Instant::now();
        let frames: Vec<FrameQuestions> =
            pixels.iter().zip(&questions).map(|(p, q)| FrameQuestions { pixels: p, questions: q }).collect();
        model.answer(&frames, self.mode)?;
        Ok((preprocessed - started, preprocessed.elapsed()))
    }

    /// The warm-up batches, then `--frames` frames measured.
    fn round(&mut self) -> anyhow::Result<Report> {
        let args = self.args;
        for _ in 0..args.warmup_batches {
            self.batch(args.batch_frames)?;
        }
        let (mut preprocess, mut inference) = (Duration::ZERO, Duration::ZERO);
        let mut batch_ms = Vec::new();
        let started = Instant::now();
        let mut done = 0;
        while done < args.frames {
            let frames = args.batch_frames.min(args.frames - done);
            let (p, i) = self.batch(frames)?;
            preprocess += p;
            inference += i;
            batch_ms.push((p + i).as_secs_f64() * 1e3);
            done += frames;
            eprint!("\rthroughput: {done}/{} frames, {:.0} s", args.frames, started.elapsed().as_secs_f64());
        }
        eprintln!();
        let elapsed = started.elapsed().as_secs_f64();
        let report = Report {
            model: self.model.manifest().model_id.clone(),
            threads: self.threads,
            frames: done,
            batch_frames: args.batch_frames,
            questions_per_frame: args.questions.len(),
            elapsed_s: elapsed,
            throughput_per_s: done as f64 / elapsed,
            preprocess_s: preprocess.as_secs_f64(),
            inference_s: inference.as_secs_f64(),
            batch_ms,
        };
        Ok(report)
    }
}

impl Report {
    fn summary(&self) -> String {
        format!(
            "in-process, {} thread(s), {} frame(s) a batch: {} frames in {:.1} s = {:.2} frames/s × {} questions \
             (preprocess {:.1} s, inference {:.1} s)",
            self.threads,
            self.batch_frames,
            self.frames,
            self.elapsed_s,
            self.throughput_per_s,
            self.questions_per_frame,
            self.preprocess_s,
            self.inference_s
        )
    }
}
