"""ctypes bindings for the few libbpf.so.1 calls podsight uses.

libbpf >= 1.0 returns NULL / a negative errno and sets errno; every wrapper
here turns that into ``LibbpfError`` carrying the errno and the call's name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_void_p,
)

__all__ = ["LibbpfError", "lib", "check_ptr", "check_int", "errno_name"]

log = logging.getLogger("podsight.libbpf")


class LibbpfError(OSError):
    def __init__(self, call: str, err: int, detail: str = ""):
        self.call = call
        msg = f"{call}: {errno_name(err)} ({os.strerror(err)})"
        super().__init__(err, msg + (f": {detail}" if detail else ""))


def errno_name(err: int) -> str:
    return errno_mod.errorcode.get(err, str(err))


def _load() -> ctypes.CDLL:
    name = os.environ.get("PODSIGHT_LIBBPF") or "libbpf.so.1"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("bpf")
        if not found:
            raise OSError(
                "libbpf.so.1 not found: install the libbpf1 package "
                "(apt-get install libbpf1) or set PODSIGHT_LIBBPF"
            ) from None
        return ctypes.CDLL(found, use_errno=True)


PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__set_expected_attach_type": (c_int, [c_void_p, c_int]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    "bpf_program__attach_uprobe_opts": (c_void_p, [c_void_p, c_int, c_char_p, c_size_t, c_void_p]),
    "bpf_prog_test_run_opts": (c_int, [c_int, c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p],
    ),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_helper": (c_int, [c_int, c_int, c_void_p]),
    "bpf_enable_stats": (c_int, [c_int]),
    "libbpf_find_vmlinux_btf_id": (c_int, [c_char_p, c_int]),
    "bpf_prog_load": (c_int, [c_int, c_char_p, c_char_p, c_void_p, c_size_t, c_void_p]),
    "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
}


_LOG_BUF = 1 << 20  # bytes of one libbpf message kept
_LOG_LINES = 40  # lines of it logged: the first and the last ones


class _Lib:
    def __init__(self) -> None:
        self._dll: ctypes.CDLL | None = None
        self._printer = None

    def __getattr__(self, name: str):
        if self._dll is None:
            self._dll = _load()
            for fn, (res, args) in _SIGNATURES.items():
                f = getattr(self._dll, fn)
                f.restype = res
                f.argtypes = args
            self._route_log()
        return getattr(self._dll, name)

    def _route_log(self) -> None:
        """Send libbpf's own messages to Python logging instead of stderr."""
        libc = ctypes.CDLL(None)
        libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        levels = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}

        def printer(level: int, fmt: bytes, args: int) -> int:
            py_level = levels.get(level, logging.DEBUG)
            if not log.isEnabledFor(py_level):
                return 0
            # A verifier log comes as one message, and its verdict is at the end.
            buf = ctypes.create_string_buffer(_LOG_BUF)
            libc.vsnprintf(buf, len(buf), fmt, args)
            text = buf.value.decode(errors="replace").rstrip()
            lines = text.splitlines()
            if len(lines) > _LOG_LINES:
                skipped = len(lines) - _LOG_LINES
                text = "\n".join([lines[0], f"... ({skipped} lines of the verifier's walk left out)",
                                   *lines[-(_LOG_LINES - 1):]])
            log.log(py_level, "%s", text)
            return 0

        self._printer = PRINT_FN(printer)  # keep a reference: libbpf holds the pointer
        self._dll.libbpf_set_print(self._printer)


lib = _Lib()


def check_ptr(call: str, ptr: int | None, detail: str = "") -> int:
    if not ptr:
        raise LibbpfError(call, ctypes.get_errno() or errno_mod.EINVAL, detail)
    return ptr


def check_int(call: str, ret: int, detail: str = "") -> int:
    if ret < 0:
        raise LibbpfError(call, -ret, detail)
    return ret


# enum bpf_prog_type / bpf_map_type values used by the feature checks (uapi, stable).
PROG_TYPES = {
    "cgroup_skb": 8,
    "tracepoint": 5,
    "tracing": 26,  # fentry/tp_btf
    "kprobe": 2,
}
MAP_TYPES = {"percpu_hash": 5, "hash": 1, "ringbuf": 27, "percpu_array": 6}
BPF_STATS_RUN_TIME = 0
