//! Question tokenisation with the model directory's tokenizer (BERT WordPiece), for questions of
//! a few lengths.

use blipserve_testkit as testkit;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

use blipserve_model::model::{Manifest, QuestionTokenizer};

const QUESTIONS: [(&str, &str); 3] = [
    ("short", "is the dog barking?"),
    ("medium", "is the dog chewing the furniture in the living room?"),
    (
        "long",
        "is the brown dog on the left of the picture lying on the grey sofa and chewing one of its cushions \
         while the cat watches?",
    ),
];

fn tokenize(c: &mut Criterion) {
    let dir = testkit::model_dir("tiny");
    let manifest = Manifest::read(&dir).expect("manifest");
    let tokenizer = QuestionTokenizer::load(&dir, &manifest.tokens, manifest.max_question_len).expect("tokenizer");
    let mut group = c.benchmark_group("tokenize");
    for (name, text) in QUESTIONS {
        let tokens = tokenizer.encode(text).expect("question").ids.len();
        group.bench_with_input(BenchmarkId::new(name, format!("{tokens} tokens")), text, |b, text| {
            b.iter(|| tokenizer.encode(black_box(text)).expect("question"))
        });
    }
    group.finish();
}

criterion_group!(benches, tokenize);
criterion_main!(benches);
