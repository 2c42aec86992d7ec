#!/usr/bin/env bash
# Sets everything up on a fresh machine, builds with warnings as errors, and runs the whole
# test suite (unit + e2e) against ../shared/fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DTESSERA_WERROR=ON
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$(nproc)" --timeout 900
# Opt-in: the sanitizer build and suite (see README "Sanitizers and fuzzing" for why CI does not).
if [ "${SANITIZE:-0}" = 1 ]; then
  bash scripts/sanitize.sh
fi
