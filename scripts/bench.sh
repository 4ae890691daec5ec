#!/usr/bin/env bash
# make bench: see tests/bench.rs. Arguments go to the benchmark (e.g. --items 20000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
state="$(scripts/localstack.sh start)"
if [ "$state" = started ]; then
  trap 'scripts/localstack.sh stop' EXIT
fi
eval "$(scripts/localstack.sh env)"
cargo build --locked --profile local-release -p tablecopy -p tests --bins
target/local-release/bench "$@"
