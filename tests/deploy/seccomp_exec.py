"""Run a command under a seccomp profile in the container runtimes' JSON format.

    seccomp_exec.py PROFILE.json -- COMMAND [ARG...]

What runc/crun do with a pod's ``seccompProfile`` (RuntimeDefault or
Localhost), done here with libseccomp through ctypes so that the tests can
run the agent's kind of bpf()/perf_event_open() calls, or the agent itself,
under a profile without a container runtime:

* ``defaultAction`` / ``defaultErrnoRet``; the native architecture and the
  sub-architectures ``archMap`` gives it;
* each rule's ``includes`` / ``excludes`` (``caps``, ``arches``,
  ``minKernel``) judged against this process's bounding set (the runtime
  judges the container's, which `setpriv --bounding-set` reproduces),
  the machine and the running kernel;
* ``args`` as runc combines them: one rule when every index differs, else
  one rule per argument;
* syscall names libseccomp does not know, and rules whose action is the
  default one, are skipped, as runc does.

The filter is loaded with no_new_privs (so no CAP_SYS_ADMIN is needed), then
COMMAND is exec'd: ambient capabilities survive, as in a container.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import sys
from pathlib import Path

ACT_ALLOW = 0x7FFF0000
ACT_LOG = 0x7FFC0000
ACT_KILL_THREAD = 0x00000000
ACT_KILL_PROCESS = 0x80000000


def act_errno(n: int) -> int:
    return 0x00050000 | (n & 0xFFFF)


OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
       "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# platform.machine() → (libseccomp arch name, the Go/OCI name profiles use in includes.arches)
MACHINES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("aarch64", "arm64")}
CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
        "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
        "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
        "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
        "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
        "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
        "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
        "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37,
        "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def bounding_caps() -> set[str]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return {name for name, bit in CAPS.items() if mask >> bit & 1}
    raise SystemExit("seccomp_exec: no CapBnd in /proc/self/status")


def kernel_at_least(version: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        out = []
        for p in v.split("."):
            digits = "".join(c for c in p if c.isdigit())
            if not digits:
                break
            out.append(int(digits))
        return tuple(out)

    return parts(platform.release().split("-")[0]) >= parts(version)


def applies(rule: dict, caps: set[str], arch: str) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and not kernel_at_least(inc["minKernel"]):
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    return True


def action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ALLOW":
        return ACT_ALLOW
    if name == "SCMP_ACT_ERRNO":
        return act_errno(errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_LOG":
        return ACT_LOG
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return ACT_KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return ACT_KILL_PROCESS
    raise SystemExit(f"seccomp_exec: action {name} is not supported here")


def load(profile: dict) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    native, arch = MACHINES[platform.machine()]
    caps = bounding_caps()
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SystemExit("seccomp_exec: seccomp_init failed")
    for entry in profile.get("archMap") or []:
        if entry["architecture"].removeprefix("SCMP_ARCH_").lower() == native:
            for sub in entry.get("subArchitectures") or []:
                token = lib.seccomp_arch_resolve_name(sub.removeprefix("SCMP_ARCH_").lower().encode())
                rc = lib.seccomp_arch_add(ctx, token)
                if rc < 0 and rc != -errno.EEXIST:
                    raise SystemExit(f"seccomp_exec: seccomp_arch_add({sub}): {os.strerror(-rc)}")

    seen = set()
    for rule in profile.get("syscalls") or []:
        if not applies(rule, caps, arch):
            continue
        act = action(rule["action"], rule.get("errnoRet"))
        if act == default:
            continue  # libseccomp refuses a rule that repeats the default action; runc skips it too
        args = rule.get("args") or []
        cmps = [ArgCmp(a["index"], OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0)) for a in args]
        if len({a["index"] for a in args}) == len(args):
            groups = [cmps]
        else:
            groups = [[c] for c in cmps]
        for name in rule["names"]:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr == -1:  # __NR_SCMP_ERROR: not a syscall libseccomp knows
                continue
            for group in groups:
                key = (nr, act, tuple((c.arg, c.op, c.datum_a, c.datum_b) for c in group))
                if key in seen:
                    continue
                seen.add(key)
                arr = (ArgCmp * len(group))(*group) if group else None
                rc = lib.seccomp_rule_add_array(ctx, act, nr, len(group), arr)
                if rc < 0:
                    raise SystemExit(f"seccomp_exec: rule for {name}: {os.strerror(-rc)}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise SystemExit(f"seccomp_exec: seccomp_load: {os.strerror(-rc)}")


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        raise SystemExit(__doc__)
    load(json.loads(Path(argv[1]).read_text()))
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    main(sys.argv)
