"""Open, configure, load and attach one BPF object; read its maps.

Every attachment is a bpf *link* owned by this process: when the process
dies, even by SIGKILL, the kernel closes the fds and detaches everything.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
from pathlib import Path
from typing import Iterator

from .libbpf import LibbpfError, check_int, check_ptr, lib

__all__ = ["BpfObject", "Map", "Link", "bpf_dir", "possible_cpus"]

log = logging.getLogger("podsight.loader")

_BATCH = 1024


def bpf_dir() -> Path:
    """Where the compiled objects are: $PODSIGHT_BPF_DIR, else build/bpf of the checkout."""
    env = os.environ.get("PODSIGHT_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "build" / "bpf"


_ncpus: int | None = None


def possible_cpus() -> int:
    global _ncpus
    if _ncpus is None:
        _ncpus = check_int("libbpf_num_possible_cpus", lib.libbpf_num_possible_cpus())
    return _ncpus


class Link:
    """A libbpf ``struct bpf_link`` (``ptr``), or a link fd made here (``fd``)."""

    def __init__(self, ptr: int | None, what: str, fd: int | None = None):
        self._ptr: int | None = ptr
        self._fd = fd
        self.what = what

    def destroy(self) -> None:
        if self._ptr:
            lib.bpf_link__destroy(self._ptr)
            self._ptr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48
_BPF_F_UPROBE_MULTI_RETURN = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _UprobeMultiAttr(ctypes.Structure):
    """union bpf_attr for BPF_LINK_CREATE of a uprobe_multi link (Linux 6.6):
    libbpf 1.1 predates it, so the call is made here."""

    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("path", ctypes.c_uint64), ("offsets", ctypes.c_uint64),
                ("ref_ctr_offsets", ctypes.c_uint64), ("cookies", ctypes.c_uint64), ("cnt", ctypes.c_uint32),
                ("multi_flags", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 84)]


class Map:
    """A loaded map.  Values of per-CPU maps come back summed over CPUs."""

    PERCPU_TYPES = {5, 6, 10}  # percpu_hash, percpu_array, lru_percpu_hash

    def __init__(self, ptr: int):
        self.name = lib.bpf_map__name(ptr).decode()
        self.fd = lib.bpf_map__fd(ptr)
        self.type = lib.bpf_map__type(ptr)
        self.key_size = lib.bpf_map__key_size(ptr)
        self.value_size = lib.bpf_map__value_size(ptr)
        self.max_entries = lib.bpf_map__max_entries(ptr)
        self.percpu = self.type in self.PERCPU_TYPES
        self._stride = (self.value_size + 7) & ~7
        self.ncpu = possible_cpus() if self.percpu else 1  # value slots per entry
        self._batch_ok = True
        self._buffers = None  # batch lookup buffers, made on first use and kept

    def _value_buf_size(self, n: int) -> int:
        return n * (self._stride * self.ncpu if self.percpu else self.value_size)

    def batches(self) -> Iterator[tuple[bytes | memoryview, bytes | memoryview, int]]:
        """(keys, values, n): raw buffers of ``n`` entries each, valid until
        the next batch is asked for (the buffers are reused: at a thousand
        pods they are half a megabyte, read every scrape).

        A per-CPU entry's value is ``ncpu`` slots of ``stride`` bytes, CPU by
        CPU.  Batch lookups where the kernel allows them, else one key at a time.
        """
        if self._batch_ok:
            try:
                yield from self._batches()
                return
            except LibbpfError as e:
                # EINVAL/ENOTSUPP(524): kernels or map types without batch ops.
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, 524):
                    raise
                log.info("map %s: batch lookup refused (%s); iterating keys", self.name, e)
                self._batch_ok = False
        yield from self._one_by_one()

    def _split(self, raw: bytes) -> list[bytes]:
        if not self.percpu:
            return [raw[: self.value_size]]
        s = self._stride
        return [raw[i * s : i * s + self.value_size] for i in range(self.ncpu)]

    def _batches(self) -> Iterator[tuple[memoryview, memoryview, int]]:
        if self._buffers is None:
            self._buffers = (ctypes.create_string_buffer(self.key_size * _BATCH),
                             ctypes.create_string_buffer(self._value_buf_size(_BATCH)))
        keys, vals = self._buffers
        kview, vview = memoryview(keys).cast("B"), memoryview(vals).cast("B")
        token_in = ctypes.create_string_buffer(max(self.key_size, 8))
        token_out = ctypes.create_string_buffer(max(self.key_size, 8))
        count = ctypes.c_uint32()
        first = True
        while True:
            count.value = _BATCH
            ret = lib.bpf_map_lookup_batch(
                self.fd, None if first else token_in, token_out, keys, vals, ctypes.byref(count), None
            )
            done = ret < 0 and -ret == errno.ENOENT
            if ret < 0 and not done:
                check_int("bpf_map_lookup_batch", ret, self.name)
            n = count.value
            if n:
                yield kview[: n * self.key_size], vview[: self._value_buf_size(n)], n
            if done:
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False

    def _one_by_one(self) -> Iterator[tuple[bytes, bytes, int]]:
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        val = ctypes.create_string_buffer(self._value_buf_size(1))
        ret = lib.bpf_map_get_next_key(self.fd, None, nxt)
        while ret == 0:
            ctypes.memmove(key, nxt, self.key_size)
            if lib.bpf_map_lookup_elem(self.fd, key, val) == 0:
                yield key.raw, val.raw, 1
            ret = lib.bpf_map_get_next_key(self.fd, key, nxt)

    def delete(self, key: bytes) -> bool:
        ret = lib.bpf_map_delete_elem(self.fd, key)
        if ret < 0 and -ret != errno.ENOENT:
            check_int("bpf_map_delete_elem", ret, self.name)
        return ret == 0

    def lookup(self, key: bytes) -> list[bytes] | None:
        val = ctypes.create_string_buffer(self._value_buf_size(1))
        if lib.bpf_map_lookup_elem(self.fd, key, val) != 0:
            return None
        return self._split(val.raw)

    def update(self, key: bytes, value: bytes) -> None:
        """Write one entry (only for small control maps the agent owns, e.g. pod_roots)."""
        check_int("bpf_map_update_elem", lib.bpf_map_update_elem(self.fd, key, value, 0), self.name)

    def keys(self) -> Iterator[bytes]:
        key = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        ret = lib.bpf_map_get_next_key(self.fd, None, nxt)
        while ret == 0:
            yield nxt.raw
            ctypes.memmove(key, nxt, self.key_size)
            ret = lib.bpf_map_get_next_key(self.fd, key, nxt)


class _TestRunOpts(ctypes.Structure):
    """The head of libbpf's struct bpf_test_run_opts: no packet, no context."""

    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32)]


