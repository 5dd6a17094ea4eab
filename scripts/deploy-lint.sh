#!/usr/bin/env bash
# Lints the deployment; any finding fails: cfn-lint on every CloudFormation template in deploy/
# (errors, warnings and informational), hadolint on the Dockerfile, and ShellCheck on the launch
# templates' user data, the scripts it installs, this script and scripts/deploy.sh (make deploy).
# The linters come from PyPI, pinned in scripts/requirements-deploy.txt, installed once into a
# virtualenv in the same cache as scripts/python-env.sh (keyed by that file and the interpreter)
# and linked as .venv-deploy.
# BLIPSERVE_CACHE overrides the cache folder (default: $XDG_CACHE_HOME/blipserve or ~/.cache/blipserve).
set -euo pipefail
cd "$(dirname "$0")/.."

reqs=scripts/requirements-deploy.txt
link=.venv-deploy

# The same interpreters as scripts/python-env.sh (the pins above need Python >= 3.12; cfn-lint
# 1.58 stops at 3.14).
find_python() {
  local c
  for c in "${BLIPSERVE_BASE_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3 python3.13 \
           "$HOME"/.pyenv/versions/3.13*/bin/python3 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys; sys.exit(not (3, 12) <= sys.version_info[:2] < (3, 15))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  echo "deploy-lint: need Python 3.12 to 3.14 (set BLIPSERVE_BASE_PYTHON)" >&2
  return 1
}

base=$(find_python)
cache=${BLIPSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/blipserve}
key=$( { cat "$reqs"; "$base" --version; } | sha256sum | cut -c1-16)
venv="$cache/venv-deploy-$key"
mkdir -p "$cache"

exec 9>"$cache/.lock-deploy-$key"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "deploy-lint: creating $venv" >&2
  rm -rf "$venv"
  "$base" -m venv "$venv"
  # --no-deps: the file pins the whole environment, so nothing unpinned can slip in.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$reqs"
  "$venv/bin/python" -m pip check >/dev/null
  touch "$venv/.complete"
fi
exec 9>&-
ln -sfn "$venv" "$link"
bin=$PWD/$link/bin

templates=(deploy/*.yaml)
echo "deploy-lint: $("$bin/cfn-lint" --version) on ${templates[*]}"
# Regions with inf2, g5 and g6 instances: a template valid only in us-east-1 would be a trap.
"$bin/cfn-lint" --include-checks I --regions us-east-1 us-west-2 eu-west-1 -- "${templates[@]}"

echo "deploy-lint: $("$bin/hadolint" --version) on Dockerfile"
"$bin/hadolint" --no-color --failure-threshold style Dockerfile

# User data is bash inside a Fn::Sub: replace each ${Name} with a placeholder (${!Name} is a
# literal ${Name}), then lint it and every script it writes with a quoted heredoc, with the
# settings file they source (also written by the user data) beside them.
scripts=$(mktemp -d)
trap 'rm -rf "$scripts"' EXIT
"$bin/python" - "$scripts" "${templates[@]}" <<'EOF'
import pathlib, re, sys
import yaml

class Loader(yaml.SafeLoader):
    pass

def tagged(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Fn::" + suffix if suffix not in ("Ref", "Condition") else suffix: value}

Loader.add_multi_constructor("!", tagged)

out = pathlib.Path(sys.argv[1])
for path in map(pathlib.Path, sys.argv[2:]):
    template = yaml.load(path.read_text(), Loader=Loader)
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::EC2::LaunchTemplate":
            continue
        sub = resource["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
        text = sub[0] if isinstance(sub, list) else sub
        text = re.sub(r"\$\{(?!!)([^}]+)\}", lambda m: "SUB_" + re.sub(r"\W", "_", m.group(1)), text)
        text = text.replace("${!", "${")
        for conf, body in re.findall(r"^cat > /etc/blipserve/(\w+\.conf) <<'EOF'\n(.*?)^EOF$", text, re.S | re.M):
            (out / conf).write_text(body)
        text = re.sub(r"^(\s*)\. /etc/blipserve/", r"\1. ./", text, flags=re.M)
        stem = f"{path.stem}-{name}"
        (out / f"{stem}.sh").write_text(text)
        for i, body in enumerate(re.findall(r"<<'EOF'\n(#!/bin/bash\n.*?)^EOF$", text, re.S | re.M)):
            (out / f"{stem}-{i}.sh").write_text(body)
EOF
echo "deploy-lint: $("$bin/shellcheck" --version | sed -n 2p) on user data ($(find "$scripts" -name '*.sh' | wc -l) scripts), $0 and scripts/deploy.sh"
(cd "$scripts" && "$bin/shellcheck" --shell=bash --external-sources ./*.sh)
"$bin/shellcheck" "$0" scripts/deploy.sh
echo "deploy-lint: ok"
