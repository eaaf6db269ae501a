#!/usr/bin/env bash
# Build the docs site into _site/ without Quarto and without network, after the README's dev install
# (pip install -e ".[dev]"):
#   1. nbdev processes the notebooks into _proc/ (nbdev.serve.proc_nbs, what nbdev-docs runs before
#      Quarto; it stops on the same errors as nbdev-docs),
#   2. Sphinx + myst-nb (Furo theme, local MathJax, offline search) renders them, with nbdev's page names
#      (raw.html for 00_raw.ipynb) and heading anchors, the sidebar of nbs/sidebar.yml.
# Quarto users can still run nbdev-docs / nbdev-preview: nbs/_quarto.yml and nbs/sidebar.yml are the site's
# configuration for Quarto, and stay as nbdev made them.
#
#   bash tools/docs.sh            build _site/
#   bash tools/docs.sh --check    build (or reuse a fresh build), serve _site/ on 127.0.0.1 and check it in
#                                 headless Chromium (tools/docs_check.py); screenshots in _site/_shots/
#   bash tools/docs.sh --force    reprocess every notebook (ignore nbdev's _proc/ cache)
#   bash tools/docs.sh --serve    build, then serve _site/ on http://127.0.0.1:8000/ to read it
set -euo pipefail
cd "$(dirname "$0")/.."

check=0; serve=0; force=()
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    --serve) serve=1 ;;
    --force) force=(--force) ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "docs.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

# A build is fresh when nothing it is made from changed since: the notebooks, the package, this tooling.
fresh() {
  [ -f .docs-cache/manifest.json ] && [ -f _site/index.html ] || return 1
  [ -z "$(find nbs darknb tools/docs tools/docs_build.py pyproject.toml -newer .docs-cache/manifest.json \
          -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' -print -quit 2>/dev/null)" ]
}

t0=$SECONDS
if [ $check -eq 1 ] && [ ${#force[@]} -eq 0 ] && fresh; then
  echo "== docs: reusing the fresh build in _site/"
else
  echo "== docs: building _site/"
  python tools/docs_build.py "${force[@]}"
fi

if [ $serve -eq 1 ]; then
  echo "== serving _site/ on http://127.0.0.1:8000/ (Ctrl-C to stop)"
  exec python -m http.server 8000 --bind 127.0.0.1 --directory _site
fi
[ $check -eq 1 ] || exit 0

echo "== docs: browser check"
chromium_bin() { command -v chromium || command -v chromium-browser || true; }
CHROMIUM="${CHROMIUM:-$(chromium_bin)}"
if [ -z "$CHROMIUM" ]; then
  if [ -n "${CI:-}" ]; then
    echo "installing Debian's chromium for the browser check (CI)"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    CHROMIUM="$(chromium_bin)"
    [ -n "$CHROMIUM" ] || { echo "FAIL: chromium could not be installed" >&2; exit 1; }
  else
    echo "SKIPPED the browser check: no Chromium here (apt-get install chromium, or set CHROMIUM=/path/to/chrome); _site/ is built, exit 0 means skipped, not passed"
    exit 0
  fi
fi
python -c "import playwright" 2>/dev/null || { echo "FAIL: Playwright is missing: pip install -e \".[dev]\"" >&2; exit 1; }

# a Python http.server on a free port of 127.0.0.1, in the background, stopped when this script ends
log="$(mktemp)"
python -u -m http.server 0 --bind 127.0.0.1 --directory _site >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 100); do
  port="$(sed -n 's/.* port \([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)"
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "FAIL: http.server did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: http.server did not report its port" >&2; exit 1; }

status=0
python tools/docs_check.py --url "http://127.0.0.1:$port/" --chromium "$CHROMIUM" || status=$?
echo "docs build and check: $((SECONDS - t0)) s"
exit $status
