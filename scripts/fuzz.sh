#!/usr/bin/env bash
# Runs every libFuzzer target (build-asan/fuzz/fuzz_*) for SECONDS each (default 60), one after
# the other, starting from the committed seeds in fuzz/corpus/<target>/; new inputs go to
# fuzz-out/corpus/<target>/ and crashes to fuzz-out/crashes/<target>/. Prints execs/s and
# coverage per target and exits 1 if any target found a crash.
# Usage: bash scripts/fuzz.sh [SECONDS] [TARGET...]     (build first: BUILD_ONLY=1 bash scripts/sanitize.sh)
#        bash scripts/fuzz.sh --make-corpus             regenerate fuzz/corpus/ from ../shared/fixtures
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
FIX=${TESSERA_FIXTURES:-../shared/fixtures}
if [ "${1:-}" = "--make-corpus" ]; then
  # Regenerates the generated seeds in place; the committed regress-* seeds (inputs that once
  # crashed) are kept.
  find fuzz/corpus -type f ! -name 'regress-*' -delete 2>/dev/null || true
  "$BUILD_DIR/fuzz/fuzz_make_corpus" "$FIX" fuzz/corpus
  du -sh fuzz/corpus/* | sed 's/^/  /'
  exit 0
fi
SECS=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for b in "$BUILD_DIR"/fuzz/fuzz_*; do
    n=$(basename "$b")
    [ "$n" = fuzz_make_corpus ] && continue
    targets+=("${n#fuzz_}")
  done
fi
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
OUT=${FUZZ_OUT:-fuzz-out}
failed=0
printf '%-16s %8s %12s %10s %8s %8s %s\n' target seconds execs execs/s cov ft result
for t in "${targets[@]}"; do
  mkdir -p "$OUT/corpus/$t" "$OUT/crashes/$t"
  log="$OUT/$t.log"
  set +e
  "$BUILD_DIR/fuzz/fuzz_$t" -max_total_time="$SECS" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$OUT/crashes/$t/" "$OUT/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  res=ok
  if [ $rc -ne 0 ]; then res="FAILED (rc $rc, see $log)"; failed=1; fi
  printf '%-16s %8s %12s %10s %8s %8s %s\n' "$t" "$SECS" "$execs" "$rate" "$cov" "$ft" "$res"
done
exit $failed
