# Sourced by scripts/base-images.sh and scripts/image.sh: the dedicated
# container storage the tests use, so the machine's default podman/buildah
# storage (/var/lib/containers) is never touched.
#   PODSIGHT_CONTAINERS_ROOT     images and layers (cached between runs)
#   PODSIGHT_CONTAINERS_RUNROOT  run-time state (tmpfs)
# runc, not crun: crun refuses hybrid cgroup hosts. cgroupfs: no systemd
# here to ask for scopes, and the kubelet's cgroupfs driver layout
# (kubepods/<qos>/pod<uid>/<id>) is what the tests want anyway.
PODSIGHT_CONTAINERS_ROOT=${PODSIGHT_CONTAINERS_ROOT:-/var/lib/podsight-test/containers}
PODSIGHT_CONTAINERS_RUNROOT=${PODSIGHT_CONTAINERS_RUNROOT:-/run/podsight-test/containers}
STORAGE_OPTS=(--root "$PODSIGHT_CONTAINERS_ROOT" --runroot "$PODSIGHT_CONTAINERS_RUNROOT" --storage-driver overlay)
podman_() { podman "${STORAGE_OPTS[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend none "$@"; }
buildah_() { buildah "${STORAGE_OPTS[@]}" "$@"; }
