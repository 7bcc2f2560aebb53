#!/usr/bin/env bash
# Compile the CO-RE objects: build/vmlinux.h from the running kernel's BTF,
# then bpf/*.bpf.c -> build/bpf/*.bpf.o.  Used by the Makefile and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BUILD_DIR:-build}
btf=${PODSIGHT_BTF:-/sys/kernel/btf/vmlinux}
mkdir -p "$out/bpf"
if [ ! -s "$out/vmlinux.h" ] || [ "$btf" -nt "$out/vmlinux.h" ]; then
  [ -r "$btf" ] || { echo "build-bpf: no kernel BTF at $btf (CONFIG_DEBUG_INFO_BTF=y is required)" >&2; exit 1; }
  bpftool btf dump file "$btf" format c > "$out/vmlinux.h.tmp"
  mv "$out/vmlinux.h.tmp" "$out/vmlinux.h"
fi
arch=$(uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
for src in bpf/*.bpf.c; do
  obj="$out/bpf/$(basename "${src%.c}").o"
  if [ "$obj" -nt "$src" ] && [ "$obj" -nt bpf/podsight.h ] && [ "$obj" -nt bpf/maps.bpf.h ] && [ "$obj" -nt "$out/vmlinux.h" ]; then
    continue
  fi
  echo "build-bpf: $src -> $obj"
  clang -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_"$arch" \
    -I"$out" -Ibpf -c "$src" -o "$obj.tmp"
  llvm-strip -g "$obj.tmp" 2>/dev/null || true
  mv "$obj.tmp" "$obj"
done
