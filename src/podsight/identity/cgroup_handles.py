"""cgroup v2 id → directory, straight from the kernel: on cgroup2 the id is
the directory's kernfs file handle, so ``open_by_handle_at`` opens it with no
walk of the tree (what ``bpftool cgroup`` and systemd do too).

Needs CAP_DAC_READ_SEARCH (root has it; the Helm chart leaves it out unless
asked, see deploy/README.md) and a kernel whose kernfs handles are the 64-bit
id (5.5+).  Anything else raises ``Unsupported`` once, and the caller walks.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

__all__ = ["Unsupported", "open_root", "path_of"]

FILEID_KERNFS = 0xFE  # include/linux/exportfs.h
_HANDLE = struct.Struct("<IiQ")  # struct file_handle: handle_bytes, handle_type, f_handle (the u64 id)

_libc = ctypes.CDLL(None, use_errno=True)
_open_by_handle_at = getattr(_libc, "open_by_handle_at", None)
if _open_by_handle_at is not None:
    _open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    _open_by_handle_at.restype = ctypes.c_int

# The handle names no cgroup (any more): an answer, not a failure.
_GONE = {errno.ESTALE, errno.ENOENT}


class Unsupported(OSError):
    """This kernel, libc or process cannot open cgroups by handle."""


def open_root(root: str) -> int:
    """An fd on the cgroup2 mount, to name which filesystem the handles are for."""
    if _open_by_handle_at is None:
        raise Unsupported(errno.ENOSYS, "libc has no open_by_handle_at")
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def path_of(root: str, root_fd: int, cgroup_id: int) -> str | None:
    """The directory of ``cgroup_id`` relative to ``root`` ("/" for the root
    itself), or None if no such cgroup exists or it is outside ``root``."""
    fd = _open_by_handle_at(root_fd, _HANDLE.pack(8, FILEID_KERNFS, cgroup_id), os.O_PATH | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        if err in _GONE:
            return None
        if err == errno.EPERM:
            raise Unsupported(err, "open_by_handle_at needs the DAC_READ_SEARCH capability")
        raise Unsupported(err, f"open_by_handle_at: {os.strerror(err)}")  # no kernfs id handles
    try:
        if os.fstat(fd).st_ino != cgroup_id:  # not the id scheme we assume
            raise Unsupported(errno.EINVAL, "kernfs handle is not the cgroup id on this kernel")
        path = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if path == root:
        return "/"
    if not path.startswith(root + "/") or path.endswith(" (deleted)"):
        return None
    return path[len(root):]
