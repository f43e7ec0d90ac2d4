#!/usr/bin/env bash
# Builds everything, checks formatting and clang-tidy, and runs the unit and integration tests.
#
#   bash scripts/test.sh
#
# Steps: scripts/build.sh (installs missing packages first), scripts/lint.sh, then
# `ctest --output-on-failure` (tests "unit" and "integration"). Lint and tests both run even
# when the other fails; the exit status is non-zero when any step failed. Environment:
# BUILD_DIR (default build/), FLOTILLA_TIDY=0 (skip clang-tidy, which takes several minutes on
# two cores; CI always runs it).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
cd "$ROOT"
build_dir="${BUILD_DIR:-$ROOT/build}"
export BUILD_DIR="$build_dir"

start=$SECONDS
step() { printf '\n==> %s\n' "$*"; }
finish() {  # status message
  printf '\ntest.sh: %s (%ds)\n' "$2" $((SECONDS - start))
  exit "$1"
}

step "build ($build_dir)"
if ! bash "$ROOT/scripts/build.sh"; then
  finish 1 "FAILED: build"
fi

failed=()
step "lint"
FLOTILLA_TIDY="${FLOTILLA_TIDY:-1}" bash "$ROOT/scripts/lint.sh" || failed+=(lint)

step "ctest"
ctest --test-dir "$build_dir" --output-on-failure --no-tests=error || failed+=(tests)

if ((${#failed[@]} > 0)); then
  finish 1 "FAILED: ${failed[*]}"
fi
finish 0 "PASSED: build, lint, unit and integration tests"
