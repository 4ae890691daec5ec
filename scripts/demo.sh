#!/usr/bin/env bash
# make demo: LocalStack, the stack from infra/template.yaml, a 50,000-item sample table, a
# target with another key schema, a copy job through the four functions (played by the local
# runner), a live progress bar, verification item by item, and the job as `show` prints it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ITEMS="${ITEMS:-50000}"
export TABLECOPY_STACK_NAME="${STACK:-tablecopy-demo}"
SOURCE=demo-orders
TARGET=demo-orders-by-customer
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting LocalStack (installs it on first use: about a minute)"
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"

step "Building tablecopy"
cargo build --locked -p tablecopy -p tests --bins
BIN=target/debug

step "Deploying infra/template.yaml to LocalStack's CloudFormation as stack $TABLECOPY_STACK_NAME"
"$BIN/tablecopy" local deploy

step "Sample data: $SOURCE (key pk) with $ITEMS items; $TARGET (key customer + order_no)"
"$BIN/demo" seed --source "$SOURCE" --target "$TARGET" --items "$ITEMS"

step "Starting the local runner: it plays copy-chunk, advance-checkpoint and finalize (logs: .cache/demo-runner.log)"
"$BIN/tablecopy" local run --concurrency 4 >.cache/demo-runner.out 2>.cache/demo-runner.log &
RUNNER=$!
trap 'kill $RUNNER 2>/dev/null || true' EXIT

JOB="demo-$(date +%Y%m%d-%H%M%S)"
step "tablecopy plan --source-table $SOURCE --target-table $TARGET"
"$BIN/tablecopy" plan --source-table "$SOURCE" --target-table "$TARGET"

step "tablecopy create --job-name $JOB --source-table $SOURCE --target-table $TARGET"
"$BIN/tablecopy" create --job-name "$JOB" --source-table "$SOURCE" --target-table "$TARGET" --output json >/dev/null
echo "created"

step "tablecopy watch --job-name $JOB"
"$BIN/tablecopy" watch --job-name "$JOB" >/dev/null

step "Cross-checking the job's own verification: every item of $SOURCE is in $TARGET, attribute by attribute"
"$BIN/demo" verify --source "$SOURCE" --target "$TARGET"

step "tablecopy show --job-name $JOB"
"$BIN/tablecopy" show --job-name "$JOB"

kill -TERM "$RUNNER" && wait "$RUNNER" || true
trap - EXIT
echo
echo "LocalStack keeps running so you can explore (export the variables of 'scripts/localstack.sh env',"
echo "then e.g. '$BIN/tablecopy list --stack-name $TABLECOPY_STACK_NAME'). 'make stop' stops it."
