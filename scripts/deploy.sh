#!/usr/bin/env bash
# One-step deployment of an environment described by deploy/env/$ENV.json (make deploy ENV=name):
#   1. builds and pushes the gateway image and each pool backend's worker image (docker buildx,
#      linux/amd64) to the environment's ECR repository, and reads back each pushed image's digest;
#   2. uploads each pool's model directory to S3 under a content-addressed prefix
#      (MODEL_PREFIX/NAME/SHA256-OF-THE-DIRECTORY), so a rollout never changes the files under a
#      running pool;
#   3. uploads the templates to S3 and deploys the base stack, then every pool stack, then the
#      api stack, each by a change set (an update with the stack's RollbackAlarmArns as rollback
#      triggers), waiting for each and stopping at the first that fails or rolls back; the
#      images go by digest (ImageUri=REGISTRY/REPOSITORY@sha256:…, never a tag), the models by
#      their prefixes;
#   4. smoke-tests the public load balancer (the api stack's Url output): GET /health and /ready,
#      then POST /v1/detect with the sample frame and one question, bounded retries and timeouts.
#
# DRY_RUN=1 prints every external command (docker, aws, curl) it would run, in order, one per line
# prefixed "DRY-RUN: ", and runs none of them (placeholder digests, URL and key).
# Environment: ENV (required), DRY_RUN (0 or 1), DEPLOY_ENV_DIR (default deploy/env),
# IMAGE_TAG (default: the commit, plus -dirty-TIME for a modified work tree), BLIPSERVE_API_KEY
# (the smoke test's key; default: the first key of the environment's API-key secret, if any).
# The file's format: deploy/env/README.md. Needs python3 (always), and for a real run docker with
# buildx, the AWS CLI v2 and curl >= 7.76.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "deploy: $*" >&2; exit 1; }
log() { echo "deploy: $*" >&2; }
(( BASH_VERSINFO[0] >= 4 )) || die "needs bash 4 or later (this is $BASH_VERSION; on macOS: brew install bash)"

# The JSON and hashing work, in Python (no jq needed). Subcommands:
#   load FILE                   validate the environment file; print its settings as KEY<TAB>VALUE lines
#   tree-hash DIR               sha256 over the directory's files (relative paths and contents)
#   file-hash FILE              sha256 of a file
#   target DIR                  the "target" of DIR/manifest.json (cpu, cuda or neuron)
#   digest FILE                 containerimage.digest from a docker buildx --metadata-file
#   parameters-json KEY=VALUE…  CloudFormation's --parameters list
#   rollback-json MINUTES ARNS  --rollback-configuration with the (comma-separated) alarms
#   answers FILE                checks a /v1/detect response and prints its answers
read -r -d '' PY <<'EOF' || true
import hashlib, json, os, re, sys

def fail(msg):
    print(f"deploy: {msg}", file=sys.stderr)
    sys.exit(1)

