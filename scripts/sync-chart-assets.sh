#!/usr/bin/env bash
# Copy the Grafana dashboards and Prometheus rule files into the Helm chart.
#
# Helm can only read files inside the chart directory (.Files), so the chart
# keeps copies under files/; dashboards/ and rules/ at the repository root stay
# the sources that promtool and the dashboard tests check. tests/deploy fails
# when the copies drift. Mirrors: files removed from a source go from the chart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART_FILES="$ROOT/deploy/helm/podsight/files"

sync_dir() {  # sync_dir <source dir> <glob> <destination dir>
  local src="$1" pattern="$2" dst="$3"
  if [[ ! -d "$src" ]]; then
    echo "sync-chart-assets: $src does not exist, leaving $dst unchanged" >&2
    return 0
  fi
  mkdir -p "$dst"
  local f
  for f in "$dst"/$pattern; do
    [[ -e "$f" ]] || continue
    [[ -e "$src/$(basename "$f")" ]] || { rm -f "$f"; echo "sync-chart-assets: removed stale ${f#"$ROOT"/}"; }
  done
  for f in "$src"/$pattern; do
    [[ -e "$f" ]] || continue
    if ! cmp -s "$f" "$dst/$(basename "$f")"; then
      cp "$f" "$dst/"
      echo "sync-chart-assets: updated ${dst#"$ROOT"/}/$(basename "$f")"
    fi
  done
}

sync_dir "$ROOT/dashboards" '*.json' "$CHART_FILES/dashboards"
sync_dir "$ROOT/rules" '*.yaml' "$CHART_FILES/rules"
