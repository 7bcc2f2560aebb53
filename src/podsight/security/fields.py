"""The fields rule conditions can test, and how to read them from an event.
Pure; no I/O.

A condition names a field (``process.name``, ``path``, ``dst.ip`` ...); each
field has a type that decides which operators apply and the event kinds it
exists for, so ``dst.ip`` in an exec rule is a load-time error instead of a
rule that silently never fires.
"""
from __future__ import annotations

import ipaddress
import posixpath
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

from .model import EVENT_KINDS, RawEvent

__all__ = ["FIELDS", "INTERPRETERS", "Field", "EventView", "normalize_path", "parse_ip", "script_of"]


def normalize_path(path: str, cwd: str = "") -> str:
    """Absolute, lexically clean path: ``/./etc//shadow`` → ``/etc/shadow``.

    Without this a rule on ``/etc/shadow`` is dodged by spelling the path
    differently.  Symlinks cannot be resolved here (the file may be gone);
    see docs/security.md.  A relative path with no known cwd stays relative.
    """
    if not path:
        return ""
    if path[0] != "/":
        if not cwd:
            return path
        path = cwd.rstrip("/") + "/" + path
    if "//" in path or "/." in path:
        path = posixpath.normpath(path)
        if path.startswith("//"):  # POSIX keeps exactly two leading slashes
            path = "/" + path.lstrip("/")
    return path


