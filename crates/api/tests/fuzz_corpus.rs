//! The API tier's fuzz targets (`make fuzz`) replayed on their seed corpus and on every crash
//! they found (fuzz/corpus/<target>/, fuzz/regressions/<target>/): the same functions, on the
//! stable toolchain, in `make test`.

use blipserve_api::fuzzing::{self, replay};

#[test]
fn image_header() {
    replay("image_header", fuzzing::image_header);
}

#[test]
fn detect_body() {
    replay("detect_body", fuzzing::detect_body);
}

#[test]
fn base64() {
    replay("base64", fuzzing::base64);
}

#[test]
fn gateway_config() {
    replay("gateway_config", fuzzing::gateway_config);
}
