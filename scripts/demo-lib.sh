# What `make demo` and `make demo-online` share (sourced by scripts/demo.sh and
# scripts/demo-online.sh, which set SOURCE, TARGET, ITEMS and TABLECOPY_STACK_NAME first).

BIN=target/debug
RUNNER=
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# LocalStack running (its variables exported), the binaries built, the stack deployed with
# the given `--parameter K=V` arguments, and the sample tables seeded.
demo_setup() {
  step "Starting LocalStack (installs it on first use: about a minute)"
  scripts/localstack.sh start
  eval "$(scripts/localstack.sh env)"

  step "Building tablecopy"
  cargo build --locked -p tablecopy -p tests --bins

  step "Deploying infra/template.yaml to LocalStack's CloudFormation as stack $TABLECOPY_STACK_NAME $*"
  "$BIN/tablecopy" local deploy "$@"

  step "Sample data: $SOURCE (key pk) with $ITEMS items; $TARGET (key customer + order_no)"
  "$BIN/demo" seed --source "$SOURCE" --target "$TARGET" --items "$ITEMS"
}

# The local runner in the background, logging to .cache/NAME.log, with the given VAR=value
# environment: it plays copy-chunk, advance-checkpoint and finalize. Stopped on exit.
demo_runner() {
  local name=$1
  shift
  step "Starting the local runner: it plays copy-chunk, advance-checkpoint and finalize (logs: .cache/$name.log)"
  env "$@" "$BIN/tablecopy" local run --concurrency 4 >".cache/$name.out" 2>".cache/$name.log" &
  RUNNER=$!
  trap 'kill $RUNNER ${WRITER:-} 2>/dev/null || true' EXIT
}

# The independent cross-check of the job's own verification, `show`, and the runner stopped.
demo_finish() {
  local job=$1
  step "Cross-checking the job's own verification: $SOURCE and $TARGET, item by item, attribute by attribute"
  "$BIN/demo" verify --source "$SOURCE" --target "$TARGET"

  step "tablecopy show --job-name $job"
  "$BIN/tablecopy" show --job-name "$job"

  kill -TERM "$RUNNER" && wait "$RUNNER" || true
  trap - EXIT
  echo
  echo "LocalStack keeps running so you can explore (export the variables of 'scripts/localstack.sh env',"
  echo "then e.g. '$BIN/tablecopy list --stack-name $TABLECOPY_STACK_NAME'). 'make stop' stops it."
}
