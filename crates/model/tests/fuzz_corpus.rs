//! The inference tier's fuzz targets (`make fuzz`) replayed on their seed corpus and on every
//! crash they found (fuzz/corpus/<target>/, fuzz/regressions/<target>/): the same functions, on
//! the stable toolchain, in `make test`. `question` uses models/tiny's tokenizer (`make models`).

use blipserve_api::fuzzing::replay;
use blipserve_model::fuzzing;

#[test]
fn decode() {
    replay("decode", fuzzing::decode);
}

#[test]
fn question() {
    replay("question", fuzzing::question);
}

#[test]
fn manifest() {
    replay("manifest", fuzzing::manifest);
}
