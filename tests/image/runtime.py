"""podman in the tests' dedicated storage (scripts/podman-test-env.sh): the
image build, containers that are always removed, scrapes inside a pod's
network namespace."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = os.environ.get("PODSIGHT_CONTAINERS_ROOT", "/var/lib/podsight-test/containers")
RUNROOT = os.environ.get("PODSIGHT_CONTAINERS_RUNROOT", "/run/podsight-test/containers")
PODMAN = ["podman", "--root", ROOT, "--runroot", RUNROOT, "--storage-driver", "overlay",
          "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def build_image() -> tuple[str, float]:
    """scripts/image.sh: (image name, seconds it took; a cached build is a lookup)."""
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "scripts" / "image.sh")], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/image.sh failed:\n{proc.stderr}")
    sys.stderr.write(proc.stderr)
    return proc.stdout.strip().splitlines()[-1], time.monotonic() - t0


class Container:
    """One ``podman run -d``; ``remove()`` (always called by the fixtures) takes it away."""

    def __init__(self, name: str, run_args: list[str]):
        self.name = name
        self.run_args = run_args

    def start(self) -> "Container":
        # podman's default ulimits (nofile/nproc 1048576/4194304) are more
        # than runc may set without CAP_SYS_RESOURCE: stay under ours.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
        podman("run", "-d", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}",
               *self.run_args)
        return self

    def inspect(self) -> dict:
        return json.loads(podman("inspect", "--type", "container", self.name).stdout)[0]

    @property
    def pid(self) -> int:
        return int(self.inspect()["State"]["Pid"])

    def logs(self) -> str:
        p = podman("logs", self.name, check=False)
        return p.stdout + p.stderr

    def in_netns(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A host command in the container's network namespace (its mount
        namespace stays the host's: the host's python and tools)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def get(self, port: int, path: str) -> tuple[int, str]:
        # The status on a line of its own, then the body as served.
        script = ("import sys, urllib.request, urllib.error\n"
                  "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); sys.stdout.write(r.read().decode())\n"
                  "except urllib.error.HTTPError as e:\n print(e.code); sys.stdout.write(e.read().decode())\n")
        p = self.in_netns(sys.executable, "-c", script, f"http://127.0.0.1:{port}{path}")
        if p.returncode != 0:
            raise ConnectionError(p.stderr.strip())
        status, _, body = p.stdout.partition("\n")
        return int(status), body

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def cleanup_leftovers(prefix: str) -> None:
    """Containers an interrupted earlier run left (same name prefix)."""
    names = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
    for n in names:
        if n.startswith(prefix):
            podman("rm", "-f", "-t", "0", n, check=False)


def bpf_link_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["id"] for link in json.loads(out or "[]")}


def cgroup_hierarchies() -> list[Path]:
    """Every cgroup mount (v1 controllers and the v2 unified one)."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(point))
    return out


def existing_cgroups(rel: str) -> set[Path]:
    return {h / rel for h in cgroup_hierarchies() if (h / rel).exists()}


def remove_cgroups(rels: list[str], keep: set[Path]) -> None:
    """rmdir each relative path (deepest first) in every hierarchy, except
    directories that existed before (``keep``). Empty ones only: a cgroup
    with a live process stays and is reported by the caller's checks."""
    for rel in sorted(rels, key=lambda r: -r.count("/")):
        for h in cgroup_hierarchies():
            d = h / rel
            if d in keep or not d.is_dir():
                continue
            for sub in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
            try:
                d.rmdir()
            except OSError:
                pass
