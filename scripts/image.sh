#!/usr/bin/env bash
# Build the repository's Dockerfile here, as the tests do: local Debian bases
# (scripts/base-images.sh), buildah with chroot isolation and the host's
# network, runc, into the tests' dedicated storage (scripts/podman-test-env.sh).
#
#   scripts/image.sh          prints the image name (localhost/podsight:test-<key>)
#
# Cached: the tag's key is a hash of everything the build reads (Dockerfile,
# locks, pyproject, src/, bpf/, scripts/build-bpf.sh), the base images' ids
# and this kernel's BTF (the BPF objects are compiled against it); an
# existing tag is reused, older test tags are removed.
# When /etc/pip.conf exists, it goes in as the build secret pip_conf (with its
# `cert` bundle as pip_ca): pip in the build then trusts what the host's pip
# trusts (e.g. a network that re-signs TLS). Root only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/podman-test-env.sh

read -r BPF_BUILD_IMAGE BASE_IMAGE < <(scripts/base-images.sh)

key=$( {
  git ls-files --cached --others --exclude-standard -- Dockerfile requirements pyproject.toml README.md src bpf \
    scripts/build-bpf.sh | sort -u | while read -r f; do [ -f "$f" ] && sha256sum "$f"; done
  podman_ image inspect --format '{{.Id}}' "$BPF_BUILD_IMAGE" "$BASE_IMAGE"
  sha256sum /sys/kernel/btf/vmlinux
} | sha256sum | cut -c1-16)
IMAGE=localhost/podsight:test-$key

if podman_ image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi

work=$(mktemp -d /var/tmp/podsight-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
secrets=()
if [ -f /etc/pip.conf ]; then
  # The host's pip.conf, its cert (a path on the host) pointed at the secret.
  python3 - "$work" <<'PY'
import configparser, shutil, sys
work = sys.argv[1]
cfg = configparser.ConfigParser(interpolation=None)
cfg.read("/etc/pip.conf")
for section in cfg.sections():
    if cfg.has_option(section, "cert"):
        shutil.copyfile(cfg.get(section, "cert"), f"{work}/pip_ca")
        cfg.set(section, "cert", "/run/secrets/pip_ca")
with open(f"{work}/pip.conf", "w") as f:
    cfg.write(f)
PY
  secrets+=(--secret "id=pip_conf,src=$work/pip.conf")
  [ -f "$work/pip_ca" ] && secrets+=(--secret "id=pip_ca,src=$work/pip_ca")
fi

t0=$(date +%s)
# A clean context: only what git tracks (plus the working tree's changes to it).
ctx="$work/context"
mkdir "$ctx"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$ctx"
buildah_ bud --quiet --isolation chroot --network host --layers=false \
  --runtime runc --cgroup-manager cgroupfs \
  --build-arg "BPF_BUILD_IMAGE=$BPF_BUILD_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  "${secrets[@]}" -t "$IMAGE" -f "$ctx/Dockerfile" "$ctx" >"$work/build.log" 2>&1 \
  || { echo "image: build failed:" >&2; tail -n 60 "$work/build.log" >&2; exit 1; }
# Older test builds of this repository, and the intermediate stages.
podman_ images --format '{{.Repository}}:{{.Tag}}' --filter reference=localhost/podsight \
  | grep -v -x -e "$IMAGE" | xargs -r podman_ rmi -f >/dev/null 2>&1 || true
podman_ image prune -f >/dev/null 2>&1 || true
echo "image: built $IMAGE in $(( $(date +%s) - t0 ))s" >&2
echo "$IMAGE"
