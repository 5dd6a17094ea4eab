//! The three model parts on models/tiny, one at a time (image encoder, text encoder, one decoder
//! step), and the whole yes/no answer, for one frame and for a batch of four, three questions a
//! frame. Intra-op threads: BLIPSERVE_THREADS, else what `serve` gives one replica.

use blipserve_testkit as testkit;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use blipserve_model::model::{stages, AnswerMode, FrameQuestions, LoadOptions, Model, Pixels, Question};

use blipserve_api::DEFAULT_QUESTIONS as QUESTIONS;
const BATCHES: [usize; 2] = [1, 4];

fn pipeline(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("BLIPSERVE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| blipserve_model::roles::default_threads_and_replicas(cores).0);
    tch::set_num_threads(threads as i32);
    tch::set_num_interop_threads(1);

    let model = Model::load(&testkit::model_dir("tiny"), &LoadOptions::default()).expect("model");
    let questions: Vec<Question> = QUESTIONS.iter().map(|q| model.tokenizer().encode(q).expect("question")).collect();
    let jpeg = testkit::jpeg(&testkit::synthetic_frame(1280, 720, 2), 90, testkit::Subsamp::Sub2x2);
    let pixels: Vec<Pixels> = (0..4).map(|_| model.preprocessor().pixels(&jpeg).expect("pixels")).collect();

    let mut group = c.benchmark_group("pipeline");
    for frames in BATCHES {
        let batch: Vec<&Pixels> = pixels.iter().take(frames).collect();
        let rows: Vec<(usize, &Question)> = (0..frames).flat_map(|f| questions.iter().map(move |q| (f, q))).collect();
        let image_embeds = stages::encode_images(&model, &batch).expect("image encoder");
        let encoded = stages::encode_questions(&model, &image_embeds, &rows).expect("text encoder");
        let id = |what: &str| BenchmarkId::new(what, format!("{frames} frame(s)"));
        group.throughput(Throughput::Elements(frames as u64));

        group.bench_function(id("image-encoder"), |b| {
            b.iter(|| stages::encode_images(&model, black_box(&batch)).expect("image encoder"))
        });
        group.bench_function(id("text-encoder"), |b| {
            b.iter(|| stages::encode_questions(&model, black_box(&image_embeds), &rows).expect("text encoder"))
        });
        group.bench_function(id("decoder-step"), |b| {
            b.iter(|| stages::decoder_step(&model, black_box(&encoded)).expect("decoder"))
        });
        let frame_questions: Vec<FrameQuestions<'_>> =
            batch.iter().map(|&p| FrameQuestions { pixels: p, questions: &questions }).collect();
        group.bench_function(id("answer-yes-no"), |b| {
            b.iter(|| model.answer(black_box(&frame_questions), AnswerMode::YesNo).expect("answer"))
        });
    }
    group.finish();
}

/// Generated answers of 1 to 19 tokens for one frame's three questions, with the decoder's
/// key/value cache and without it (the decoder re-run over each prefix): throughput in tokens,
/// so a flat line across lengths means each new token costs the same.
fn generate(c: &mut Criterion) {
    let model = Model::load(&testkit::model_dir("tiny"), &LoadOptions::default()).expect("model");
    let questions: Vec<Question> = QUESTIONS.iter().map(|q| model.tokenizer().encode(q).expect("question")).collect();
    let jpeg = testkit::jpeg(&testkit::synthetic_frame(1280, 720, 2), 90, testkit::Subsamp::Sub2x2);
    let pixels = model.preprocessor().pixels(&jpeg).expect("pixels");
    let image_kv = stages::encode_images(&model, &[&pixels]).expect("image encoder");
    let rows: Vec<(usize, &Question)> = questions.iter().map(|q| (0, q)).collect();
    let encoded = stages::encode_questions(&model, &image_kv, &rows).expect("text encoder");
    let mut group = c.benchmark_group("generate");
    for tokens in [1, 5, 10, model.max_new_tokens()] {
        for (name, cached) in [("cached", true), ("uncached", false)] {
            let produced = stages::generate(&model, &encoded, tokens, cached).expect("generate");
            // A random-weight model rarely stops early; count what it made.
            let made: usize = produced.iter().map(|a| a.token_ids.len()).sum();
            group.throughput(Throughput::Elements(made as u64));
            group.bench_function(BenchmarkId::new(name, format!("{tokens} token(s)")), |b| {
                b.iter(|| stages::generate(&model, black_box(&encoded), tokens, cached).expect("generate"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pipeline, generate);
criterion_main!(benches);