@lru_cache(maxsize=4096)
def parse_ip(text: str) -> tuple[int, int] | None:
    """``"10.0.0.1"`` → (4, int); IPv4-mapped IPv6 counts as IPv4; else None."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version, int(addr)


class EventView:
    """One event plus its identity and the values derived from them once."""

    __slots__ = ("ev", "idn", "path")

    def __init__(self, ev: RawEvent, idn: Mapping[str, object]):
        self.ev = ev
        self.idn = idn
        self.path = normalize_path(ev.path, ev.cwd)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str  # str | int | bool | flags | mode | ptrace_request | family | ip
    kinds: frozenset[str]
    get: Callable[[EventView], object]
    doc: str


_ALL = frozenset(EVENT_KINDS)


def _ident(key: str) -> Callable[[EventView], object]:
    return lambda v: v.idn.get(key) or ""


def _dst_ip(v: EventView) -> tuple[int, int] | None:
    # Only IP families have an IP destination; kernel_filter relies on this.
    return parse_ip(v.ev.dst_ip) if v.ev.family in (socket.AF_INET, socket.AF_INET6) else None


def _open_read(v: EventView) -> bool:
    return v.ev.flags & 0o3 in (0, 2) and not v.ev.flags & 0o10000000  # O_PATH reads nothing


def _open_write(v: EventView) -> bool:
    # O_CREAT/O_TRUNC change the file system even with O_RDONLY.
    return bool(v.ev.flags & (0o1 | 0o2 | 0o100 | 0o1000))


# Programs that run a file named by their first operand.  Options after which
# they run code from an argument instead: for shells -c (also in a cluster:
# bash -xc); for the others also -e (perl, ruby, node; perl -ne), python -m,
# php -r and node --eval.
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox"})
INTERPRETERS = _SHELLS | frozenset({"python", "python2", "python3", "perl", "ruby", "node", "php", "lua"}) | frozenset(
    f"python3.{n}" for n in range(6, 16))
_INLINE_EXACT = frozenset({"-m", "-r", "--eval"})


def _inline(arg: str, shell: bool) -> bool:
    if arg[:1] != "-" or arg[:2] == "--":
        return arg in _INLINE_EXACT
    return "c" in arg or (not shell and ("e" in arg or arg in _INLINE_EXACT))


def script_of(comm: str, args: list[str], cwd: str) -> str:
    """The file an interpreter (by its comm) was given, made absolute with
    ``cwd``, so ``cd /tmp/x && bash run.sh`` names /tmp/x/run.sh; "" for
    inline code and for other programs (whose first operand is no script)."""
    if comm not in INTERPRETERS:
        return ""
    shell = comm in _SHELLS
    for arg in args[1:]:
        if _inline(arg, shell):
            return ""
        if arg[:1] != "-":
            return normalize_path(arg, cwd)
    return ""


_SPECS: list[tuple[str, str, frozenset[str], Callable[[EventView], object], str]] = [
    ("process.name", "str", _ALL, lambda v: v.ev.comm, "task comm (at most 15 characters)"),
    ("process.exe", "str", _ALL, lambda v: v.ev.exe, "executable path"),
    ("process.args", "str", _ALL, lambda v: " ".join(v.ev.args[1:]), "arguments after argv[0], space-joined"),
    ("process.cmdline", "str", _ALL, lambda v: " ".join(v.ev.args), "argv including argv[0], space-joined"),
    ("process.cwd", "str", _ALL, lambda v: v.ev.cwd, "working directory (exec and relative paths)"),
    ("process.script", "str", frozenset({"exec"}), lambda v: script_of(v.ev.comm, v.ev.args, v.ev.cwd),
     "the script an interpreter (sh, bash, python3, perl, ...) runs: its first operand, made absolute with cwd"),
    ("process.pid", "int", _ALL, lambda v: v.ev.pid, "process id"),
    ("process.uid", "int", _ALL, lambda v: v.ev.uid, "real user id"),
    ("process.gid", "int", _ALL, lambda v: v.ev.gid, "real group id"),
    ("parent.name", "str", _ALL, lambda v: v.ev.parent_comm, "parent's comm"),
    ("parent.pid", "int", _ALL, lambda v: v.ev.ppid, "parent's process id"),
    ("path", "str", frozenset({"exec", "open", "chmod"}), lambda v: v.path,
     "file name argument, made absolute and lexically normalized"),
    ("open.flags", "flags", frozenset({"open"}), lambda v: v.ev.flags, "open flags"),
    ("open.read", "bool", frozenset({"open"}), _open_read, "opened for reading"),
    ("open.write", "bool", frozenset({"open"}), _open_write,
     "opened for writing, or with O_CREAT/O_TRUNC"),
    ("mode", "mode", frozenset({"chmod", "open"}), lambda v: v.ev.mode, "chmod mode / creation mode"),
    ("ptrace.request", "ptrace_request", frozenset({"ptrace"}), lambda v: v.ev.ptrace_request,
     "ptrace request"),
    ("ptrace.target_pid", "int", frozenset({"ptrace"}), lambda v: v.ev.target_pid, "traced pid"),
    ("dst.ip", "ip", frozenset({"connect"}), _dst_ip, "destination address (AF_INET/AF_INET6 only)"),
    ("dst.port", "int", frozenset({"connect"}), lambda v: v.ev.dst_port, "destination port"),
    ("dst.family", "family", frozenset({"connect"}), lambda v: v.ev.family, "address family"),
    ("ret", "int", _ALL, lambda v: v.ev.ret, "syscall return value"),
    ("success", "bool", _ALL, lambda v: v.ev.ret >= 0, "return value is not an error"),
    ("node", "str", _ALL, _ident("node"), "node name"),
    ("namespace", "str", _ALL, _ident("namespace"), "pod namespace"),
    ("pod", "str", _ALL, _ident("pod"), "pod name"),
    ("container", "str", _ALL, _ident("container"), "container name"),
    ("image", "str", _ALL, _ident("image"), "container image"),
    ("workload", "str", _ALL, _ident("workload"), "owning workload name"),
    ("pod_uid", "str", _ALL, _ident("pod_uid"), "pod UID"),
    ("container_id", "str", _ALL, _ident("container_id"), "container id"),
    ("in_pod", "bool", _ALL, lambda v: bool(v.idn.get("in_pod")), "process runs in a pod's cgroup"),
]

FIELDS: dict[str, Field] = {name: Field(name, tp, kinds, get, doc) for name, tp, kinds, get, doc in _SPECS}