class _UprobeOpts(ctypes.Structure):
    """libbpf's struct bpf_uprobe_opts up to func_name (libbpf >= 0.8); ``sz``
    tells libbpf how much of it we know."""

    _fields_ = [("sz", ctypes.c_size_t), ("ref_ctr_offset", ctypes.c_size_t), ("bpf_cookie", ctypes.c_uint64),
                ("retprobe", ctypes.c_bool), ("func_name", ctypes.c_char_p)]


class BpfObject:
    """One compiled ``.bpf.o``: open → (configure) → load → attach → close."""

    def __init__(self, name: str, directory: Path | None = None):
        self.name = name
        self.path = (directory or bpf_dir()) / f"{name}.bpf.o"
        if not self.path.exists():
            raise FileNotFoundError(
                f"{self.path}: BPF object not built; run `make setup` (or scripts/build-bpf.sh)"
            )
        self._obj: int | None = check_ptr(
            "bpf_object__open_file", lib.bpf_object__open_file(str(self.path).encode(), None), str(self.path)
        )
        self.links: list[Link] = []
        self.maps: dict[str, Map] = {}

    # -- before load -------------------------------------------------------
    def _programs(self) -> Iterator[tuple[str, int]]:
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            yield lib.bpf_program__name(prog).decode(), prog
            prog = lib.bpf_object__next_program(self._obj, prog)

    def _map_ptrs(self) -> Iterator[tuple[str, int]]:
        m = lib.bpf_object__next_map(self._obj, None)
        while m:
            yield lib.bpf_map__name(m).decode(), m
            m = lib.bpf_object__next_map(self._obj, m)

    def program_names(self) -> list[str]:
        return [n for n, _ in self._programs()]

    def sections(self) -> dict[str, str]:
        """program → ELF section (``tracepoint/tcp/tcp_retransmit_skb``, ``cgroup_skb/egress`` ...)."""
        return {n: lib.bpf_program__section_name(p).decode() for n, p in self._programs()}

    def map_specs(self) -> dict[str, tuple[int, int, int]]:
        """map → (type, key size, value size) as compiled."""
        return {n: (lib.bpf_map__type(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m))
                for n, m in self._map_ptrs()}

    def set_config(self, value: ctypes.Structure) -> None:
        """Set the object's ``const volatile`` config struct.

        The C side declares it alone in ``SEC(".rodata.config")`` so that the
        section is exactly the struct, whatever else the compiler puts in .rodata.
        """
        for name, ptr in self._map_ptrs():
            if name.endswith(".rodata.config"):
                size = lib.bpf_map__value_size(ptr)
                if size != ctypes.sizeof(value):
                    raise ValueError(
                        f"{self.path}: .rodata is {size} bytes but {type(value).__name__} is "
                        f"{ctypes.sizeof(value)}: bpf/podsight.h and layouts.py disagree"
                    )
                buf = ctypes.create_string_buffer(bytes(value), size)
                check_int("bpf_map__set_initial_value", lib.bpf_map__set_initial_value(ptr, buf, size))
                return
        raise ValueError(f"{self.path}: no .rodata.config section to configure")

    def set_max_entries(self, map_name: str, n: int) -> None:
        for name, ptr in self._map_ptrs():
            if name == map_name:
                check_int("bpf_map__set_max_entries", lib.bpf_map__set_max_entries(ptr, n), map_name)
                return
        raise KeyError(map_name)

    def _program(self, prog_name: str) -> int:
        for name, prog in self._programs():
            if name == prog_name:
                return prog
        raise KeyError(prog_name)

    def autoload(self, prog_name: str) -> bool:
        return bool(lib.bpf_program__autoload(self._program(prog_name)))

    def set_expected_attach_type(self, prog_name: str, attach_type: int) -> None:
        check_int("bpf_program__set_expected_attach_type",
                  lib.bpf_program__set_expected_attach_type(self._program(prog_name), attach_type), prog_name)

    def set_autoload(self, prog_name: str, on: bool) -> None:
        check_int("bpf_program__set_autoload", lib.bpf_program__set_autoload(self._program(prog_name), on))

    def load(self) -> None:
        check_int("bpf_object__load", lib.bpf_object__load(self._obj), str(self.path))
        for name, ptr in self._map_ptrs():
            if "." not in name:  # .rodata, .bss, .rodata.config: internal
                self.maps[name] = Map(ptr)

    # -- after load --------------------------------------------------------
    def run(self, prog_name: str) -> int:
        """Run a loaded program once, now, on this CPU (BPF_PROG_TEST_RUN; a
        ``raw_tp`` program with no context): for work the agent drives, such
        as the RTT sampler.  Returns the program's return value."""
        opts = _TestRunOpts(ctypes.sizeof(_TestRunOpts))
        fd = lib.bpf_program__fd(self._program(prog_name))
        check_int("bpf_prog_test_run_opts", lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts)), prog_name)
        return opts.retval

    def loaded_programs(self) -> dict[str, int]:
        """Program name → fd, for programs that were loaded."""
        return {n: lib.bpf_program__fd(p) for n, p in self._programs() if lib.bpf_program__fd(p) >= 0}

    def _keep(self, link: Link) -> Link:
        self.links.append(link)
        return link

    def attach(self, prog_name: str) -> Link:
        """Attach by section name (tracepoint/…, raw_tp/…, tp_btf/…)."""
        ptr = lib.bpf_program__attach(self._program(prog_name))
        return self._keep(Link(check_ptr("bpf_program__attach", ptr, prog_name), prog_name))

    def attach_cgroup(self, prog_name: str, cgroup_path: str) -> Link:
        prog = self._program(prog_name)
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ptr = lib.bpf_program__attach_cgroup(prog, fd)
        finally:
            os.close(fd)  # the link holds its own reference to the cgroup
        return self._keep(Link(check_ptr("bpf_program__attach_cgroup", ptr, f"{prog_name} on {cgroup_path}"), prog_name))

    def attach_uprobe(self, prog_name: str, path: str, function: str, *, retprobe: bool = False,
                      cookie: int = 0) -> Link:
        """Attach to ``function`` (a dynamic symbol libbpf resolves) in the ELF
        file at ``path``, for every process that maps it: a perf-event bpf
        link on the file's inode (the uprobe PMU; no tracefs needed).
        ``cookie`` is the program's bpf_get_attach_cookie()."""
        opts = _UprobeOpts(ctypes.sizeof(_UprobeOpts), 0, cookie, retprobe, function.encode())
        ptr = lib.bpf_program__attach_uprobe_opts(self._program(prog_name), -1, path.encode(), 0, ctypes.byref(opts))
        what = f"{prog_name} on {function}{' return' if retprobe else ''} in {path}"
        return self._keep(Link(check_ptr("bpf_program__attach_uprobe_opts", ptr, what), prog_name))

    def attach_uprobe_multi(self, prog_name: str, path: str, offsets: list[int], cookies: list[int], *,
                            retprobe: bool = False) -> Link:
        """One uprobe_multi link (Linux 6.6; the program loaded with expected
        attach type BPF_TRACE_UPROBE_MULTI): the program on each file offset
        of ``path``, every process, cookie by cookie.  Unlike a perf-event
        uprobe it needs no CAP_SYS_ADMIN."""
        n = len(offsets)
        cpath = ctypes.create_string_buffer(path.encode())
        offs, cooks = (ctypes.c_uint64 * n)(*offsets), (ctypes.c_uint64 * n)(*cookies)
        attr = _UprobeMultiAttr(prog_fd=lib.bpf_program__fd(self._program(prog_name)),
                                attach_type=BPF_TRACE_UPROBE_MULTI, path=ctypes.addressof(cpath),
                                offsets=ctypes.addressof(offs), cookies=ctypes.addressof(cooks), cnt=n,
                                multi_flags=_BPF_F_UPROBE_MULTI_RETURN if retprobe else 0)
        fd = _libc.syscall(_SYS_BPF[platform.machine()], _BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
        what = f"{prog_name} on {n} function(s){' return' if retprobe else ''} in {path}"
        if fd < 0:
            raise LibbpfError("BPF_LINK_CREATE uprobe_multi", ctypes.get_errno(), what)
        return self._keep(Link(None, prog_name, fd=fd))

    def detach(self, link: Link) -> None:
        """Destroy one link this object made (the others stay)."""
        link.destroy()
        self.links.remove(link)

    def close(self) -> None:
        for link in reversed(self.links):
            link.destroy()
        self.links.clear()
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None
        self.maps.clear()

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
