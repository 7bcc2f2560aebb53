#!/usr/bin/env bash
# Local Debian base images for building the Dockerfile without a registry:
# debian:bookworm and debian:bookworm-slim made with mmdebstrap (variant
# minbase, merged /usr) from this host's configured Debian mirror, imported
# into the tests' dedicated podman storage (scripts/podman-test-env.sh).
#
#   scripts/base-images.sh        prints "BPF_BUILD_IMAGE BASE_IMAGE" (image names)
#
# Cached: the tag carries a key made of the mirror, the suites and each
# suite's InRelease (so new packages on the mirror make new bases); an
# existing tag is reused. Root only (mmdebstrap --mode=root, podman import).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/podman-test-env.sh

SUITE=${PODSIGHT_BASE_SUITE:-bookworm}
REPO_NAME=localhost/podsight-base/debian

# The first Debian URI configured for apt (deb822 .sources or one-line lists)
# whose URL does (security) or does not (main) name the security archive.
apt_uri() {  # apt_uri security|main DEFAULT
  local op='!~' m=""
  [ "$1" = security ] && op='~'
  m=$(awk "/^URIs:/ {for (i = 2; i <= NF; i++) if (\$i $op /security/) {print \$i; exit}}" \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 || true)
  [ -n "$m" ] || m=$(awk "\$1 == \"deb\" && \$0 $op /security/ {for (i = 2; i <= NF; i++) if (\$i ~ /^[a-z]+:\\/\\//) {print \$i; exit}}" \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 || true)
  echo "${m:-$2}"
}
mirror() { apt_uri main http://deb.debian.org/debian; }
security_mirror() { apt_uri security http://deb.debian.org/debian-security; }

MIRROR=$(mirror)
SECURITY=$(security_mirror)
SOURCES=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main")

key=$( {
  printf '%s\n' "${SOURCES[@]}" minbase merged-usr v1
  for s in "$MIRROR/dists/$SUITE" "$MIRROR/dists/$SUITE-updates" "$SECURITY/dists/$SUITE-security"; do
    curl -fsSL --retry 2 --max-time 30 "$s/InRelease"
  done
} | sha256sum | cut -c1-16)
full="$REPO_NAME:$SUITE-$key"
slim="$REPO_NAME:$SUITE-slim-$key"

if podman_ image exists "$full" && podman_ image exists "$slim"; then
  echo "$full $slim"
  exit 0
fi

work=$(mktemp -d /var/tmp/podsight-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# slim as the official images make it: no docs, man pages or locales.
SLIM_EXCLUDES=(
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/linda/*'
)
# The build stages run apt-get install: keep apt's own slim-image settings too.
APT_OPTS=(--aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Languages "none"')

build() {  # name tar [extra mmdebstrap options...]
  local tar=$2; shift 2
  mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "${APT_OPTS[@]}" "$@" "$SUITE" "$tar" "${SOURCES[@]}"
}

t0=$(date +%s)
build full "$work/full.tar" > "$work/full.log" 2>&1 &
p_full=$!
build slim "$work/slim.tar" "${SLIM_EXCLUDES[@]}" > "$work/slim.log" 2>&1 &
p_slim=$!
rc=0
wait "$p_full" || { rc=1; echo "base-images: mmdebstrap (full) failed:" >&2; cat "$work/full.log" >&2; }
wait "$p_slim" || { rc=1; echo "base-images: mmdebstrap (slim) failed:" >&2; cat "$work/slim.log" >&2; }
[ "$rc" = 0 ] || exit 1

import_() {  # kind tag plain
  podman_ import --quiet --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$work/$1.tar" "$2" >/dev/null
  podman_ tag "$2" "$REPO_NAME:$3"
}
import_ full "$full" "$SUITE"
import_ slim "$slim" "$SUITE-slim"
# Older keyed bases: no longer referenced by any key.
podman_ images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$REPO_NAME" \
  | grep -v -e ":$SUITE-$key\$" -e ":$SUITE-slim-$key\$" -e ":$SUITE\$" -e ":$SUITE-slim\$" \
  | xargs -r podman_ rmi -f >/dev/null 2>&1 || true
echo "base-images: made $full and $slim in $(( $(date +%s) - t0 ))s" >&2
echo "$full $slim"
