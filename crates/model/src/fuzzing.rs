//! The bodies of the inference tier's fuzz targets (`fuzz/`, `make fuzz`), here so that the
//! fuzzers and the corpus replay (`tests/fuzz_corpus.rs`, in `make test`) run the same code. Each
//! function takes arbitrary bytes, must never panic, and asserts what must hold of what it
//! accepts. Not an API: hidden from the documentation.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::model::manifest::{PreprocessSpec, SpecialTokens};
use crate::model::preprocess::{check_header, decode as decode_frame, ImageLimits, Preprocessor};
use crate::model::{Manifest, QuestionError, QuestionTokenizer};

/// Smaller than the defaults (8192 a side, 8K's pixels) so that a header claiming the largest
/// accepted frame costs milliseconds, not a second, per run; the code path is the same.
pub const DECODE_LIMITS: ImageLimits = ImageLimits { max_width: 4096, max_height: 4096, max_pixels: 1 << 22 };

/// A frame decoded (JPEG through libjpeg-turbo; PNG, WebP, GIF and BMP through the image crate)
/// within [`DECODE_LIMITS`], then resized and normalised as the preprocessor does (to a small,
/// non-square size). What decodes must be within the limits, hold width × height × 3 bytes and
/// pass the gateway's header check; what is refused must be refused with a client error.
pub fn decode(data: &[u8]) {
    let rgb = match decode_frame(data, &DECODE_LIMITS) {
        Ok(rgb) => rgb,
        Err(e) => {
            let e = blipserve_api::http::error::ApiError::from(e);
            assert!(e.status().is_client_error(), "{e} answers {}", e.status());
            return;
        }
    };
    let (w, h) = (rgb.width as u64, rgb.height as u64);
    assert!(
        w > 0 && h > 0 && w <= DECODE_LIMITS.max_width as u64 && h <= DECODE_LIMITS.max_height as u64,
        "decoded {w}×{h}"
    );
    assert!(w * h <= DECODE_LIMITS.max_pixels, "decoded {w}×{h}");
    assert_eq!(rgb.data.len() as u64, w * h * 3, "decoded {w}×{h}");
    if let Err(e) = check_header(data, &DECODE_LIMITS) {
        panic!("decoded {w}×{h}, but the gateway's header check refuses it: {e}");
    }
    let spec = PreprocessSpec {
        size: [24, 32],
        resample: "bicubic".into(),
        convert_rgb: true,
        rescale: 1.0 / 255.0,
        mean: [0.48145466, 0.4578275, 0.40821073],
        std: [0.26862954, 0.26130258, 0.27577711],
    };
    let preprocessor = Preprocessor::new(&spec, DECODE_LIMITS);
    let resized = crate::model::preprocess::resize_bicubic(&rgb, 32, 24);
    assert_eq!((resized.width, resized.height, resized.data.len()), (32, 24, 32 * 24 * 3));
    let pixels = preprocessor.normalize(&resized);
    assert_eq!((pixels.height, pixels.width, pixels.values.len()), (24, 32, 3 * 24 * 32));
    assert!(pixels.values.iter().all(|v| v.is_finite()));
}

/// The tokenizer and its model's special tokens and vocabulary size.
struct Tokenizing {
    tokenizer: QuestionTokenizer,
    tokens: SpecialTokens,
    max_len: usize,
    vocab: usize,
}

/// The model directory whose tokenizer [`question`] uses: `BLIPSERVE_FUZZ_MODEL`, or the
/// workspace's `models/tiny` (`make models`).
pub fn model_dir() -> PathBuf {
    std::env::var_os("BLIPSERVE_FUZZ_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny")))
}

fn tokenizing() -> &'static Tokenizing {
    static TOKENIZING: OnceLock<Tokenizing> = OnceLock::new();
    TOKENIZING.get_or_init(|| {
        let dir = model_dir();
        let manifest =
            Manifest::read(&dir).unwrap_or_else(|e| panic!("{e} (run `make models`, or set BLIPSERVE_FUZZ_MODEL)"));
        let vocab = manifest.shapes().expect("the model's shapes").vocab;
        let tokenizer = QuestionTokenizer::load(&dir, &manifest.tokens, manifest.max_question_len)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Tokenizing { tokenizer, tokens: manifest.tokens, max_len: manifest.max_question_len, vocab }
    })
}

/// A question (the input as text, invalid UTF-8 replaced as a lossy reader would) through the
/// model directory's tokenizer: a question it accepts is `[CLS] … [SEP]`, within the model's
/// length, with ids in its vocabulary, and decodes back without a panic.
pub fn question(data: &[u8]) {
    let t = tokenizing();
    let text = String::from_utf8_lossy(data);
    match t.tokenizer.encode(&text) {
        Ok(q) => {
            assert_eq!(q.text, text.trim());
            assert!((3..=t.max_len).contains(&q.ids.len()), "{} tokens", q.ids.len());
            assert_eq!((q.ids[0], q.ids[q.ids.len() - 1]), (t.tokens.cls, t.tokens.sep));
            assert!(q.ids.iter().all(|&id| id >= 0 && (id as usize) < t.vocab), "{:?}", q.ids);
            let _ = t.tokenizer.decode(&q.ids);
        }
        Err(QuestionError::TooLong { tokens, max }) => assert!(tokens > max && max == t.max_len),
        Err(QuestionError::Empty) | Err(QuestionError::Tokenizer(_)) => {}
    }
}

/// A model directory's `manifest.json` text: parsed and checked as loading does, then its three
/// parts' shapes cross-checked. What passes must be consistent.
pub fn manifest(data: &[u8]) {
    // `Manifest::read` reads the file as UTF-8 text.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::from_json(text) else { return };
    assert!(manifest.preprocess.std.iter().all(|s| *s > 0.0) && manifest.preprocess.rescale > 0.0);
    let _ = manifest.float_kind();
    let Ok(shapes) = manifest.shapes() else { return };
    let [h, w] = manifest.preprocess.size;
    assert_eq!(shapes.image_size, (h as usize, w as usize));
    assert!(manifest.max_question_len >= 3 && manifest.generate.max_length >= 2);
    assert!(shapes.question_len.is_none_or(|lq| manifest.max_question_len <= lq));
    assert!(shapes.decoder_len.is_none_or(|ld| manifest.generate.max_length <= ld));
    let t = manifest.tokens;
    for id in [t.pad, t.cls, t.sep, t.dec, t.yes, t.no] {
        assert!(id >= 0 && (id as usize) < shapes.vocab, "token id {id} of a vocabulary of {}", shapes.vocab);
    }
    assert_eq!(shapes.image_kv[0] % 2, 0);
}
