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
WRITER=
# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

demo_setup --parameter CopyChunkVisibilityTimeout=30
demo_runner demo-online-runner DRAIN_SETTLE_SECONDS=5

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

demo_finish "$JOB"
