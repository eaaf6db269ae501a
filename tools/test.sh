#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. the package is exactly what `nbdev-export` makes of the notebooks,
#   2. the notebooks are clean (`nbdev-clean` changes nothing),
#   3. every notebook runs top to bottom (`nbdev-test`, cells flagged `slow` skipped),
#   4. pytest,
#   5. the docs site builds (nbdev's notebook processing, then Sphinx) and reads right in headless Chromium.
# Steps 1 and 2 compare checksums before and after, so they work without git too.
set -uo pipefail
cd "$(dirname "$0")/.."

# nbdev-test runs two notebooks at once on CI's 2 cores: one math thread each, or they slow each other down
# several times over. Set here for the tests only; readers' notebooks use all their cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

sums() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' \
           -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; }

# unchanged WHAT FOLDER CMD...: run CMD and fail when it changes the files of FOLDER
unchanged() {
  local what=$1 dir=$2; shift 2
  local before after
  before=$(sums "$dir"); "$@" || return 1
  after=$(sums "$dir")
  if [ "$before" != "$after" ]; then
    echo "FAIL: $what changed these files (run it and commit):"
    diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u
    return 1
  fi
}

status=0
echo "== nbdev-export leaves darknb/ unchanged"
unchanged nbdev-export darknb nbdev-export || status=1

echo "== notebooks are clean"
unchanged nbdev-clean nbs nbdev-clean || status=1

echo "== nbdev-test (slow cells skipped)"
nbdev-test --timing || status=1

echo "== pytest"
python -m pytest -q tests || status=1

echo "== docs site (tools/docs.sh --check)"
bash tools/docs.sh --check || status=1

if [ $status -ne 0 ]; then echo "test suite FAILED"; else echo "test suite passed"; fi
exit $status
