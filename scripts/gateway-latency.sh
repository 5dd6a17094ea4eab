#!/usr/bin/env bash
# The gateway's added latency on loopback: one `blipserve worker` (tiny model) and one
# `blipserve gateway` in front of it, both driven by `blipserve loadtest` with the same frame,
# questions and closed-loop concurrency, directly and through the gateway, one after the other.
#   scripts/gateway-latency.sh                  (make gateway-latency)
# Environment: BLIPSERVE_BIN (default target/release/blipserve), MODEL (models/tiny),
# CONCURRENCY ("1 4"), REQUESTS (200), WORKER_PORT (18181), GATEWAY_PORT (18180), OUT (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BLIPSERVE_BIN:-target/release/blipserve}
MODEL=${MODEL:-models/tiny}
CONCURRENCY=${CONCURRENCY:-1 4}
REQUESTS=${REQUESTS:-200}
WORKER_PORT=${WORKER_PORT:-18181}
GATEWAY_PORT=${GATEWAY_PORT:-18180}
OUT=${OUT:-$(mktemp -d)}
[ -x "$BIN" ] || { echo "gateway-latency: $BIN is missing (make build)" >&2; exit 1; }
mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() { # url pid log
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$1/ready" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "gateway-latency: the process for $1 exited:" >&2; cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "gateway-latency: $1 never became ready" >&2
  exit 1
}

"$BIN" worker --model "$MODEL" --listen 127.0.0.1 --port "$WORKER_PORT" 2>"$OUT/worker.log" &
pids+=($!)
wait_ready "http://127.0.0.1:$WORKER_PORT" $! "$OUT/worker.log"
cat >"$OUT/gateway.toml" <<EOF
listen = "127.0.0.1"
port = $GATEWAY_PORT
[[pools]]
name = "local"
backend = "cpu"
weight = 1
urls = ["http://127.0.0.1:$WORKER_PORT"]
EOF
"$BIN" gateway --config "$OUT/gateway.toml" 2>"$OUT/gateway.log" &
pids+=($!)
wait_ready "http://127.0.0.1:$GATEWAY_PORT" $! "$OUT/gateway.log"

run() { # name url concurrency requests
  "$BIN" loadtest --url "$2/v1/detect" --concurrency "$3" --requests "$4" --json "$OUT/$1-c$3.json" \
    2>/dev/null >/dev/null
}

direct=http://127.0.0.1:$WORKER_PORT
gateway=http://127.0.0.1:$GATEWAY_PORT
# Warm both paths up (connections, allocator, caches) before measuring.
run warmup-direct "$direct" 4 40
run warmup-gateway "$gateway" 4 40

echo "| concurrency | path | ok | frames/s | p50 ms | p99 ms |"
echo "| --- | --- | --- | --- | --- | --- |"
for c in $CONCURRENCY; do
  run direct "$direct" "$c" "$REQUESTS"
  run gateway "$gateway" "$c" "$REQUESTS"
  for path in direct gateway; do
    python3 - "$OUT/$path-c$c.json" "$c" "$path" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['ok']}/{r['requests']} | {r['throughput_per_s']:.1f} | {l['p50']:.1f} | {l['p99']:.1f} |")
PY
  done
  python3 - "$OUT/direct-c$c.json" "$OUT/gateway-c$c.json" "$c" <<'PY'
import json, sys
d, g = (json.load(open(p))["latency_ms"] for p in sys.argv[1:3])
print(f"| {sys.argv[3]} | added by the gateway | | | {g['p50'] - d['p50']:+.1f} | {g['p99'] - d['p99']:+.1f} |")
PY
done
echo
echo "reports: $OUT"
