#!/usr/bin/env bash
# The test command (make test, .ci/run): unit tests and the LocalStack integration tests.
# Installs and starts LocalStack if it is not running, and stops it again if it started it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# LocalStack installs and starts while the tests compile.
mkdir -p .cache
scripts/localstack.sh start >.cache/localstack-start.out 2>.cache/localstack-start.err &
starting=$!
# The online suite has a LocalStack of its own, whose DynamoDB Streams is DynamoDB Local's own
# stream (LocalStack's `v2` providers): the default one is a thread pool in LocalStack's Python
# process that forwards each write to a Kinesis emulator, and when the suites running side by
# side starve it of CPU it publishes records minutes late (lag above 200 s in CI) or out of
# order. DynamoDB Local records a write's stream record in the write itself and pages
# GetRecords at 1,000 records, as DynamoDB does.
ONLINE_ENDPOINT=http://127.0.0.1:4570
ONLINE_PROVIDERS=(PROVIDER_OVERRIDE_DYNAMODB=v2 PROVIDER_OVERRIDE_DYNAMODBSTREAMS=v2)
starting_online=
faulting=
# On any exit (Ctrl-C too): stop the background suites if they still run, then every
# LocalStack this script launched (one it found running answers `running` and is left alone),
# healthy or not; each step whatever the one before did.
cleanup() {
  set +e
  # shellcheck disable=SC2086 # one word per process
  [ -n "$faulting" ] && { kill $faulting 2>/dev/null; wait $faulting 2>/dev/null; }
  # shellcheck disable=SC2086 # empty, or one pid
  wait "$starting" $starting_online 2>/dev/null
  [ "$(cat .cache/localstack-start.out 2>/dev/null)" != running ] && scripts/localstack.sh stop
  [ -n "$starting_online" ] && [ "$(cat .cache/localstack-online.out 2>/dev/null)" != running ] &&
    LOCALSTACK_ENDPOINT=$ONLINE_ENDPOINT scripts/localstack.sh stop
}
trap cleanup EXIT
cargo test --workspace --locked --no-run
if ! wait "$starting"; then
  cat .cache/localstack-start.err >&2
  echo "LocalStack did not start (see above); the integration tests cannot run" >&2
  exit 1
fi
cat .cache/localstack-start.err >&2
eval "$(scripts/localstack.sh env)"
# (Started once the first one is: both would install LocalStack into the same place.)
env "${ONLINE_PROVIDERS[@]}" LOCALSTACK_ENDPOINT=$ONLINE_ENDPOINT scripts/localstack.sh start >.cache/localstack-online.out 2>.cache/localstack-online.err &
starting_online=$!

# Every crate's unit and doc tests, and the CLI's suite (tablecopy/tests: the binary against
# LocalStack). Targets are always selected with --workspace, as the build above was, so that
# cargo resolves the same features and builds nothing twice.
cargo test --workspace --locked --exclude tests
# Two suites run in the background beside the others, each from its binary (a second cargo
# would wait for the first one's lock on the build directory): the fault suite (it starts
# LocalStacks of its own and mostly waits: visibility timeouts, throttled retries) and the
# online suite (a few minutes of waiting for its stream to be replayed). The rate budget's
# suite measures time: it runs last, alone. Every other [[test]] of tests/Cargo.toml runs in
# the foreground, so a new suite runs without being listed here.
binary() {
  local path
  path=$(cargo test --workspace --locked --test "$1" --no-run 2>&1 | sed -n 's/^ *Executable .*(\(.*\))$/\1/p')
  case "$path" in /*) ;; *) path="$PWD/$path" ;; esac
  [ -x "$path" ] || { echo "the $1 suite's binary was not found" >&2; return 1; }
  echo "$path"
}
background=(faults online)
endpoints=("$AWS_ENDPOINT_URL" "$ONLINE_ENDPOINT")
paths=()
for suite in "${background[@]}"; do
  path=$(binary "$suite")
  paths+=("$path")
done
if ! wait "$starting_online"; then
  cat .cache/localstack-online.err >&2
  echo "the online suite's LocalStack ($ONLINE_ENDPOINT) did not start (see above)" >&2
  exit 1
fi
pids=()
for i in "${!background[@]}"; do
  # exec: the process waited for (and stopped on exit) is the suite itself.
  (cd tests && AWS_ENDPOINT_URL=${endpoints[$i]} exec "${paths[$i]}") >".cache/${background[$i]}.log" 2>&1 &
  pids+=($!)
  faulting="${pids[*]}"
done
suites=$(awk '/^\[/ { block = $0 } block == "[[test]]" && $1 == "name" { gsub(/"/, "", $3); print "--test", $3 }' tests/Cargo.toml |
  grep -v -e '--test faults$' -e '--test online$' -e '--test pacing$' || true)
[ -n "$suites" ] || { echo "no integration suite found in tests/Cargo.toml" >&2; exit 1; }
status=0
# shellcheck disable=SC2086 # one word per argument
cargo test --workspace --locked --no-fail-fast $suites || status=$?
# Exit status 4 when the fault suite failed, 5 when the online suite did.
for i in "${!background[@]}"; do
  wait "${pids[$i]}" || status=$((status == 0 ? 4 + i : status))
done
faulting=
cargo test --workspace --locked --test pacing || status=$?
for suite in "${background[@]}"; do
  echo "===== $suite suite ====="
  cat ".cache/$suite.log"
done
exit "$status"