def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        fail(f"{path}: not valid JSON: {e}")
    out = []

    def emit(key, value):
        out.append(f"{key}\t{value}")

    def get(obj, where, key, kind=str, required=True):
        if not isinstance(obj, dict):
            fail(f"{path}: {where or 'the top level'} must be an object")
        name = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                fail(f"{path}: missing required key {name}")
            return None
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            fail(f"{path}: {name} must be a {kind.__name__ if kind is not dict else 'object'}")
        if kind is str and (not value or re.search(r"[\t\n\r]", value)):
            fail(f"{path}: {name} must be a non-empty single-line string")
        return value

    def scalar(name, v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if isinstance(v, float) and not v.is_integer() else str(int(v))
        if isinstance(v, str):
            if re.search(r"[\t\n\r]", v):
                fail(f"{path}: {name} must be a single line")
            return v
        if isinstance(v, list) and v and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
            return ",".join(scalar(name, x) for x in v)
        fail(f"{path}: {name} must be a string, number, boolean or non-empty list (a List parameter)")

    def params(prefix, obj, where, computed):
        ps = get(obj, where, "parameters", dict)
        for k, v in ps.items():
            if not re.fullmatch(r"[A-Za-z0-9]+", k):
                fail(f"{path}: {where}.parameters: {k!r} is not a CloudFormation parameter name")
            if k in computed:
                fail(f"{path}: {where}.parameters.{k} is set by the script (from {computed[k]}); remove it")
            emit(f"{prefix}.param", f"{k}={scalar(f'{where}.parameters.{k}', v)}")

    if not isinstance(doc, dict):
        fail(f"{path}: must be a JSON object")
    region = get(doc, "", "region")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
        fail(f"{path}: region {region!r} is not an AWS region name")
    account = get(doc, "", "account")
    if not re.fullmatch(r"\d{12}", account):
        fail(f"{path}: account must be the 12-digit AWS account id")
    repository = get(doc, "", "repository")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/-]*", repository):
        fail(f"{path}: repository {repository!r} is not an ECR repository name")
    emit("region", region)
    emit("account", account)
    emit("registry", get(doc, "", "registry", required=False) or f"{account}.dkr.ecr.{region}.amazonaws.com")
    emit("repository", repository)

    names = set()
    def stack_name(obj, where):
        s = get(obj, where, "stack")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", s):
            fail(f"{path}: {where}.stack {s!r} is not a CloudFormation stack name")
        if s in names:
            fail(f"{path}: stack {s} is named twice")
        names.add(s)
        return s

    base = get(doc, "", "base", dict)
    base_stack = stack_name(base, "base")
    emit("base.stack", base_stack)
    params("base", base, "base", {})

    model = get(doc, "", "model", dict)
    bucket = get(model, "model", "bucket")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        fail(f"{path}: model.bucket {bucket!r} is not an S3 bucket name")
    prefix = get(model, "model", "prefix")
    if prefix.startswith("/") or prefix.endswith("/"):
        fail(f"{path}: model.prefix must not start or end with /")
    emit("model.bucket", bucket)
    emit("model.prefix", prefix)
    templates = get(doc, "", "templates", dict, required=False) or {}
    tbucket = get(templates, "templates", "bucket", required=False) or bucket
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", tbucket):
        fail(f"{path}: templates.bucket {tbucket!r} is not an S3 bucket name (without dots)")
    tprefix = get(templates, "templates", "prefix", required=False) or "cloudformation"
    if tprefix.startswith("/") or tprefix.endswith("/"):
        fail(f"{path}: templates.prefix must not start or end with /")
    emit("templates.bucket", tbucket)
    emit("templates.prefix", tprefix)
    for key, default, top in (("rollback_monitoring_minutes", 10, 180), ("stack_timeout_minutes", 180, 1440)):
        value = get(doc, "", key, int, required=False)
        if value is not None and not 0 <= value <= top:
            fail(f"{path}: {key} must be 0 to {top}")
        emit(key, default if value is None else value)

    pools = get(doc, "", "pools", list)
    if not pools:
        fail(f"{path}: pools is empty")
    emit("pools", len(pools))
    slots = set()
    backends = {"neuron": "neuron", "gpu": "cuda", "cpu": "cpu"}
    for i, pool in enumerate(pools):
        where = f"pools[{i}]"
        emit(f"pool.{i}.stack", stack_name(pool, where))
        model_dir = get(pool, where, "model_dir")
        emit(f"pool.{i}.model_dir", model_dir)
        slot = get(pool, where, "api_parameter")
        if slot in slots:
            fail(f"{path}: {where}.api_parameter {slot} is used by two pools")
        slots.add(slot)
        emit(f"pool.{i}.api_parameter", slot)
        ps = get(pool, where, "parameters", dict)
        backend = get(ps, f"{where}.parameters", "Backend")
        if backend not in backends:
            fail(f"{path}: {where}.parameters.Backend must be one of {', '.join(backends)}")
        emit(f"pool.{i}.backend", backend)
        emit(f"pool.{i}.target", backends[backend])
        params(f"pool.{i}", pool, where, {
            "BaseStack": "base.stack", "ImageUri": "the pushed image", "ModelBucket": "model.bucket",
            "ModelPrefix": "model_dir's upload"})

    api = get(doc, "", "api", dict)
    emit("api.stack", stack_name(api, "api"))
    computed = {"BaseStack": "base.stack", "ImageUri": "the pushed image"}
    computed.update({s: "pools[].stack" for s in slots})
    params("api", api, "api", computed)

    smoke = get(doc, "", "smoke", dict)
    emit("smoke.image", get(smoke, "smoke", "image"))
    emit("smoke.question", get(smoke, "smoke", "question"))
    # Default: the API keys the gateways get (api.yaml's ApiKeysSecretArn).
    secret = get(smoke, "smoke", "api_key_secret", required=False) or api["parameters"].get("ApiKeysSecretArn") or ""
    if not isinstance(secret, str):
        fail(f"{path}: the API-key secret must be an ARN string")
    emit("smoke.api_key_secret", secret)
    attempts = get(smoke, "smoke", "attempts", int, required=False)
    if attempts is not None and not 1 <= attempts <= 100:
        fail(f"{path}: smoke.attempts must be 1 to 100")
    emit("smoke.attempts", attempts or 30)
    print("\n".join(out))

