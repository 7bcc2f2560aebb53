# syntax=docker/dockerfile:1
# podsight agent image.
#
# Stage 1 compiles the CO-RE BPF objects with scripts/build-bpf.sh, the same
# script `make` runs, so the image and a checkout build them the same way.
# Stage 2 installs podsight into a virtualenv (Debian's python3 is
# "externally managed", PEP 668). Stage 3 is the slim runtime: Python, the
# system libbpf (loaded through ctypes, no compiler or kernel headers), iproute2
# for debugging, podsight and the objects.
#
# CO-RE: vmlinux.h comes from the BTF of the kernel building the image;
# libbpf relocates the objects against each node's own BTF at load time.
# Build where /sys/kernel/btf/vmlinux exists, or pass a BTF file:
#   docker build --build-arg PODSIGHT_BTF=/src/btf/vmlinux .   (file inside the context)

ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE} AS bpf
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev bpftool ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/build-bpf.sh scripts/build-bpf.sh
COPY bpf/ bpf/
ARG PODSIGHT_BTF=/sys/kernel/btf/vmlinux
RUN PODSIGHT_BTF="${PODSIGHT_BTF}" BUILD_DIR=build scripts/build-bpf.sh \
 && ls build/bpf/*.bpf.o

FROM debian:${DEBIAN_RELEASE}-slim AS python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY src/ src/
RUN python3 -m venv /opt/podsight \
 && /opt/podsight/bin/pip install --no-cache-dir . \
 && /opt/podsight/bin/podsight --version

FROM debian:${DEBIAN_RELEASE}-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="podsight" \
      org.opencontainers.image.description="Kubernetes-native eBPF observability agent" \
      org.opencontainers.image.source="https://github.com/podsight/podsight" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libbpf1 iproute2 \
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
EXPOSE 9963
ENTRYPOINT ["podsight"]
CMD ["run"]
