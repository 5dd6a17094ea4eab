//! Frame preprocessing per image size: JPEG decode (libjpeg-turbo), Pillow-exact bicubic resize
//! to the model's 384×384, and rescale + normalise into the image encoder's tensor; each step
//! alone and the three together (what a request pays before it reaches a replica).

use blipserve_testkit as testkit;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::cell::OnceCell;
use std::hint::black_box;

use blipserve_model::model::preprocess::{decode, resize_bicubic};
use blipserve_model::model::{ImageLimits, Manifest, Preprocessor, RgbImage};

const SIZES: [(u32, u32); 4] = [(640, 480), (1280, 720), (1920, 1080), (3840, 2160)];

fn preprocess(c: &mut Criterion) {
    let manifest = Manifest::read(&testkit::model_dir("tiny")).expect("manifest");
    let preprocessor = Preprocessor::new(&manifest.preprocess, ImageLimits::default());
    let [height, width] = manifest.preprocess.size;
    // Frames are made on first use, so a run filtered to one benchmark (as `cargo test` and
    // nextest run them) does not synthesise a 4K frame it never decodes.
    let frames: Vec<(String, OnceCell<Vec<u8>>, OnceCell<RgbImage>)> =
        SIZES.iter().map(|(w, h)| (format!("{w}x{h}"), OnceCell::new(), OnceCell::new())).collect();
    let jpeg = |i: usize| {
        frames[i].1.get_or_init(|| {
            let (w, h) = SIZES[i];
            testkit::jpeg(&testkit::synthetic_frame(w, h, 1), 90, testkit::Subsamp::Sub2x2)
        })
    };
    let rgb = |i: usize| frames[i].2.get_or_init(|| decode(jpeg(i), &ImageLimits::default()).expect("decode"));

    let mut group = c.benchmark_group("preprocess");
    group.throughput(Throughput::Elements(1));
    for (i, (size, _, _)) in frames.iter().enumerate() {
        group.bench_function(BenchmarkId::new("decode+resize+normalise", size), |b| {
            let jpeg = jpeg(i);
            b.iter(|| preprocessor.pixels(black_box(jpeg)).expect("pixels"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("preprocess-steps");
    for (i, (size, _, _)) in frames.iter().enumerate() {
        group.bench_function(BenchmarkId::new("decode", size), |b| {
            let jpeg = jpeg(i);
            b.iter(|| decode(black_box(jpeg), &ImageLimits::default()).expect("decode"))
        });
        group.bench_function(BenchmarkId::new("resize", size), |b| {
            let rgb = rgb(i);
            b.iter(|| resize_bicubic(black_box(rgb), width, height))
        });
    }
    // The same work at every input size (the resized frame is always the model's size).
    group.bench_function("normalise", |b| {
        let resized = resize_bicubic(rgb(0), width, height);
        b.iter(|| preprocessor.normalize(black_box(&resized)))
    });
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
