#!/usr/bin/env bash
# Installs the native tools the build and the tests need, from Debian's packages, when missing.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v nasm >/dev/null 2>&1 || need+=(nasm)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v curl >/dev/null 2>&1 || need+=(curl)
# haproxy: the real load balancer in front of workers in the fleet tests.
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
# protoc: compiles the Open Inference Protocol's gRPC definitions (crates/api/proto).
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# redis-server: the camera store a fleet shares, in the camera tests.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: please install: ${need[*]} (e.g. sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "system-deps: installing ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
