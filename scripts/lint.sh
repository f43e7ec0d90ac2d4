#!/usr/bin/env bash
# Checks the C++ sources against .clang-format (always) and .clang-tidy (FLOTILLA_TIDY=1).
#
#   bash scripts/lint.sh            clang-format check of every tracked *.cpp/*.hpp
#   FLOTILLA_TIDY=1 bash scripts/lint.sh    also clang-tidy (slow; needs a configured build)
#   bash scripts/lint.sh --fix      reformat the files in place instead of checking them
#
# Environment: BUILD_DIR (compile_commands.json for clang-tidy; default build/), JOBS.
# Files: `git ls-files '*.cpp' '*.hpp'` (outside a git checkout: find), minus tests/fixtures/
# and build directories.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
cd "$ROOT"

fix=0
if [[ "${1:-}" == "--fix" ]]; then
  fix=1
elif (($# > 0)); then
  printf 'usage: lint.sh [--fix]\n' >&2
  exit 2
fi

for tool in clang-format clang-tidy; do
  command -v "$tool" >/dev/null || { printf 'lint.sh: %s not found (run scripts/install-deps.sh)\n' "$tool" >&2; exit 1; }
done

files=()
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git -C "$ROOT" ls-files -- '*.cpp' '*.hpp')
else
  mapfile -t files < <(find . -type f \( -name '*.cpp' -o -name '*.hpp' \) -not -path './.git/*' -printf '%P\n' | sort)
fi
sources=()
for f in "${files[@]}"; do
  case "$f" in
    tests/fixtures/* | build/* | build-*/* | */build/*) continue ;;
  esac
  [[ -f "$f" ]] && sources+=("$f")  # tracked but deleted in the work tree
done
((${#sources[@]} > 0)) || { printf 'lint.sh: no C++ sources found\n' >&2; exit 1; }

status=0
if ((fix)); then
  clang-format -i --style=file -- "${sources[@]}"
  printf 'lint.sh: reformatted %d files\n' "${#sources[@]}"
  exit 0
fi

# A file passes when clang-format leaves it unchanged. (Not `clang-format --dry-run -Werror`:
# clang-format 14 reports a no-op replacement for the end comment of a TEST_SUITE block, a
# file it would not change.) The diff of each failing file is shown, shortened.
unformatted=()
for f in "${sources[@]}"; do
  if ! clang-format --style=file -- "$f" | cmp -s -- "$f" -; then
    unformatted+=("$f")
    clang-format --style=file -- "$f" | diff -u --label "$f" --label "$f (clang-format)" -- "$f" - | head -n 20 >&2 || true
  fi
done
if ((${#unformatted[@]} > 0)); then
  printf 'lint.sh: %d of %d files are not clang-formatted:\n' "${#unformatted[@]}" "${#sources[@]}" >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  printf 'lint.sh: fix with: clang-format -i %s\n' "${unformatted[*]}" >&2
  status=1
else
  printf 'lint.sh: clang-format: %d files OK\n' "${#sources[@]}"
fi

if [[ "${FLOTILLA_TIDY:-0}" == "1" ]]; then
  build_dir="${BUILD_DIR:-$ROOT/build}"
  db="$build_dir/compile_commands.json"
  if [[ ! -f "$db" ]]; then
    printf 'lint.sh: %s missing; run scripts/build.sh first\n' "$db" >&2
    exit 1
  fi
  # Headers are checked through the translation units that include them (HeaderFilterRegex).
  tus=()
  for f in "${sources[@]}"; do [[ "$f" == *.cpp ]] && tus+=("$f"); done
  jobs="${JOBS:-$(nproc)}"
  tidy_log="$(mktemp)"
  trap 'rm -f -- "$tidy_log"' EXIT
  printf 'lint.sh: clang-tidy over %d files with %s jobs...\n' "${#tus[@]}" "$jobs"
  if printf '%s\0' "${tus[@]}" \
    | xargs -0 -n 4 -P "$jobs" clang-tidy -p "$build_dir" --quiet --warnings-as-errors='*' >"$tidy_log" 2>&1; then
    printf 'lint.sh: clang-tidy: OK\n'
  else
    grep -E '(warning|error):' "$tidy_log" | sort -u >&2 || cat "$tidy_log" >&2
    printf 'lint.sh: clang-tidy reported problems (see above)\n' >&2
    status=1
  fi
fi

exit "$status"
