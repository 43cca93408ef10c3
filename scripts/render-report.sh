#!/usr/bin/env bash
# Render a compliance report in headless Chromium (Debian's `chromium` package) to a PNG, to check
# what a compliance officer will see. Usage: scripts/render-report.sh REPORT.html OUT.png
# Needs: apt-get install chromium. The report is self-contained, so the browser fetches nothing.
set -euo pipefail
report=$(realpath "$1"); out=$(realpath -m "$2")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1200,${REPORT_HEIGHT:-2600} --hide-scrollbars \
  --screenshot="$out" "file://$report" 2>/dev/null
[ -s "$out" ] || { echo "chromium wrote no screenshot" >&2; exit 1; }
echo "rendered $report -> $out"
