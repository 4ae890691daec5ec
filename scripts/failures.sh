#!/usr/bin/env bash
# What failed, from test output (the files named, or standard input): each failed test's name,
# its error or panic message and the suites' result lines, without the metric lines the
# handlers print. CI prints it last, so that a failure's cause is in the tail of its output.
set -euo pipefail
grep -v '^{"_aws"' "$@" | awk '
  /^---- .* ----$/ { print; next }
  /^Error: / || /^thread .* panicked at/ { print; after = 4; next }
  /^test result: FAILED/ || /^failures:$/ { print; next }
  /^    [a-z0-9_:]+$/ { print; next }
  after > 0 { print; after--; next }
' | cut -c1-600 | head -n 80
