"""Symbolic names for the numbers syscalls carry: open flags, mode bits,
ptrace requests, address families and errno values.  Pure; no I/O.

Rules are written with these names and events print them, so both sides use
this one table.  Values are the Linux UAPI ones; the open flags that differ
between architectures (O_DIRECTORY, O_NOFOLLOW, O_DIRECT, O_LARGEFILE) are
picked for the machine the agent runs on, because the kernel hands us the raw
user-space argument.
"""
from __future__ import annotations

import errno
import platform
import socket
import stat

__all__ = [
    "ADDRESS_FAMILIES",
    "MODE_BITS",
    "OPEN_FLAGS",
    "PTRACE_REQUESTS",
    "errno_name",
    "family_name",
    "mode_string",
    "open_flag_names",
    "ptrace_request_name",
]

_ARM_LIKE = platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv6l", "arm")

# Access mode lives in the two low bits and is a value, not a set of flags.
O_ACCMODE = 0o3
_ACCESS_NAMES = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}

# Flag bits (octal, as in include/uapi/asm-generic/fcntl.h; arm overrides four).
OPEN_FLAGS: dict[str, int] = {
    "O_WRONLY": 0o1,
    "O_RDWR": 0o2,
    "O_CREAT": 0o100,
    "O_EXCL": 0o200,
    "O_NOCTTY": 0o400,
    "O_TRUNC": 0o1000,
    "O_APPEND": 0o2000,
    "O_NONBLOCK": 0o4000,
    "O_DSYNC": 0o10000,
    "O_ASYNC": 0o20000,
    "O_DIRECT": 0o200000 if _ARM_LIKE else 0o40000,
    "O_LARGEFILE": 0o400000 if _ARM_LIKE else 0o100000,
    "O_DIRECTORY": 0o40000 if _ARM_LIKE else 0o200000,
    "O_NOFOLLOW": 0o100000 if _ARM_LIKE else 0o400000,
    "O_NOATIME": 0o1000000,
    "O_CLOEXEC": 0o2000000,
    "O_SYNC": 0o4000000 | 0o10000,
    "O_PATH": 0o10000000,
    "O_TMPFILE": 0o20000000 | (0o40000 if _ARM_LIKE else 0o200000),
}

# Composite flags first so O_SYNC is not printed as O_DSYNC plus a stray bit.
_FLAG_ORDER = sorted(
    (n for n in OPEN_FLAGS if n not in ("O_WRONLY", "O_RDWR")),
    key=lambda n: (-bin(OPEN_FLAGS[n]).count("1"), OPEN_FLAGS[n]),
)

MODE_BITS: dict[str, int] = {
    "S_ISUID": stat.S_ISUID,
    "S_ISGID": stat.S_ISGID,
    "S_ISVTX": stat.S_ISVTX,
    "S_IRWXU": stat.S_IRWXU,
    "S_IRUSR": stat.S_IRUSR,
    "S_IWUSR": stat.S_IWUSR,
    "S_IXUSR": stat.S_IXUSR,
    "S_IRWXG": stat.S_IRWXG,
    "S_IRGRP": stat.S_IRGRP,
    "S_IWGRP": stat.S_IWGRP,
    "S_IXGRP": stat.S_IXGRP,
    "S_IRWXO": stat.S_IRWXO,
    "S_IROTH": stat.S_IROTH,
    "S_IWOTH": stat.S_IWOTH,
    "S_IXOTH": stat.S_IXOTH,
}

