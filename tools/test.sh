#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. the package is exactly what `nbdev-export` makes of the notebooks,
#   2. the notebooks are clean (`nbdev-clean` changes nothing),
#   3. every notebook runs top to bottom (`nbdev-test`, cells flagged `slow` skipped),
#   4. pytest.
# Steps 1 and 2 compare checksums before and after, so they work without git too.
set -uo pipefail
cd "$(dirname "$0")/.."

sums() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' \
           -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; }
changed() { diff <(echo "$1") <(echo "$2") | grep '^[<>]' | awk '{print "  " $3}' | sort -u; }

status=0
echo "== nbdev-export leaves darknb/ unchanged"
before=$(sums darknb)
nbdev-export || status=1
after=$(sums darknb)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-export changed these files (run nbdev-export and commit):"; changed "$before" "$after"; status=1
fi

echo "== notebooks are clean"
before=$(sums nbs)
nbdev-clean || status=1
after=$(sums nbs)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev-clean changed these notebooks (run nbdev-clean and commit):"; changed "$before" "$after"; status=1
fi

echo "== nbdev-test (slow cells skipped)"
nbdev-test --timing || status=1

echo "== pytest"
python -m pytest -q tests || status=1

if [ $status -ne 0 ]; then echo "test suite FAILED"; else echo "test suite passed"; fi
exit $status
