#!/usr/bin/env bash
# The SAM side: tools, template checks and the Lambda build.
#
#   scripts/infra.sh install   # idempotent: SAM CLI, cfn-lint, cargo-lambda (with zig), checkov
#   scripts/infra.sh lint      # sam validate --lint, cfn-lint, checkov on infra/template.yaml
#   scripts/infra.sh build     # sam build: the four provided.al2023 bootstraps under .aws-sam/build
#
# The tools live in virtualenvs under .cache/ (git-ignored); everything comes from PyPI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
SAM_VENV="$CACHE/sam-venv"
CHECKOV_VENV="$CACHE/checkov-venv"
TEMPLATE="$ROOT/infra/template.yaml"
# checkov pins its own boto3 and friends; it gets its own virtualenv.
SAM_PACKAGES=(aws-sam-cli==1.170.0 cfn-lint==1.58.0 cargo-lambda==1.9.2)
CHECKOV_PACKAGES=(checkov==3.3.30)
export SAM_CLI_TELEMETRY=0

log() { echo "[infra] $*" >&2; }
# shellcheck source=scripts/python.sh
. "$ROOT/scripts/python.sh"

venv() { # venv DIR PACKAGES...
  local dir="$1"; shift
  local stamp="$dir/.installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then return 0; fi
  log "installing $* into $dir"
  rm -rf "$dir"
  local py; py="$(find_python 10 "${INFRA_PYTHON:-}")"
  "$py" -m venv "$dir"
  "$dir/bin/pip" install --quiet --upgrade pip
  "$dir/bin/pip" install --quiet "$@"
  echo "$*" > "$stamp"
}

install() {
  venv "$SAM_VENV" "${SAM_PACKAGES[@]}"
  venv "$CHECKOV_VENV" "${CHECKOV_PACKAGES[@]}"
}

lint() {
  install
  log "sam validate --lint"
  "$SAM_VENV/bin/sam" validate --lint --template-file "$TEMPLATE" --region "${AWS_REGION:-us-east-1}"
  log "cfn-lint"
  "$SAM_VENV/bin/cfn-lint" "$TEMPLATE"
  log "checkov (suppressions and their reasons are in the template)"
  "$CHECKOV_VENV/bin/checkov" --skip-download --quiet --compact --framework cloudformation -f "$TEMPLATE"
}

build() {
  install
  # sam build runs `cargo lambda build --release`, which needs cargo-lambda and zig on PATH.
  PATH="$SAM_VENV/bin:$PATH"
  (cd "$ROOT" && sam build --template-file "$TEMPLATE" --build-dir "$ROOT/.aws-sam/build")
  local f
  for f in CreateJobFunction CopyChunkFunction AdvanceCheckpointFunction FinalizeFunction; do
    [ -x "$ROOT/.aws-sam/build/$f/bootstrap" ] || { log "missing $f/bootstrap"; return 1; }
    log "$f/bootstrap: $(du -h "$ROOT/.aws-sam/build/$f/bootstrap" | cut -f1)"
  done
}

case "${1:-}" in
  install) install ;;
  lint) lint ;;
  build) build ;;
  *) echo "usage: $0 install|lint|build" >&2; exit 2 ;;
esac
