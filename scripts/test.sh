#!/usr/bin/env bash
# The test command (make test, .ci/run): unit tests and the LocalStack integration tests.
# Installs and starts LocalStack if it is not running, and stops it again if it started it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

state="$(scripts/localstack.sh start)"
if [ "$state" = started ]; then
  trap 'scripts/localstack.sh stop' EXIT
fi
eval "$(scripts/localstack.sh env)"
cargo test --workspace --locked
