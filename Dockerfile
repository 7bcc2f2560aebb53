# syntax=docker/dockerfile:1
# podsight agent image.
#
# Stage 1 compiles the CO-RE BPF objects with scripts/build-bpf.sh, the same
# script `make` runs, so the image and a checkout build them the same way.
# Stage 2 installs podsight's dependencies from requirements/image.lock
# (exact versions, sha256 hashes) and podsight itself, built from this
# context, into a virtualenv made without pip. Stage 3 is the slim runtime:
# Python, the system libbpf (loaded through ctypes, no compiler or kernel
# headers), iproute2 for debugging, the virtualenv and the objects. No pip,
# setuptools or wheel in it.
#
# Architectures: linux/amd64 only. The objects are CO-RE (libbpf relocates
# them against each node's BTF), but build/vmlinux.h is dumped from the BTF
# of the kernel running the build (or PODSIGHT_BTF), and scripts/build-bpf.sh
# takes __TARGET_ARCH from `uname -m`. An arm64 image built on an amd64 host
# under emulation would compile against the amd64 kernel's types: not
# supported. arm64 needs a native arm64 builder (or PODSIGHT_BTF set to an
# arm64 kernel's BTF) and a test on an arm64 node first; the lock already has
# the aarch64 wheels' hashes.
#
# CO-RE: build where /sys/kernel/btf/vmlinux exists, or pass a BTF file:
#   docker build --build-arg PODSIGHT_BTF=/src/btf/vmlinux .   (file inside the context)

# Base images, pinned by digest (multi-arch index digests). Override both to
# build from local bases, e.g. --build-arg BASE_IMAGE=localhost/debian:bookworm-slim.
# Digests: docker-library/repo-info, repos/debian/remote/bookworm-20260918.md
# and bookworm-20260918-slim.md (commit 43a0ed1e9fb9), the Debian 12 build of
# 2026-09-18: the newest bookworm build found recorded there, looked up on
# 2026-11-30. Moving to another Debian release also means regenerating the
# lock (scripts/lock-image-deps.py --python X.Y; tests check they agree).
ARG BPF_BUILD_IMAGE=debian:bookworm-20260918@sha256:f37a335e82bca302e955fa39f9dfe28f1be618f016f8a2b56318e5a5111afc26
ARG BASE_IMAGE=debian:bookworm-20260918-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

FROM ${BPF_BUILD_IMAGE} AS bpf
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev bpftool ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build-bpf.sh scripts/build-bpf.sh
COPY bpf/ bpf/
ARG PODSIGHT_BTF=/sys/kernel/btf/vmlinux
RUN PODSIGHT_BTF="${PODSIGHT_BTF}" BUILD_DIR=build scripts/build-bpf.sh \
 && ls build/bpf/*.bpf.o

FROM ${BASE_IMAGE} AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# /opt/build-tools: Debian's pip plus the locked setuptools, for this stage
# only. /opt/podsight is made --without-pip; that pip installs into it
# (--python) from the locks: every file checked against its sha256, no
# dependency resolution, wheels only.
COPY requirements/image.lock requirements/image-build.lock requirements/
# Optional build secrets for the one RUN that downloads: a pip.conf (index,
# proxy, `cert = /run/secrets/pip_ca`) and the CA bundle it names, for networks
# that re-sign TLS (scripts/image.sh passes the host's /etc/pip.conf). Not
# given, nothing is mounted and the build is the same; nothing stays in a layer.
RUN --mount=type=secret,id=pip_conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip_ca,target=/run/secrets/pip_ca \
    python3 -m venv /opt/build-tools \
 && /opt/build-tools/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
      -r requirements/image-build.lock \
 && python3 -m venv --without-pip /opt/podsight \
 && /opt/build-tools/bin/pip --python /opt/podsight/bin/python install --no-cache-dir \
      --require-hashes --no-deps --only-binary=:all: -r requirements/image.lock
COPY pyproject.toml README.md* ./
COPY src/ src/
# podsight itself, from this context: a wheel built offline with the locked
# setuptools (no build isolation, so nothing unpinned is fetched).
RUN /opt/build-tools/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --no-index \
      --wheel-dir /tmp/dist . \
 && /opt/build-tools/bin/pip --python /opt/podsight/bin/python install --no-cache-dir \
      --no-deps --no-index /tmp/dist/podsight-*.whl \
 && /opt/podsight/bin/podsight --version \
 && test ! -e /opt/podsight/bin/pip \
 && if /opt/podsight/bin/python -c "import pip" 2>/dev/null \
      || /opt/podsight/bin/python -c "import setuptools" 2>/dev/null; then \
      echo "pip or setuptools in /opt/podsight" >&2; exit 1; \
    fi

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="podsight" \
      org.opencontainers.image.description="Kubernetes-native eBPF observability agent" \
      org.opencontainers.image.source="https://github.com/podsight/podsight" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.github.podsight.architectures="amd64"
# python3 only: no python3-pip, python3-setuptools or python3-venv here;
# ca-certificates for security.output.http to an https URL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libbpf1 iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The venv's python is a symlink to /usr/bin/python3, present in this stage too.
COPY --from=python /opt/podsight /opt/podsight
COPY --from=bpf /src/build/bpf/*.bpf.o /usr/lib/podsight/bpf/
# PODSIGHT_BPF_DIR: where podsight.kernel.loader finds the objects.
# No .pyc writes: the chart runs the root filesystem read-only.
ENV PATH=/opt/podsight/bin:$PATH \
    PODSIGHT_BPF_DIR=/usr/lib/podsight/bpf \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The copied venv runs on this stage's python3.
RUN ["podsight", "--version"]
EXPOSE 9963
ENTRYPOINT ["podsight"]
CMD ["run"]
