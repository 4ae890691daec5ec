#!/usr/bin/env bash
# The test command (make test, .ci/run): unit tests and the LocalStack integration tests.
# Installs and starts LocalStack if it is not running, and stops it again if it started it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# LocalStack installs and starts while the tests compile.
mkdir -p .cache
scripts/localstack.sh start >.cache/localstack-start.out 2>.cache/localstack-start.err &
starting=$!
trap 'wait "$starting" 2>/dev/null; [ "$(cat .cache/localstack-start.out 2>/dev/null)" = started ] && scripts/localstack.sh stop' EXIT
cargo test --workspace --locked --no-run
if ! wait "$starting"; then
  cat .cache/localstack-start.err >&2
  echo "LocalStack did not start (see above); the integration tests cannot run" >&2
  exit 1
fi
cat .cache/localstack-start.err >&2
eval "$(scripts/localstack.sh env)"
cargo test --workspace --locked