def tree_hash(root):
    files = []
    for d, dirs, names in os.walk(root, followlinks=True):
        files += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/") for n in names]
    if not files:
        fail(f"{root}: empty directory")
    h = hashlib.sha256()
    for rel in sorted(files):
        f = hashlib.sha256()
        with open(os.path.join(root, rel), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                f.update(chunk)
        h.update(f"{rel}\0{f.hexdigest()}\n".encode())
    print(h.hexdigest())

def target(root):
    try:
        with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
            print(json.load(f)["target"])
    except (OSError, ValueError, KeyError) as e:
        fail(f"{root}: no model directory of models/export.py (manifest.json: {e})")

def digest(path):
    with open(path, encoding="utf-8") as f:
        d = json.load(f).get("containerimage.digest", "")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", d):
        fail(f"{path}: no image digest in docker buildx's metadata ({d!r})")
    print(d)

def file_hash(path):
    with open(path, "rb") as f:
        print(hashlib.sha256(f.read()).hexdigest())

def parameters_json(*pairs):
    out, seen = [], set()
    for pair in pairs:
        k, _, v = pair.partition("=")
        if k in seen:
            fail(f"parameter {k} given twice")
        seen.add(k)
        out.append({"ParameterKey": k, "ParameterValue": v})
    print(json.dumps(out, separators=(",", ":")))

def rollback_json(minutes, arns):
    arns = [a for a in re.split(r"[,\s]+", arns) if a]
    if len(arns) > 5:
        print(f"deploy: note: CloudFormation takes 5 rollback triggers; watching the first 5 of {len(arns)}", file=sys.stderr)
    triggers = [{"Arn": a, "Type": "AWS::CloudWatch::Alarm"} for a in arns[:5]]
    print(json.dumps({"RollbackTriggers": triggers, "MonitoringTimeInMinutes": int(minutes)}, separators=(",", ":")))

def answers(path):
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        got = [(a["question"], a["answer"]) for a in r["answers"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"smoke test: /v1/detect answered something other than a detection ({e})")
    if not got:
        fail("smoke test: /v1/detect answered no answers")
    for q, a in got:
        print(f"  {q} -> {a}")

cmd, *args = sys.argv[1:]
{"load": load, "tree-hash": tree_hash, "target": target, "digest": digest, "answers": answers,
 "file-hash": file_hash, "parameters-json": parameters_json, "rollback-json": rollback_json}[cmd](*args)
EOF
py() { python3 -c "$PY" "$@"; }

# --- inputs -------------------------------------------------------------------------------------

case "${DRY_RUN:-0}" in
  1 | true | yes) dry=1 ;;
  0 | false | no | "") dry=0 ;;
  *) die "DRY_RUN must be 0 or 1, not '$DRY_RUN'" ;;
