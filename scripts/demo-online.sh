#!/usr/bin/env bash
# make demo-online: the demo with the application still writing. LocalStack, the stack (its
# copy-chunk visibility set to 30 s, so the replay begins 30 s after the snapshot instead of
# 15 minutes), a sample table, and a writer that keeps inserting, updating (several times a
# second), deleting and re-inserting items in it; an online job (which enables the table's
# stream) copies it into a target with another key schema and catches up with the stream;
# then the writer stops, `tablecopy complete` drains the stream, verifies and repairs, and the
# result is checked item by item.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ITEMS="${ITEMS:-20000}"
export TABLECOPY_STACK_NAME="${STACK:-tablecopy-demo-online}"
SOURCE=demo-live-orders
TARGET=demo-live-orders-by-customer
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Starting LocalStack (installs it on first use: about a minute)"
scripts/localstack.sh start
eval "$(scripts/localstack.sh env)"

step "Building tablecopy"
cargo build --locked -p tablecopy -p tests --bins
BIN=target/debug

step "Deploying infra/template.yaml as stack $TABLECOPY_STACK_NAME (CopyChunkVisibilityTimeout=30)"
"$BIN/tablecopy" local deploy --parameter CopyChunkVisibilityTimeout=30

step "Sample data: $SOURCE (key pk) with $ITEMS items; $TARGET (key customer + order_no)"
"$BIN/demo" seed --source "$SOURCE" --target "$TARGET" --items "$ITEMS"

step "Starting the local runner (logs: .cache/demo-online-runner.log)"
DRAIN_SETTLE_SECONDS=5 "$BIN/tablecopy" local run --concurrency 4 >.cache/demo-online-runner.out 2>.cache/demo-online-runner.log &
RUNNER=$!
WRITER=
trap 'kill $RUNNER $WRITER 2>/dev/null || true' EXIT

step "The application keeps writing to $SOURCE (a writer in the background)"
"$BIN/demo" write --source "$SOURCE" --items "$ITEMS" &
WRITER=$!

JOB="live-$(date +%Y%m%d-%H%M%S)"
step "tablecopy create --job-name $JOB --source-table $SOURCE --target-table $TARGET --mode online --enable-stream"
"$BIN/tablecopy" create --job-name "$JOB" --source-table "$SOURCE" --target-table "$TARGET" \
  --mode online --enable-stream --output json >/dev/null
echo "created: it enabled the stream of $SOURCE, and copies a snapshot while the writer runs"

step "tablecopy watch --job-name $JOB --until-caught-up   (the snapshot, then the stream)"
"$BIN/tablecopy" watch --job-name "$JOB" --until-caught-up >/dev/null
sleep 10
"$BIN/tablecopy" show --job-name "$JOB" | grep -E '^(Status|Replay|Items copied)'

step "The application stops writing"
kill -TERM "$WRITER" && wait "$WRITER" || true
WRITER=

step "tablecopy complete --job-name $JOB   (drain the stream, verify, repair)"
"$BIN/tablecopy" complete --job-name "$JOB" | grep -E '^(Status)'
"$BIN/tablecopy" watch --job-name "$JOB" >/dev/null

step "Cross-checking the job's own verification: $SOURCE and $TARGET, item by item"
"$BIN/demo" verify --source "$SOURCE" --target "$TARGET"

step "tablecopy show --job-name $JOB"
"$BIN/tablecopy" show --job-name "$JOB"

kill -TERM "$RUNNER" && wait "$RUNNER" || true
trap - EXIT
echo
echo "LocalStack keeps running ('make stop' stops it)."
