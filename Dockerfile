# syntax=docker/dockerfile:1.7
#
# blipserve images, one per tier and inference backend (BuildKit; see deploy/README.md):
#   docker build --target gateway -t blipserve:gateway . # the API tier: gateway, loadtest; no libtorch
#   docker build --target cpu    -t blipserve:cpu .     # CPU inference
#   docker build --target cuda   -t blipserve:cuda .    # NVIDIA GPU: run with --gpus all
#   docker build --target neuron -t blipserve:neuron .  # Inferentia2: run with --device /dev/neuron0
#
# The gateway image holds `blipserve-api` (installed as `blipserve`), built without the model
# feature: no torch in its build, no libtorch in the image. Each inference image holds the binary and the libtorch it was linked against (the lib directory of the
# pinned torch 2.9.0 wheel, at the same path, so the binary's rpath finds it), runs as a non-root
# user and answers on 0.0.0.0:8080. The model is not in the image: mount a directory written by
# models/export.py for that backend at /model (read-only), or copy one in a derived image.
#
# Not built where it was written (no Docker engine there): checked with hadolint only.

ARG RUST_VERSION=1.95.0
ARG PYTHON_VERSION=3.12
ARG TORCH_VERSION=2.9.0
# AWS Neuron deep learning container: torch 2.9.0 with torch-neuronx (libtorchneuron.so) and the
# Neuron runtime (libnrt), Neuron SDK 2.27.1, Python 3.12, Ubuntu 24.04. Not pulled here.
ARG NEURON_DLC=public.ecr.aws/neuron/pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.27.1-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# Builders: Rust, cmake and nasm (libjpeg-turbo), protoc (the gRPC definitions), and the torch
# wheel whose libtorch tch links.
# Python 3.12 as in the test environment (models/constraints.txt pins for it); Debian bookworm
# as the runtime image, so the binary meets the C++ runtime it was linked with.

FROM python:${PYTHON_VERSION}-bookworm AS build-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG RUST_VERSION
# Debian's own versions: pinning them would break the build at Debian's next point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake nasm protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/cargo/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && python3 -m venv /opt/venv
WORKDIR /src
# The same pins as the test environment (torch's dependencies included).
COPY models/constraints.txt models/constraints.txt

FROM build-base AS build-gateway
# No torch: the API tier's binary builds without the model feature.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY crates crates
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=blipserve-target-gateway \
    cargo build --release --locked --no-default-features --bin blipserve-api \
 && install -D target/release/blipserve-api /out/usr/local/bin/blipserve

FROM build-base AS build-cpu
ARG TORCH_VERSION
# The CPU-only build of the same torch release: no CUDA libraries to ship.
RUN pip install --no-cache-dir -c models/constraints.txt \
      --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
      "torch==${TORCH_VERSION}+cpu"
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY crates crates
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=blipserve-target-cpu \
    cargo build --release --locked --bin blipserve \
 && install -D target/release/blipserve /out/usr/local/bin/blipserve
# Ship torch's lib directory at the path the binary's rpath names.
RUN lib=$(python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
 && mkdir -p "/out$lib" && cp -a "$lib/." "/out$lib/" \
 && rm -f "/out$lib/libtorch_python.so"

FROM build-base AS build-cuda
ARG TORCH_VERSION
# PyPI's torch 2.9.0 is the CUDA 12.8 build; its CUDA libraries come as nvidia-* wheels.
RUN pip install --no-cache-dir -c models/constraints.txt "torch==${TORCH_VERSION}"
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY crates crates
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=blipserve-target-cuda \
    cargo build --release --locked --bin blipserve \
 && install -D target/release/blipserve /out/usr/local/bin/blipserve
# torch/lib, and the nvidia/ tree beside it that libtorch_cuda.so finds through $ORIGIN/../../nvidia.
RUN site=$(python -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))') \
 && mkdir -p "/out$site/torch" && cp -a "$site/torch/lib" "/out$site/torch/" \
 && cp -a "$site/nvidia" "/out$site/" \
 && rm -f "/out$site/torch/lib/libtorch_python.so"

FROM ${NEURON_DLC} AS build-neuron
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG RUST_VERSION
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nasm protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    LIBTORCH_USE_PYTORCH=1
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY crates crates
COPY benches benches
# tch links the container's own torch (python3 on PATH is the DLC's), the one libtorchneuron.so
# was built against; its build script stops if that torch is not 2.9.0.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=blipserve-target-neuron \
    cargo build --release --locked --bin blipserve \
 && install -D target/release/blipserve /out/usr/local/bin/blipserve

# ---------------------------------------------------------------------------------------------
# Runtime images.

FROM debian:bookworm-slim AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# curl: the health check. ca-certificates: HTTPS to CloudWatch.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin blipserve
ENV BLIPSERVE_LISTEN=0.0.0.0 \
    BLIPSERVE_PORT=8080 \
    BLIPSERVE_MODEL=/model
EXPOSE 8080
# Liveness only: /ready is 503 while the model loads and while draining, which is the load
# balancer's business, not a reason to call the container unhealthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${BLIPSERVE_PORT}/health\" >/dev/null || exit 1"]
ENTRYPOINT ["/usr/local/bin/blipserve"]
CMD ["serve"]

FROM runtime AS gateway
COPY --from=build-gateway /out/ /
ENV BLIPSERVE_GATEWAY_CONFIG=/etc/blipserve/gateway.toml
USER 10001:10001
RUN ["/usr/local/bin/blipserve", "--version"]
CMD ["gateway"]

FROM runtime AS cpu
COPY --from=build-cpu /out/ /
ENV BLIPSERVE_DEVICE=cpu
USER 10001:10001
# Fails the build if a library the binary needs is missing from the image.
RUN ["/usr/local/bin/blipserve", "--version"]

FROM runtime AS cuda
COPY --from=build-cuda /out/ /
# The NVIDIA container toolkit mounts the host's driver into containers that ask for it.
ENV BLIPSERVE_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
RUN ["/usr/local/bin/blipserve", "--version"]

# The Neuron image keeps the DLC as its base: libtorchneuron.so, the Neuron runtime and the
# torch they were built with come as one tested set, and that torch is the one the binary links.
FROM ${NEURON_DLC} AS neuron
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build-neuron /out/ /
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin blipserve \
 && lib=$(python3 -c 'import torch_neuronx, os; print(os.path.join(os.path.dirname(torch_neuronx.__file__), "lib", "libtorchneuron.so"))') \
 && test -f "$lib" && ln -s "$lib" /usr/local/lib/libtorchneuron.so
ENV BLIPSERVE_LISTEN=0.0.0.0 \
    BLIPSERVE_PORT=8080 \
    BLIPSERVE_MODEL=/model \
    BLIPSERVE_DEVICE=neuron \
    BLIPSERVE_NEURON_LIB=/usr/local/lib/libtorchneuron.so
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS \"http://127.0.0.1:${BLIPSERVE_PORT}/health\" >/dev/null || exit 1"]
USER 10001:10001
RUN ["/usr/local/bin/blipserve", "--version"]
ENTRYPOINT ["/usr/local/bin/blipserve"]
CMD ["serve"]