esac
env_dir=${DEPLOY_ENV_DIR:-deploy/env}
known=$(cd "$env_dir" 2>/dev/null && for f in *.json; do [ -e "$f" ] && printf '%s ' "${f%.json}"; done || true)
known=${known% }
[ -n "${ENV:-}" ] || die "ENV is required: make deploy ENV=NAME [DRY_RUN=1], NAME one of: ${known:-(none in $env_dir)}"
[[ $ENV =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] || die "ENV '$ENV' is not an environment name (one of: ${known:-none})"
env_file=$env_dir/$ENV.json
[ -f "$env_file" ] || die "unknown ENV '$ENV': no $env_file (environments: ${known:-none})"

settings=$(py load "$env_file") || exit 1
declare -A C=()
declare -A P=()  # per stack: the env file's parameters, newline-separated KEY=VALUE
while IFS=$'\t' read -r key value; do
  if [[ $key == *.param ]]; then
    P[${key%.param}]+="$value"$'\n'
  else
    C[$key]=$value
  fi
done <<<"$settings"
region=${C[region]}
registry=${C[registry]}
repository=${C[repository]}
pools=${C[pools]}

# --- running, or printing, the external commands ------------------------------------------------

# A command as one line a shell would read back (arguments with special characters quoted).
quote() {
  local a line="" sq="'\\''"
  for a in "$@"; do
    if [[ ! $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then a="'${a//\'/$sq}'"; fi
    line+="${line:+ }$a"
  done
  printf '%s\n' "$line"
}

run() {
  if (( dry )); then
    echo "DRY-RUN: $(quote "$@")"
  else
    log "+ $(quote "$@")"
    "$@"
  fi
}

# The output of a command that reads state; in a dry run, the placeholder $1 instead.
query() {
  local placeholder=$1; shift
  if (( dry )); then
    echo "DRY-RUN: $(quote "$@")" >&3
    printf '%s\n' "$placeholder"
  else
    "$@"
  fi
}
exec 3>&1

# --- preflight (a real run only) ---------------------------------------------------------------

repo_path() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

if (( ! dry )); then
  for tool in docker aws curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (needed for a real deployment)"
  done
  docker buildx version >/dev/null 2>&1 || die "docker buildx is not installed (BuildKit builds the images)"
  [ -f "$(repo_path "${C[smoke.image]}")" ] || die "smoke.image ${C[smoke.image]} is missing (make models writes models/sample-frame.jpg)"
  caller=$(aws sts get-caller-identity --query Account --output text) || die "no AWS credentials (aws sts get-caller-identity failed)"
  [ "$caller" = "${C[account]}" ] || die "these AWS credentials are for account $caller, $env_file is for ${C[account]}"
fi

# Each pool's model directory: exported for the pool's backend, and its content-addressed prefix
# (computed before the long image builds, so a wrong directory fails first).
declare -A PREFIX=()  # model_dir -> its S3 prefix
model_dirs=()
for ((i = 0; i < pools; i++)); do
  dir=${C[pool.$i.model_dir]}
  path=$(repo_path "$dir")
  if [ -d "$path" ]; then
    got=$(py target "$path") || exit 1
    [ "$got" = "${C[pool.$i.target]}" ] ||
      die "pools[$i] (Backend ${C[pool.$i.backend]}) needs a model exported with --target ${C[pool.$i.target]}; $dir is for $got"
  elif (( ! dry )); then
    die "pools[$i].model_dir $dir is not a directory"
  fi
  [ -z "${PREFIX[$dir]:-}" ] || continue
  if [ -d "$path" ]; then
    hash=$(py tree-hash "$path") || exit 1
  else
    log "note: $dir does not exist here; a placeholder stands for its hash"
    hash="<sha256-of-$(basename "$dir")>"
  fi
  PREFIX[$dir]=${C[model.prefix]}/$(basename "$path")/$hash
  model_dirs+=("$dir")
done

# --- 1. images ----------------------------------------------------------------------------------

if [ -n "${IMAGE_TAG:-}" ]; then
  tag=$IMAGE_TAG
elif rev=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  tag=$rev
  [ -z "$(git status --porcelain 2>/dev/null)" ] || tag+=-dirty-$(date -u +%Y%m%dT%H%M%SZ)
else
  tag=build-$(date -u +%Y%m%dT%H%M%SZ)
fi
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$ ]] || die "IMAGE_TAG '$tag' is not a Docker tag"

# Dockerfile targets: the gateway, then each pool's backend once.
targets=(gateway)
for ((i = 0; i < pools; i++)); do
  t=${C[pool.$i.target]}
  [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t")
done

log "images: ${targets[*]} -> $registry/$repository (tag $tag-TARGET, deployed by digest)"
# ECR: tags are immutable, so a tag names one build for good.
if (( dry )); then
  echo "DRY-RUN: $(quote aws ecr describe-repositories --region "$region" --repository-names "$repository") || $(quote aws ecr create-repository --region "$region" --repository-name "$repository" --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true)"
  echo "DRY-RUN: $(quote aws ecr get-login-password --region "$region") | $(quote docker login --username AWS --password-stdin "$registry")"
else
  if ! aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1; then
    run aws ecr create-repository --region "$region" --repository-name "$repository" \
      --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null
  fi
  log "+ aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $registry"
  aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A IMAGE=()  # Dockerfile target -> registry/repository@sha256:…
for t in "${targets[@]}"; do
  run docker buildx build --platform linux/amd64 --target "$t" --provenance=false \
    --tag "$registry/$repository:$tag-$t" --metadata-file "$work/$t.json" --push .
  if (( dry )); then
    digest="sha256:<digest-of-$t-image>"
  else
    digest=$(py digest "$work/$t.json") || exit 1
  fi
  IMAGE[$t]=$registry/$repository@$digest
  log "image $t: ${IMAGE[$t]}"
done

# --- 2. models ----------------------------------------------------------------------------------

for dir in "${model_dirs[@]}"; do
  run aws s3 sync "$dir" "s3://${C[model.bucket]}/${PREFIX[$dir]}" --region "$region" --only-show-errors --no-progress
done

# --- 3. stacks ----------------------------------------------------------------------------------

# The templates go to S3 first (pool.yaml is over the 51,200 bytes a template body may have), each
# under its content hash, so a change set names exactly the template it was made from.
declare -A TEMPLATE_URL=()
for name in base pool api; do
  hash=$(py file-hash "deploy/$name.yaml") || exit 1
  key=${C[templates.prefix]}/$name-$hash.yaml
  run aws s3 cp "deploy/$name.yaml" "s3://${C[templates.bucket]}/$key" --region "$region" --only-show-errors
  TEMPLATE_URL[$name]=https://${C[templates.bucket]}.s3.$region.amazonaws.com/$key
done

stack_timeout_min=${C[stack_timeout_minutes]}
monitoring_min=${C[rollback_monitoring_minutes]}
change_set=make-deploy-$(date -u +%Y%m%d%H%M%S)

# Waits until STACK is no longer in progress; fails unless it ended created or updated.
wait_stack() {
  local stack=$1 status deadline=$((SECONDS + stack_timeout_min * 60))
  while :; do
    status=$(query CREATE_COMPLETE aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
      --query "Stacks[0].StackStatus" --output text)
    case $status in
      CREATE_COMPLETE | UPDATE_COMPLETE) return 0 ;;
      *_IN_PROGRESS) ;;
      *ROLLBACK* | *FAILED)
        aws cloudformation describe-stack-events --region "$region" --stack-name "$stack" --max-items 60 \
          --query "StackEvents[?ends_with(ResourceStatus, 'FAILED')].[LogicalResourceId, ResourceStatusReason]" \
          --output text 2>/dev/null | head -n 8 >&2 || true
        if [[ $status == *ROLLBACK* ]]; then
          die "stack $stack: $status: the update failed and was rolled back (events above); stopping here"
        fi
        die "stack $stack: $status (events above)" ;;
      *) die "stack $stack: unexpected status $status" ;;
    esac
    (( SECONDS < deadline )) ||
      die "stack $stack still $status after $stack_timeout_min minutes: follow it in the console, then run again"
    sleep 30
  done
}

