#!/usr/bin/env bash
# Installs missing dependencies, then configures (RelWithDebInfo, Ninja) and builds everything.
#
#   bash scripts/build.sh
#
# Environment: BUILD_DIR (default build/; relative to the repository root), BUILD_TYPE (default
# RelWithDebInfo), JOBS (default: nproc), CMAKE_ARGS (extra configure arguments, split on blanks).
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
cd "$ROOT"

build_dir="${BUILD_DIR:-$ROOT/build}"
build_type="${BUILD_TYPE:-RelWithDebInfo}"
jobs="${JOBS:-$(nproc)}"
read -r -a extra_args <<<"${CMAKE_ARGS:-}"

bash "$ROOT/scripts/install-deps.sh"

# A directory configured with another generator cannot be reused; say so instead of letting
# CMake fail with a less obvious message.
cache="$build_dir/CMakeCache.txt"
if [[ -f "$cache" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
  printf 'build.sh: %s was configured with another generator; remove it or set BUILD_DIR\n' "$build_dir" >&2
  exit 1
fi

start=$SECONDS
cmake -S "$ROOT" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
  "${extra_args[@]}"
cmake --build "$build_dir" --parallel "$jobs"
printf 'build.sh: built %s (%s) in %ds\n' "$build_dir" "$build_type" $((SECONDS - start)) >&2
