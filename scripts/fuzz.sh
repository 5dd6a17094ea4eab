#!/usr/bin/env bash
# `make fuzz`: every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, nightly), one after the other,
# each for FUZZ_SECONDS, one process at a time; then a line of figures per target. Fails when a
# target found a crash, a hang (over 10 s) or an out-of-memory (over FUZZ_RSS_MB): the input is
# in fuzz/artifacts/<target>/; fix it and keep it in fuzz/regressions/<target>/ (which
# `make test` replays).
#
#   FUZZ_SECONDS  seconds per target (default 300)
#   FUZZ_TARGETS  which targets (default: all of them, see fuzz/Cargo.toml)
#   FUZZ_RSS_MB   memory limit per target (default 2048)
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, scripts/fuzz-seeds.py)
# and its regressions; what it finds grows a working corpus in fuzz/target/corpus/<target>/
# (kept between runs, never committed). Logs: fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

seconds=${FUZZ_SECONDS:-300}
rss_mb=${FUZZ_RSS_MB:-2048}
all_targets="image_header decode detect_body base64 question gateway_config manifest"
targets=${FUZZ_TARGETS:-$all_targets}

# The model crate's targets link libtorch from the pinned Python environment, as everything else.
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV=${VIRTUAL_ENV:-$repo/.venv}
export PATH=$VIRTUAL_ENV/bin:$PATH

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "make fuzz needs the nightly toolchain (libFuzzer's instrumentation): rustup toolchain install nightly" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi
if [ ! -f models/tiny/tokenizer.json ]; then
  echo "models/tiny is missing (the question target uses its tokenizer): make models" >&2
  exit 1
fi

cd fuzz
cargo +nightly fuzz build
mkdir -p target/logs

summary=target/logs/summary.txt
printf '%-15s %12s %8s %7s %7s %9s %8s %9s  %s\n' target execs exec/s cov ft corpus rss_mb seconds result | tee "$summary"
failed=()
for t in $targets; do
  mkdir -p "target/corpus/$t"
  dirs=("target/corpus/$t" "corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  log=target/logs/$t.log
  start=$(date +%s)
  # New inputs go to the first directory (the working corpus); the seeds stay as committed.
  if cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
      -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (fuzz/$log; inputs in fuzz/artifacts/$t/)"
    failed+=("$t")
  fi
  took=$(($(date +%s) - start))
  # libFuzzer's last status line: "#N DONE cov: C ft: F corp: U/SIZE ... exec/s: E rss: RMb".
  status=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  field() { sed -nE "s/.*$1 ([^ ]+).*/\1/p" <<<"$status"; }
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  peak=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  printf '%-15s %12s %8s %7s %7s %9s %8s %9s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$(field cov:)" "$(field ft:)" \
    "$(field corp:)" "${peak:-?}" "$took" "$result" | tee -a "$summary"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "make fuzz: ${failed[*]} failed; reproduce with: cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/FILE" >&2
  exit 1
fi
