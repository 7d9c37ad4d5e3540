#!/usr/bin/env bash
# Fuzzes edgemux's parsers with libFuzzer and AddressSanitizer, each target for a bounded time.
#   Tests/Fuzz/fuzz.sh [SECONDS [TARGET...]]    default: 60 s for every target, two at a time
# Builds edgemux-fuzz into .build-fuzz with libFuzzer and AddressSanitizer, starts each target from
# its committed seeds (Tests/Fuzz/corpus/TARGET, captured from real clients by
# capture-seeds.sh) and a scratch corpus, and fails if any input crashes a parser or breaks one
# of the properties in Sources/EdgemuxCore/Support/FuzzTargets.swift. A failing input is kept in
# FUZZ_ARTIFACTS (default /tmp/edgemux-fuzz-artifacts); replay it without a fuzzing build with
#   swift run edgemux-fuzz TARGET FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
shift || true
build=.build-fuzz
# -sanitize=fuzzer would link libFuzzer's own main, which collides with the one SwiftPM defines
# for an executable (--defsym main=...): the same instrumentation is asked for by its parts, and
# libFuzzer is linked without its main (the driver calls LLVMFuzzerRunDriver).
runtime="$(dirname "$(readlink -f "$(command -v swiftc)")")/../lib/swift/clang/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a"
flags=(--build-path "$build" -c release
  -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp -Xswiftc -DEDGEMUX_FUZZING
  -Xcc -fsanitize=address -Xcc -fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp
  -Xlinker "$runtime" -Xlinker -lstdc++)
# (gold warns once per ASan symbol that it cannot export it: harmless, and left out.)
swift build "${flags[@]}" --product edgemux-fuzz 2>&1 | grep -v "Cannot export local symbol" | grep -E "error|warning: " || true
bin="$(swift build "${flags[@]}" --show-bin-path)/edgemux-fuzz"
[ -x "$bin" ] || { echo "fuzz.sh: the fuzzing build failed" >&2; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("$bin" --list)
artifacts=${FUZZ_ARTIFACTS:-/tmp/edgemux-fuzz-artifacts}
work=$(mktemp -d /tmp/edgemux-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"
jobs_at_once=$(nproc)
# A broken property is a Swift fatal error: its message is the report. (Swift's own backtracer,
# run inside the crashed process, reads memory that AddressSanitizer then flags.)
export SWIFT_BACKTRACE=enable=no
status=0
run() {
  local t=$1
  mkdir -p "$work/$t"
  # The first folder takes what libFuzzer finds; the committed seeds stay as they are.
  if "$bin" "$t" "$work/$t" "Tests/Fuzz/corpus/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/$t-" >"$work/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$') runs in ${seconds} s, corpus $(ls "$work/$t" | wc -l) new"
  else
    echo "fuzz $t: FAILED (input kept under $artifacts/$t-*)"
    grep -E "ERROR|fuzz property broken|SUMMARY|Fatal error" "$work/$t.log" | head -20
    return 1
  fi
}
pending=()
for t in "${targets[@]}"; do
  run "$t" &
  pending+=($!)
  if [ ${#pending[@]} -ge "$jobs_at_once" ]; then
    wait "${pending[0]}" || status=1
    pending=("${pending[@]:1}")
  fi
done
for p in "${pending[@]}"; do wait "$p" || status=1; done
exit $status
