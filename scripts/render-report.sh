#!/usr/bin/env bash
# Render a compliance report in headless Chromium (Debian's `chromium` package) to a PNG of the whole
# page, to check what a compliance officer will see. Usage: scripts/render-report.sh REPORT.html OUT.png
# Needs: apt-get install chromium. The report is self-contained, so the browser fetches nothing.
# REPORT_HEIGHT=N forces the height in pixels (default: the page's full height, measured first).
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 REPORT.html OUT.png" >&2
  exit 2
fi
browser=${CHROMIUM:-}
if [ -z "$browser" ]; then
  for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
  done
fi
if [ -z "$browser" ]; then
  echo "render-report: no Chromium found (looked for chromium, chromium-browser, google-chrome)." >&2
  echo "  install it: sudo apt-get install chromium   (Debian/Ubuntu), or set CHROMIUM=/path/to/chrome" >&2
  echo "  or open $1 in any browser and print it" >&2
  exit 127
fi
[ -f "$1" ] || { echo "render-report: $1 does not exist (make it with \`cipherfed audit report ... -o $1\`)" >&2; exit 1; }
report=$(realpath "$1"); out=$(realpath -m "$2")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile" --hide-scrollbars "$@" 2>/dev/null
}
height=${REPORT_HEIGHT:-}
if [ -z "$height" ]; then
  # Measure the page: a copy with one inline line that writes its full height into the DOM.
  sed 's#</body>#<script>document.body.setAttribute("data-height",document.documentElement.scrollHeight)</script></body>#' \
    "$report" >"$work/measure.html"
  height=$(run --window-size=1200,1000 --virtual-time-budget=2000 --dump-dom "file://$work/measure.html" \
    | grep -o 'data-height="[0-9]*"' | grep -o '[0-9]\+' || true)
  height=$(( ${height:-2600} + 40 ))
fi
run --window-size=1200,"$height" --screenshot="$out" "file://$report"
[ -s "$out" ] || { echo "render-report: chromium wrote no screenshot" >&2; exit 1; }
echo "rendered $report -> $out (1200x$height, the whole page)"
