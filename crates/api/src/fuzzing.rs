//! The bodies of the API tier's fuzz targets (`fuzz/`, `make fuzz`), here so that the fuzzers
//! and the corpus replay (`tests/fuzz_corpus.rs`, in `make test`) run the same code. Each
//! function takes arbitrary bytes, must never panic, and asserts what must hold of what it
//! accepts. Not an API: hidden from the documentation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use clap::{Args, Command, FromArgMatches};

use crate::behaviors::Catalogue;
use crate::detect;
use crate::frame::{self, ImageError, ImageFormat, ImageLimits};
use crate::gateway::config::{self, MAX_WEIGHT};
use crate::gateway::pools::Pools;
use crate::http::body;
use crate::roles::gateway::{GatewayArgs, SECTIONS};
use crate::settings::{ConfigFile, LimitsArgs, RequestLimits};

/// Tight limits beside the defaults, so that the fuzzers reach the "too large" refusals of
/// small inputs too.
pub const SMALL_LIMITS: ImageLimits = ImageLimits { max_width: 64, max_height: 48, max_pixels: 64 * 32 };

/// Format sniffing and the header checks the gateway runs on a frame (`frame::check_header`),
/// under the default limits and under [`SMALL_LIMITS`].
pub fn image_header(data: &[u8]) {
    let sniffed = frame::sniff(data);
    let mut accepted = Vec::new();
    for limits in [ImageLimits::DEFAULT, SMALL_LIMITS] {
        match frame::check_header(data, &limits) {
            Ok(format) => {
                assert_eq!(sniffed.as_ref(), Ok(&format), "check_header and sniff disagree");
                let (width, height) = header_dimensions(data, &format).expect("a header check_header accepted");
                assert!(
                    frame::check_limits(width, height, &limits).is_ok(),
                    "accepted a {width}×{height} {format:?} under {limits:?}"
                );
                accepted.push(limits);
            }
            Err(e) => {
                if let Err(sniff_error) = &sniffed {
                    assert_eq!(&e, sniff_error, "refused for another reason than sniff's");
                }
                client_error(crate::http::error::ApiError::from(e));
            }
        }
    }
    assert!(
        !accepted.contains(&SMALL_LIMITS) || accepted.contains(&ImageLimits::DEFAULT),
        "accepted under the small limits but not under the default ones"
    );
}

/// The width and height a header claims, as the checks read them.
fn header_dimensions(data: &[u8], format: &ImageFormat) -> Result<(u64, u64), ImageError> {
    match format {
        ImageFormat::Jpeg => {
            let unlimited = ImageLimits { max_width: u32::MAX, max_height: u32::MAX, max_pixels: u64::MAX };
            let header = frame::jpeg_header(&mut frame::jpeg_decompressor()?, data, &unlimited)?;
            Ok((header.width as u64, header.height as u64))
        }
        other => frame::image_crate_dimensions(data, other).map(|(w, h)| (w as u64, h as u64)),
    }
}

/// The default request and image limits, as the flags declare them.
fn default_limits() -> &'static (RequestLimits, ImageLimits) {
    static LIMITS: OnceLock<(RequestLimits, ImageLimits)> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let matches =
            LimitsArgs::augment_args(Command::new("limits")).no_binary_name(true).get_matches_from(Vec::<&str>::new());
        let args = LimitsArgs::from_arg_matches(&matches).expect("the limits' defaults parse");
        (args.request_limits(), args.image_limits())
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
    })
}

/// Every refusal of what a client sent must be a 4xx, never a 5xx.
fn client_error(e: crate::http::error::ApiError) {
    assert!(e.status().is_client_error(), "{e} ({}) answers {}", e.code(), e.status());
    let _ = e.to_string();
}

