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
# shellcheck source=scripts/demo-lib.sh
. scripts/demo-lib.sh

demo_setup
demo_runner demo-runner

JOB="demo-$(date +%Y%m%d-%H%M%S)"
step "tablecopy plan --source-table $SOURCE --target-table $TARGET"
"$BIN/tablecopy" plan --source-table "$SOURCE" --target-table "$TARGET"

step "tablecopy create --job-name $JOB --source-table $SOURCE --target-table $TARGET"
"$BIN/tablecopy" create --job-name "$JOB" --source-table "$SOURCE" --target-table "$TARGET" --output json >/dev/null
echo "created"

step "tablecopy watch --job-name $JOB"
"$BIN/tablecopy" watch --job-name "$JOB" >/dev/null

demo_finish "$JOB"