# include/uapi/linux/ptrace.h plus the x86 arch requests (12-33).
PTRACE_REQUESTS: dict[str, int] = {
    "PTRACE_TRACEME": 0,
    "PTRACE_PEEKTEXT": 1,
    "PTRACE_PEEKDATA": 2,
    "PTRACE_PEEKUSER": 3,
    "PTRACE_POKETEXT": 4,
    "PTRACE_POKEDATA": 5,
    "PTRACE_POKEUSER": 6,
    "PTRACE_CONT": 7,
    "PTRACE_KILL": 8,
    "PTRACE_SINGLESTEP": 9,
    "PTRACE_GETREGS": 12,
    "PTRACE_SETREGS": 13,
    "PTRACE_GETFPREGS": 14,
    "PTRACE_SETFPREGS": 15,
    "PTRACE_ATTACH": 16,
    "PTRACE_DETACH": 17,
    "PTRACE_GETFPXREGS": 18,
    "PTRACE_SETFPXREGS": 19,
    "PTRACE_SYSCALL": 24,
    "PTRACE_GET_THREAD_AREA": 25,
    "PTRACE_SET_THREAD_AREA": 26,
    "PTRACE_ARCH_PRCTL": 30,
    "PTRACE_SYSEMU": 31,
    "PTRACE_SYSEMU_SINGLESTEP": 32,
    "PTRACE_SINGLEBLOCK": 33,
    "PTRACE_SETOPTIONS": 0x4200,
    "PTRACE_GETEVENTMSG": 0x4201,
    "PTRACE_GETSIGINFO": 0x4202,
    "PTRACE_SETSIGINFO": 0x4203,
    "PTRACE_GETREGSET": 0x4204,
    "PTRACE_SETREGSET": 0x4205,
    "PTRACE_SEIZE": 0x4206,
    "PTRACE_INTERRUPT": 0x4207,
    "PTRACE_LISTEN": 0x4208,
    "PTRACE_PEEKSIGINFO": 0x4209,
    "PTRACE_GETSIGMASK": 0x420A,
    "PTRACE_SETSIGMASK": 0x420B,
    "PTRACE_SECCOMP_GET_FILTER": 0x420C,
    "PTRACE_SECCOMP_GET_METADATA": 0x420D,
    "PTRACE_GET_SYSCALL_INFO": 0x420E,
    "PTRACE_GET_RSEQ_CONFIGURATION": 0x420F,
    "PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG": 0x4210,
    "PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG": 0x4211,
}
_PTRACE_BY_VALUE = {v: k for k, v in PTRACE_REQUESTS.items()}

ADDRESS_FAMILIES: dict[str, int] = {
    "AF_UNSPEC": socket.AF_UNSPEC,
    "AF_UNIX": socket.AF_UNIX,
    "AF_INET": socket.AF_INET,
    "AF_INET6": socket.AF_INET6,
    "AF_NETLINK": getattr(socket, "AF_NETLINK", 16),
    "AF_PACKET": getattr(socket, "AF_PACKET", 17),
    "AF_VSOCK": getattr(socket, "AF_VSOCK", 40),
}
_FAMILY_BY_VALUE = {v: k for k, v in ADDRESS_FAMILIES.items()}


def open_flag_names(flags: int) -> list[str]:
    """``O_WRONLY|O_CREAT|O_TRUNC`` as a list; leftover bits as one hex string."""
    names = [_ACCESS_NAMES.get(flags & O_ACCMODE, "O_ACCMODE")]
    rest = flags & ~O_ACCMODE
    for name in _FLAG_ORDER:
        bits = OPEN_FLAGS[name]
        if rest & bits == bits:
            names.append(name)
            rest &= ~bits
    if rest:
        names.append(hex(rest))
    return names


def mode_string(mode: int) -> str:
    """Permission and special bits as a 4-digit octal string, e.g. ``"4755"``."""
    return format(mode & 0o7777, "04o")


def ptrace_request_name(request: int) -> str:
    return _PTRACE_BY_VALUE.get(request, str(request))


def family_name(family: int) -> str:
    return _FAMILY_BY_VALUE.get(family, str(family))


def errno_name(ret: int) -> str:
    """``-13`` → ``"EACCES"``; empty for a non-negative return value."""
    if ret >= 0:
        return ""
    return errno.errorcode.get(-ret, f"E{-ret}")
