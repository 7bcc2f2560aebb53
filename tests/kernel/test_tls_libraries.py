"""The tls probe's discovery without the kernel: a hand-made /proc and
cgroup tree (which processes are in pods, which library files they map),
and ELF symbol offsets checked against where the dynamic loader really put
the functions."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest

from podsight.kernel.elf import ElfError, function_offsets
from podsight.kernel.tls_libraries import Scanner

POD = "/kubepods/burstable/pod0b6f1e3a-2c3d-4e5f-8a9b-0c1d2e3f4a5b/c1"
SYSTEMD_POD = ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6f1e3a_2c3d_4e5f_8a9b_0c1d2e3f4a5c"
               ".slice/cri-containerd-abc.scope")
MAPS = """7f00-7f10 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10-7f20 r-xp 00010000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f20-7f30 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
"""


class FakeHost:
    def __init__(self, root: Path):
        self.proc, self.cgroup = root / "proc", root / "cgroup"
        self.proc.mkdir()
        self.cgroup.mkdir()

    def process(self, pid: int, cgroup: str, maps: str = "", start: int = 100) -> None:
        d = self.proc / str(pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_text(f"{pid} (some (odd) comm) S 1 " + " ".join(["0"] * 17) + f" {start} 0 0\n")
        (d / "cgroup").write_text(f"1:name=systemd:/x\n0::{cgroup}\n")
        (d / "maps").write_text(maps)
        (self.cgroup / cgroup.lstrip("/")).mkdir(parents=True, exist_ok=True)

    def scanner(self) -> Scanner:
        return Scanner(str(self.cgroup), str(self.proc))

    def cgroup_id(self, path: str) -> int:
        return os.stat(self.cgroup / path.lstrip("/")).st_ino


@pytest.fixture
def host(tmp_path):
    return FakeHost(tmp_path)


def test_pod_processes_and_their_library_files(host):
    host.process(10, POD, MAPS)
    host.process(11, POD)                                              # a pod process without TLS
    host.process(12, SYSTEMD_POD, MAPS.replace("08:01 1234", "00:2f 777").replace("/usr/lib", "/opt/lib"))
    host.process(13, "/system.slice/sshd.service", MAPS)               # a host process: not probed
    host.process(14, POD, "7f00-7f10 r-xp 00000000 08:01 55 /usr/lib/libssl3.so\n")  # NSS, not OpenSSL
    host.process(15, POD, "7f00-7f10 r-xp 00000000 08:01 56 /usr/lib/libssl.so.3 (deleted)\n")
    (host.proc / "self").mkdir()                                       # not a pid
    scan = host.scanner().scan()
    assert set(scan.files) == {("08:01", 1234), ("00:2f", 777)}
    assert scan.files[("08:01", 1234)].name == "libssl.so.3"
    assert scan.paths[("08:01", 1234)] == [f"{host.proc}/10/root/usr/lib/x86_64-linux-gnu/libssl.so.3"]
    assert scan.paths[("00:2f", 777)] == [f"{host.proc}/12/root/opt/lib/x86_64-linux-gnu/libssl.so.3"]
    pod = sorted(scan.cgroups[host.cgroup_id(POD)], key=len)
    assert pod == [frozenset()] * 3 + [frozenset({("08:01", 1234)})]
    assert scan.cgroups[host.cgroup_id(SYSTEMD_POD)] == [frozenset({("00:2f", 777)})]
    assert host.cgroup_id("/system.slice/sshd.service") not in scan.cgroups


def test_a_process_is_read_again_until_it_maps_a_library(host):
    """Python maps libssl on ``import ssl``, after exec: the next scan sees it."""
    host.process(10, POD)
    s = host.scanner()
    assert s.scan().files == {}
    (host.proc / "10" / "maps").write_text(MAPS)
    assert set(s.scan().files) == {("08:01", 1234)}
    # Found once, not read again: its maps may even become unreadable.
    (host.proc / "10" / "maps").unlink()
    assert set(s.scan().files) == {("08:01", 1234)}
    # Gone: its files go with it.
    for f in (host.proc / "10").iterdir():
        f.unlink()
    (host.proc / "10").rmdir()
    assert s.scan().files == {}


def test_a_reused_pid_is_a_new_process(host):
    host.process(10, POD, MAPS, start=100)
    s = host.scanner()
    assert s.scan().files
    host.process(10, POD, "", start=200)
    assert s.scan().files == {}


def test_paths_relative_to_the_agents_cgroup_namespace(host, monkeypatch):
    """In its own cgroup namespace the agent reads "/../../burstable/pod<uid>/c1":
    resolved against its own cgroup, found by the cgroup.procs holding its pid."""
    me = "/kubepods/besteffort/podffffffff-2c3d-4e5f-8a9b-0c1d2e3f4a5b/agent"
    (host.cgroup / me.lstrip("/")).mkdir(parents=True)
    (host.cgroup / me.lstrip("/") / "cgroup.procs").write_text(f"1\n{os.getpid()}\n")
    host.process(10, POD, MAPS)
    (host.proc / "10" / "cgroup").write_text("0::/../../../burstable/pod0b6f1e3a-2c3d-4e5f-8a9b-0c1d2e3f4a5b/c1\n")
    real_open = open

    def fake_open(path, *a, **kw):  # our own /proc/self/cgroup: the namespace's root
        return real_open(host.proc / "self-cgroup", *a, **kw) if path == "/proc/self/cgroup" else real_open(path, *a, **kw)

    (host.proc / "self-cgroup").write_text("0::/\n")
    monkeypatch.setattr("builtins.open", fake_open)
    scan = host.scanner().scan()
    assert list(scan.cgroups) == [host.cgroup_id(POD)]


def test_function_offsets_are_where_the_loader_put_them():
    path = ctypes.util.find_library("ssl")
    lib = ctypes.CDLL(path)
    maps = Path("/proc/self/maps").read_text().splitlines()
    names = {"SSL_do_handshake", "SSL_connect", "SSL_get_error", "SSL_free"}
    file = next(l.split()[-1] for l in maps if l.split()[-1].rsplit("/", 1)[-1] == path)
    got = function_offsets(file, names | {"no_such_function"})
    assert set(got) == names
    for name in names:
        addr = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        (line,) = [l.split() for l in maps if l.split()[-1] == file and
                   int(l.split()[0].split("-")[0], 16) <= addr < int(l.split()[0].split("-")[1], 16)]
        assert got[name] == addr - int(line[0].split("-")[0], 16) + int(line[2], 16), name


def test_not_an_elf_file(tmp_path):
    (tmp_path / "x").write_bytes(b"#!/bin/sh\n")
    with pytest.raises(ElfError):
        function_offsets(str(tmp_path / "x"), {"f"})


def test_processes_we_may_not_read_are_counted(host):
    """Without ptrace read access another user's maps are EACCES (root in
    the test reads any file, so the denial is made here)."""
    host.process(10, POD, MAPS)
    host.process(11, POD, MAPS)
    scanner = host.scanner()
    real = scanner._libraries

    def deny(base):
        if base.endswith("/11"):
            raise PermissionError(13, "Permission denied")
        return real(base)
    scanner._libraries = deny
    scan = scanner.scan()
    assert scan.denied == 1
    assert set(scan.files) == {("08:01", 1234)}


def test_a_process_that_moves_into_a_pod_is_seen(host):
    """A runtime forks, moves the child into the pod's cgroup and execs: a
    scan in between sees a host process with the same pid and start time."""
    host.process(10, "/system.slice/containerd.service", MAPS)
    s = host.scanner()
    assert s.scan().files == {}
    (host.cgroup / POD.lstrip("/")).mkdir(parents=True)
    (host.proc / "10" / "cgroup").write_text(f"0::{POD}\n")
    assert set(s.scan().files) == {("08:01", 1234)}
