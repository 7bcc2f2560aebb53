"""Which TLS library files the processes of pods map, found in /proc.

A uprobe is attached to a file (its inode), not to a process: one attach per
distinct file covers every process that maps it, now or later.  Containers
carry their own copy of the library, so each copy is a file of its own.  The
scan keeps, per process (pid and start time), what it found: a process
already known to map a library is not read again, one that maps none is
read again each scan (Python, for one, loads libssl only when ``ssl`` is
imported, well after exec; a process may also move into a pod's cgroup).

Reading another process's maps and root needs ptrace read access
(``CAP_SYS_PTRACE`` for processes of other users or with capabilities the
agent lacks); nothing here attaches with ptrace.  In a container with its
own cgroup namespace, /proc/<pid>/cgroup is relative to the agent's own
cgroup ("/../../burstable/pod<uid>/<id>"); the agent's cgroup is found in
the host's cgroup tree once, by the cgroup.procs that holds its own pid.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

__all__ = ["LibraryFile", "Scan", "Scanner", "TLS_LIBRARY"]

# OpenSSL 1.1 and 3 (libssl.so.1.1, libssl.so.3); not NSS's libssl3.so.
TLS_LIBRARY = re.compile(r"^libssl\.so(\.[0-9]+)*$")
# A pod's cgroup, below the kubelet's kubepods (cgroupfs or systemd
# driver): what is left of a path relative to the agent's own pod.
_POD_SEGMENT = re.compile(r"^(kubepods\b.*|pod[0-9a-f_-]{36}|.*-pod[0-9a-f_]{36}\.slice)$")


@dataclass(frozen=True)
class LibraryFile:
    dev: str        # major:minor as /proc/<pid>/maps shows it
    inode: int
    name: str       # file name, e.g. libssl.so.3

    @property
    def key(self) -> tuple[str, int]:
        return self.dev, self.inode


@dataclass
class Scan:
    """One pass over /proc: each library file with the paths that reach it
    (through the root of each process mapping it, so a container's copy is
    reachable from the host); per pod cgroup, the library files of each of
    its processes."""

    files: dict[tuple[str, int], LibraryFile] = field(default_factory=dict)
    paths: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    cgroups: dict[int, list[frozenset]] = field(default_factory=dict)   # cgroup id → per process, its files' keys
    denied: int = 0   # pod processes whose maps we may not read (no ptrace read access)


@dataclass
class _Process:
    start: str
    cgroup: str                              # cgroup v2 path, "" outside pods
    libraries: dict[LibraryFile, str]        # file → its path in the process's mount namespace


class Scanner:
    def __init__(self, cgroup_root: str, proc: str = "/proc"):
        self.cgroup_root, self.proc = cgroup_root, proc
        self._known: dict[int, _Process] = {}
        self._ns_root: str | None = None   # our cgroup namespace's root, as a host path

    def scan(self) -> Scan:
        out, known, ids = Scan(), {}, {}
        for name in os.listdir(self.proc):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                p = self._process(pid)
            except PermissionError:
                out.denied += 1
                continue
            if p is None or not p.cgroup:
                if p is not None:
                    known[pid] = p
                continue
            known[pid] = p
            cid = ids.get(p.cgroup)
            if cid is None:
                cid = ids[p.cgroup] = self._cgroup_id(p.cgroup)
            if cid is None:
                continue
            out.cgroups.setdefault(cid, []).append(frozenset(lib.key for lib in p.libraries))
            for lib, path in p.libraries.items():
                out.files[lib.key] = lib
                out.paths.setdefault(lib.key, []).append(f"{self.proc}/{pid}/root{path}")
        self._known = known
        return out

    def _process(self, pid: int) -> _Process | None:
        base = f"{self.proc}/{pid}"
        try:
            with open(f"{base}/stat", "rb") as f:
                # Field 22, counted after the parenthesised comm (which may hold spaces).
                start = f.read().rsplit(b")", 1)[1].split()[19].decode()
            old = self._known.get(pid)
            if old is not None and old.start == start and old.libraries:
                return old
            # The cgroup is read again too: a runtime forks, moves the child
            # into the pod's cgroup, then execs (same pid and start time).
            cgroup = self._pod_cgroup(base)
            return _Process(start, cgroup, self._libraries(base) if cgroup else {})
        except PermissionError:
            raise
        except (OSError, IndexError):
            return None  # gone while we looked, or a kernel thread without maps

    @staticmethod
    def _pod_cgroup(base: str) -> str:
        with open(f"{base}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = line[3:].strip()
                    return path if any(_POD_SEGMENT.match(s) for s in path.split("/")) else ""
        return ""

    @staticmethod
    def _libraries(base: str) -> dict[LibraryFile, str]:
        found: dict[LibraryFile, str] = {}
        with open(f"{base}/maps") as f:
            for line in f:
                if "libssl" not in line:
                    continue
                parts = line.split(None, 5)
                if len(parts) < 6 or parts[5].endswith("(deleted)\n"):
                    continue  # replaced on disk: its old inode cannot be opened by path
                path = parts[5].rstrip("\n")
                name = path.rsplit("/", 1)[-1]
                if TLS_LIBRARY.match(name):
                    found.setdefault(LibraryFile(parts[3], int(parts[4]), name), path)
        return found

    def _cgroup_id(self, path: str) -> int | None:
        if path.startswith("/.."):
            if self._ns_root is None:
                self._ns_root = self._find_ns_root()
            path = os.path.normpath(self._ns_root + path)
        try:
            return os.stat(self.cgroup_root + path).st_ino
        except OSError:
            return None

    def _find_ns_root(self) -> str:
        """Host path of our cgroup namespace's root: the directory whose
        cgroup.procs lists our pid, less our path inside the namespace."""
        with open("/proc/self/cgroup") as f:
            own = next((l[3:].strip() for l in f if l.startswith("0::")), "/")
        me = str(os.getpid())
        for top, _dirs, files in os.walk(self.cgroup_root):
            if "cgroup.procs" in files:
                try:
                    with open(os.path.join(top, "cgroup.procs")) as f:
                        if me in f.read().split():
                            host = "/" + os.path.relpath(top, self.cgroup_root).lstrip(".")
                            return os.path.normpath(host[: len(host) - len(own)] if own != "/" else host)
                except OSError:
                    continue
        return "/"
