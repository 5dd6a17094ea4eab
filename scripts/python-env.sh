#!/usr/bin/env bash
# Creates the pinned Python environment once, in a cache outside the checkout keyed by the
# requirement files and the interpreter, and links it into the checkout as .venv.
#   scripts/python-env.sh            -> .venv       (torch, transformers: export, parity reference)
#   scripts/python-env.sh tools      -> .venv-tools (what the tests run: OpenAPI validator, tritonclient)
#   scripts/python-env.sh localstack -> .venv-localstack (the CloudWatch emulator the tests run)
# BLIPSERVE_CACHE overrides the cache folder (default: $XDG_CACHE_HOME/blipserve or ~/.cache/blipserve).
set -euo pipefail
cd "$(dirname "$0")/.."

minor=12
case "${1:-main}" in
  main)
    link=.venv
    reqs=(models/requirements.txt)
    nodeps=(models/requirements-nodeps.txt)
    constraints=models/constraints.txt
    ;;
  tools)
    link=.venv-tools
    reqs=(scripts/requirements-tools.txt)
    nodeps=()
    constraints=scripts/requirements-tools.txt
    ;;
  localstack)
    link=.venv-localstack
    minor=13  # localstack-core 2026.3 imports warnings.deprecated (3.13)
    reqs=(scripts/requirements-localstack.txt)
    nodeps=()
    constraints=scripts/requirements-localstack.txt
    ;;
  *) echo "python-env: unknown environment $1 (main, tools or localstack)" >&2; exit 2 ;;
esac

find_python() {
  local c
  for c in "${BLIPSERVE_BASE_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3 python3.13 \
           "$HOME"/.pyenv/versions/3.13*/bin/python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import sys; sys.exit(sys.version_info < (3, $minor))" 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  echo "python-env: need Python >= 3.$minor (set BLIPSERVE_BASE_PYTHON)" >&2
  return 1
}

base=$(find_python)
cache=${BLIPSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/blipserve}
key=$( { cat "${reqs[@]}" "${nodeps[@]}" "$constraints"; "$base" --version; } | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
mkdir -p "$cache"

exec 9>"$cache/.lock-$key"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "python-env: creating $venv (once; torch takes a few minutes)" >&2
  rm -rf "$venv"
  "$base" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  for r in "${reqs[@]}"; do
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -c "$constraints" -r "$r"
  done
  for r in "${nodeps[@]}"; do
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off --no-deps -r "$r"
  done
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$link"