# deploy STACK NAME KEY=VALUE…: a change set of the template NAME (base, pool, api) with exactly
# these parameters (the others take the template's defaults), executed, then waited for. An update
# carries the stack's RollbackAlarmArns output as rollback triggers: an alarm going off during the
# update, or within rollback_monitoring_minutes of it, rolls the stack back. An update with no
# changes is skipped.
deploy() {
  local stack=$1 name=$2; shift 2
  local type status err=$work/describe.err rollback=() arns parameters
  log "stack $stack (deploy/$name.yaml)"
  if status=$(query UPDATE_COMPLETE aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
      --query "Stacks[0].StackStatus" --output text 2>"$err"); then
    case $status in
      REVIEW_IN_PROGRESS) type=CREATE ;;
      ROLLBACK_COMPLETE | ROLLBACK_FAILED | CREATE_FAILED)
        die "stack $stack is $status (its creation failed): delete it (aws cloudformation delete-stack --region $region --stack-name $stack) and run again" ;;
      *_IN_PROGRESS) die "stack $stack is $status: wait until it finishes, then run again" ;;
      *FAILED) die "stack $stack is $status: fix it in the console, then run again" ;;
      *) type=UPDATE ;;
    esac
  elif grep -q "does not exist" "$err"; then
    type=CREATE
  else
    die "stack $stack: $(tr '\n' ' ' <"$err")"
  fi

  if [ "$type" = UPDATE ] && grep -q '^  RollbackAlarmArns:' "deploy/$name.yaml"; then
    arns=$(query "<RollbackAlarmArns-of-$stack>" aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
      --query "Stacks[0].Outputs[?OutputKey==\`RollbackAlarmArns\`].OutputValue" --output text)
    if [ -n "$arns" ] && [ "$arns" != None ]; then
      arns=$(py rollback-json "$monitoring_min" "$arns") || exit 1
      rollback=(--rollback-configuration "$arns")
    fi
  fi
  parameters=$(py parameters-json "$@") || exit 1
  run aws cloudformation create-change-set --region "$region" --stack-name "$stack" \
    --change-set-name "$change_set" --change-set-type "$type" --template-url "${TEMPLATE_URL[$name]}" \
    --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM \
    --tags Key=Project,Value=blipserve "Key=Environment,Value=$ENV" \
    --parameters "$parameters" "${rollback[@]}" --query Id --output text
  if ! run aws cloudformation wait change-set-create-complete --region "$region" --stack-name "$stack" \
      --change-set-name "$change_set"; then
    local reason
    reason=$(aws cloudformation describe-change-set --region "$region" --stack-name "$stack" \
      --change-set-name "$change_set" --query StatusReason --output text 2>&1 || true)
    if [[ $reason == *"didn't contain changes"* || $reason == *"No updates are to be performed"* ]]; then
      log "stack $stack: no changes"
      run aws cloudformation delete-change-set --region "$region" --stack-name "$stack" --change-set-name "$change_set"
      return 0
    fi
    die "stack $stack: the change set failed: $reason"
  fi
  run aws cloudformation execute-change-set --region "$region" --stack-name "$stack" --change-set-name "$change_set"
  wait_stack "$stack"
}

