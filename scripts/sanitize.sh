#!/usr/bin/env bash
# Sanitizer build: clang-14 with AddressSanitizer + UndefinedBehaviorSanitizer (no recovery) and
# the libFuzzer targets, into build-asan/; then the whole unit + e2e suite and a smoke run of
# every fuzz target (ctest label "fuzz") under the sanitizers.
# Usage: bash scripts/sanitize.sh [ctest args...]      e.g. bash scripts/sanitize.sh -L unit
#        BUILD_ONLY=1 bash scripts/sanitize.sh          build, no tests
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
JOBS=${JOBS:-$(nproc)}
CC=${CC_ASAN:-clang-14} CXX=${CXX_ASAN:-clang++-14} \
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_EXE_LINKER_FLAGS="-fuse-ld=lld" \
  -DTESSERA_SANITIZE=ON -DTESSERA_FUZZ=ON -DTESSERA_WERROR=ON >/dev/null
ninja -C "$BUILD_DIR" -j "$JOBS"
[ "${BUILD_ONLY:-0}" = 1 ] && exit 0
# detect_leaks: LeakSanitizer runs too. abort_on_error: a finding fails the test even where the
# exit code is not looked at (e.g. a child process).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" --timeout 1800 "$@"