/// A detect request's body as every role reads it: the content type is the input's first line
/// (none when the input has no newline or the line is not a valid header value), the body the
/// rest. Read within the body limit, parsed (multipart or JSON, base64 image included), checked
/// as the gateway checks it (no catalogue) and as a worker does (the default catalogue), then the
/// image's header.
pub fn detect_body(data: &[u8]) {
    let (content_type, bytes) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (HeaderValue::from_bytes(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    let mut headers = HeaderMap::new();
    if let Some(value) = content_type {
        headers.insert(header::CONTENT_TYPE, value);
    }
    let (limits, image_limits) = default_limits();
    let bytes = Bytes::copy_from_slice(bytes);
    runtime().block_on(async {
        // The size limit: a body at the limit is read whole, one byte over is refused.
        let read = body::read_limited(Body::from(bytes.clone()), bytes.len()).await.expect("a body within the limit");
        assert_eq!(read, bytes);
        if !bytes.is_empty() {
            let over = body::read_limited(Body::from(bytes.clone()), bytes.len() - 1).await;
            assert!(matches!(over, Err(crate::http::error::ApiError::BodyTooLarge { .. })), "{over:?}");
        }
        let catalogue = Catalogue::default();
        for behaviors in [None, Some(&catalogue)] {
            let raw = match body::parse_body(&headers, bytes.clone()).await {
                Ok(raw) => raw,
                Err(e) => return client_error(e),
            };
            let checked = match detect::check(raw, limits, behaviors) {
                Ok(checked) => checked,
                Err(e) => {
                    client_error(e);
                    continue;
                }
            };
            assert!(!checked.image.is_empty());
            // Without a catalogue (the gateway) behaviours are counted but left to the worker.
            let fewest = usize::from(behaviors.is_some());
            assert!((fewest..=limits.max_questions).contains(&checked.questions.len()));
            for asked in &checked.questions {
                assert!(!asked.text.trim().is_empty());
                if asked.behavior.is_none() {
                    assert!(asked.text.chars().count() <= limits.max_question_chars);
                }
            }
            if let Err(e) = frame::check_header(&checked.image, image_limits) {
                client_error(e.into());
            }
        }
    });
}

/// The JSON body's base64 image field, directly: arbitrary text must decode or be refused
/// cleanly, what decodes must round-trip, and the input's own bytes, encoded the ways a client
/// may (padded or not, in a `data:` URL, wrapped in lines), must decode to themselves.
pub fn base64(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match body::decode_base64(&text) {
        Ok(decoded) => {
            let again = body::decode_base64(&base64::engine::general_purpose::STANDARD.encode(&decoded));
            assert_eq!(again.as_deref().ok(), Some(decoded.as_slice()), "round trip");
        }
        Err(e) => client_error(e),
    }
    let padded = base64::engine::general_purpose::STANDARD.encode(data);
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(data);
    let wrapped: String = padded.as_bytes().chunks(76).map(|l| format!("{}\r\n", String::from_utf8_lossy(l))).collect();
    for encoded in [padded.clone(), unpadded, format!("data:image/jpeg;base64,{padded}"), wrapped] {
        assert_eq!(body::decode_base64(&encoded).ok().as_deref(), Some(data), "{encoded:?}");
    }
}

/// The gateway's configuration file: TOML, its `[[pools]]` (parsed, URLs normalised, every rule
/// checked, then built into the routing table) and its other keys as the flags' defaults, parsed
/// as `blipserve gateway --config FILE` does.
pub fn gateway_config(data: &[u8]) {
    // `ConfigFile::read` reads the file as UTF-8 text.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = text.parse::<toml::Table>() else { return };
    let file = ConfigFile { path: None, table };
    if let Ok(pools) = config::pools_of(&file) {
        assert!(config::check_pools(&pools).is_ok(), "pools_of returned pools check_pools refuses");
        assert!(pools.iter().any(|p| p.weight > 0) && pools.iter().all(|p| p.weight <= MAX_WEIGHT));
        for pool in &pools {
            for url in &pool.urls {
                assert!(url.starts_with("http://") && !url.ends_with('/'), "{url:?} is not normalised");
            }
        }
        let built = Pools::new(&pools);
        let snapshot = built.current();
        assert_eq!(snapshot.upstreams().count(), pools.iter().map(|p| p.urls.len()).sum::<usize>());
        let _ = crate::gateway::describe(&snapshot);
    }
    let command = GatewayArgs::augment_args(Command::new("gateway"));
    let Ok(command) = crate::settings::with_file_defaults(command, &file, SECTIONS) else { return };
    let Ok(matches) = command.try_get_matches_from(["gateway", "--config", "gateway.toml"]) else { return };
    if let Ok(args) = GatewayArgs::from_arg_matches(&matches) {
        let _ = (args.limits.request_limits(), args.limits.image_limits(), args.listen.addr());
    }
}

/// The fuzz project: `fuzz/` in the workspace.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `run` on every file of the target's seed corpus (`fuzz/corpus/<target>/`, which must not
/// be empty) and of its regressions (`fuzz/regressions/<target>/`, the crashes found, kept), as
/// the fuzzer would; a panic names the file. Returns the number of files run.
pub fn replay(target: &str, run: fn(&[u8])) -> usize {
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            assert_ne!(kind, "corpus", "{} is missing", dir.display());
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("a directory entry").path()).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                panic!("fuzz target {target} panicked on {}", path.display());
            }
            count += 1;
        }
        assert!(kind != "corpus" || count > 0, "{} is empty", dir.display());
    }
    count
}