# args: the env file's parameters of one stack (P[KEY]), KEY=VALUE each.
params_of() {
  args=()
  [ -z "${P[$1]:-}" ] || mapfile -t args <<<"${P[$1]%$'\n'}"
}

if (( dry )); then
  log "dry run: each stack as an update of an existing one (a first deployment creates it: --change-set-type CREATE, no rollback triggers)"
fi
params_of base
deploy "${C[base.stack]}" base "${args[@]}"

api_pools=()
for ((i = 0; i < pools; i++)); do
  params_of "pool.$i"
  deploy "${C[pool.$i.stack]}" pool "${args[@]}" \
    "BaseStack=${C[base.stack]}" \
    "ImageUri=${IMAGE[${C[pool.$i.target]}]}" \
    "ModelBucket=${C[model.bucket]}" \
    "ModelPrefix=${PREFIX[${C[pool.$i.model_dir]}]}"
  api_pools+=("${C[pool.$i.api_parameter]}=${C[pool.$i.stack]}")
done

params_of api
deploy "${C[api.stack]}" api "${args[@]}" \
  "BaseStack=${C[base.stack]}" "${api_pools[@]}" "ImageUri=${IMAGE[gateway]}"

# --- 4. smoke test ------------------------------------------------------------------------------

url=$(query "<Url-output-of-${C[api.stack]}>" aws cloudformation describe-stacks --region "$region" \
  --stack-name "${C[api.stack]}" --query "Stacks[0].Outputs[?OutputKey==\`Url\`].OutputValue" --output text)
[[ $url =~ ^https?:// ]] || (( dry )) || die "stack ${C[api.stack]} has no Url output (got '$url')"
log "smoke test: $url"

auth=()
key=${BLIPSERVE_API_KEY:-}
if [ -z "$key" ] && [ -n "${C[smoke.api_key_secret]}" ]; then
  key=$(query "<api-key>" aws secretsmanager get-secret-value --region "$region" \
    --secret-id "${C[smoke.api_key_secret]}" --query SecretString --output text)
  key=${key%%,*}  # BLIPSERVE_API_KEYS is comma-separated: the first key
fi
if [ -n "$key" ]; then
  # The key goes to curl in a file, not on its command line (ps would show it).
  (umask 077 && printf 'Authorization: Bearer %s\n' "$key" >"$work/auth")
  auth=(--header "@$work/auth")
fi

# curl: every attempt bounded by --max-time, failures (connection refused, 5xx, 503 while the
# pools start) retried every 10 s, smoke.attempts times in all.
attempts=${C[smoke.attempts]}
curl_opts=(--silent --show-error --fail-with-body --max-time 30 --retry "$((attempts - 1))" --retry-delay 10 --retry-all-errors)
for path in /health /ready; do
  run curl "${curl_opts[@]}" --output /dev/null "$url$path" ||
    die "smoke test: GET $url$path kept failing (${attempts} attempts); see the api stack's dashboard and the pools' target groups"
done
run curl "${curl_opts[@]}" "${auth[@]}" --output "$work/detect.json" \
  --form "image=@${C[smoke.image]};type=image/jpeg" --form-string "question=${C[smoke.question]}" \
  "$url/v1/detect" ||
  die "smoke test: POST $url/v1/detect failed: $(head -c 500 "$work/detect.json" 2>/dev/null || true)"
if (( ! dry )); then
  py answers "$work/detect.json" >&2 || exit 1
fi
if (( dry )); then log "dry run done: nothing was run"; else log "done: $ENV deployed at $url"; fi
