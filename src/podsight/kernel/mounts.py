"""Where the kernel's pseudo file systems are, and mounting the missing ones.

cgroup v2 sits at /sys/fs/cgroup on a unified host and at
/sys/fs/cgroup/unified on a hybrid (v1 + v2) host: read /proc/self/mountinfo,
never assume.
"""
from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass

__all__ = ["MountError", "Mount", "mounts", "cgroup2_root", "ensure_mounted", "tracefs_root"]

log = logging.getLogger("podsight.mounts")

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class MountError(RuntimeError):
    pass


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    out = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            mountpoint = fields[4].replace("\\040", " ")
            out.append(Mount(mountpoint, right.split()[0]))
    return out


def cgroup2_root(configured: str = "", mountinfo: str = "/proc/self/mountinfo") -> str:
    """The cgroup v2 mount point to watch.

    ``configured`` (config ``cgroup_root``, e.g. the host's tree mounted into a
    pod at /host/sys/fs/cgroup) wins; on a hybrid host its ``unified``
    subdirectory is the v2 tree.  Otherwise the shortest cgroup2 mount.
    """
    found = sorted((m.mountpoint for m in mounts(mountinfo) if m.fstype == "cgroup2"), key=len)
    if configured:
        path = os.path.normpath(configured)
        for candidate in (path, os.path.join(path, "unified")):
            if candidate in found:
                return candidate
        raise MountError(
            f"cgroup_root {configured!r} is not a cgroup v2 mount (nor is its unified/ subdirectory); "
            f"cgroup2 is mounted at: {', '.join(found) or 'nowhere'}"
        )
    if not found:
        raise MountError(
            "no cgroup v2 (cgroup2) file system is mounted: podsight needs the unified "
            "hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified, or boot with "
            "systemd.unified_cgroup_hierarchy=1)"
        )
    return found[0]


# mount(2) flags, as systemd mounts tracefs: a pseudo file system needs no devices, setuid or exec.
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8


def _mount(source: str, target: str, fstype: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # mount(source, target, filesystemtype, mountflags, data): five arguments.
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.mount.restype = ctypes.c_int
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ensure_mounted(fstype: str, paths: tuple[str, ...]) -> str:
    """Return where ``fstype`` is mounted, mounting it at ``paths[0]`` if absent."""
    current = {m.mountpoint for m in mounts() if m.fstype == fstype}
    for p in paths:
        if p in current:
            return p
    target = paths[0]
    try:
        _mount("nodev" if fstype == "tracefs" else fstype, target, fstype)
    except OSError as e:
        raise MountError(
            f"{fstype} is not mounted (looked at {', '.join(paths)}) and mounting it at {target} "
            f"failed ({e.strerror}); mount it yourself (mount -t {fstype} nodev {target}) "
            f"or run with CAP_SYS_ADMIN"
        ) from None
    log.info("mounted %s at %s", fstype, target)
    return target


def tracefs_root() -> str:
    """tracefs, for tracepoint ids and formats (the tcp and security probes)."""
    try:
        return ensure_mounted("tracefs", TRACEFS_PATHS)
    except MountError as e:
        raise MountError(f"the tcp and security probes need tracefs: {e}") from None
