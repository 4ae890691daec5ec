#!/usr/bin/env bash
# make bench: see tests/bench.rs. Runs the benchmark once per DynamoDB storage mode of
# LocalStack (BENCH_MODES, default "memory disk": DYNAMODB_IN_MEMORY=1, and LocalStack's
# default on-disk SQLite), each on a fresh LocalStack of its own, so the copy and its ceiling
# are always measured against the same settings. Arguments go to the benchmark
# (e.g. --items 20000). BENCH_BIN picks another benchmark binary (make bench-scale:
# bench-scale, tests/bench_scale.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --locked --profile local-release -p tablecopy -p tests --bins

port=4568
for mode in ${BENCH_MODES:-memory disk}; do
  endpoint="http://127.0.0.1:$port"
  in_memory=0
  [ "$mode" = memory ] && in_memory=1
  LOCALSTACK_ENDPOINT="$endpoint" scripts/localstack.sh stop >/dev/null 2>&1 || true
  LOCALSTACK_ENDPOINT="$endpoint" DYNAMODB_IN_MEMORY="$in_memory" scripts/localstack.sh start >/dev/null
  echo
  echo "### DynamoDB storage: $mode (DYNAMODB_IN_MEMORY=$in_memory), LocalStack at $endpoint"
  AWS_ENDPOINT_URL="$endpoint" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    "target/local-release/${BENCH_BIN:-bench}" "$@" || status=$?
  LOCALSTACK_ENDPOINT="$endpoint" scripts/localstack.sh stop >/dev/null 2>&1 || true
  [ "${status:-0}" = 0 ] || exit "$status"
  port=$((port + 1))
done
