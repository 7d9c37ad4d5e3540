#!/usr/bin/env bash
# Runs the test suite with edgemux (the server the integration tests start, its C shim and the
# test code) built under a sanitizer:
#   Tests/sanitize.sh address [swift test options]    AddressSanitizer (.build-asan)
#   Tests/sanitize.sh thread  [swift test options]    ThreadSanitizer  (.build-tsan)
# e.g. `Tests/sanitize.sh thread --filter EdgemuxCoreTests` for the unit tests only. Any report
# fails the run: the sanitizers stop the process at the first error, and a server that dies
# fails the integration test that started it; its log (in the test's failure) holds the report.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-}
shift || true
case "$kind" in
  address) build=.build-asan ;;
  thread) build=.build-tsan ;;
  *) echo "usage: Tests/sanitize.sh address|thread [swift test options]" >&2; exit 2 ;;
esac
flags=(--build-path "$build" --sanitize "$kind")
swift build --build-tests "${flags[@]}"
# halt_on_error: the first report ends the process (and fails its test); leaks are not errors
# here (a server killed by its test leaves its heap).
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=0:abort_on_error=0}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
exec swift test --skip-build "${flags[@]}" "$@"
