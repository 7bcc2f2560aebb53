"""The security pipeline's sink: batched JSON lines, counters that move with them,
identities and exe paths reused only briefly.  Pure: a fake /proc and clock."""
from __future__ import annotations

import io
import json
import os

import pytest

from podsight.agent.security import EventSink
from podsight.exporters.event_output import EventOutput
from podsight.identity.processes import ProcessInfo
from podsight.security import DEFAULT_RULES_PATH, RawEvent, load_rules
from tests.support.clock import Clock

RULES = load_rules([DEFAULT_RULES_PATH])
POD = {"node": "n", "namespace": "shop", "pod": "web-0", "container": "app", "image": "", "workload": "",
       "workload_kind": "", "pod_uid": "u-1", "container_id": "c-1", "host_cgroup": "", "in_pod": True}


@pytest.fixture
def proc(tmp_path):
    """A fake /proc: ``make(pid, exe, cwd)`` (re)points the links."""
    def make(pid, exe="", cwd=""):
        d = tmp_path / str(pid)
        d.mkdir(exist_ok=True)
        for name, target in (("exe", exe), ("cwd", cwd)):
            link = d / name
            if link.is_symlink():
                link.unlink()
            if target:
                os.symlink(target, link)
    make.root = str(tmp_path)
    return make


def shadow(pid=7, comm="cat", path="/etc/shadow"):
    return RawEvent("open", ts_ns=1_764_136_536_000_000_001, cgroup_id=42, pid=pid, tid=pid, comm=comm,
                    path=path, flags=0o2000000, ret=3)


def sink_with(proc_root, identity_of=None, clock=None):
    out = io.StringIO()
    clock = clock or Clock()
    sink = EventSink(RULES, identity_of or (lambda cid: dict(POD)), ProcessInfo(proc_root, clock=clock),
                     EventOutput([out]), clock=clock)
    return sink, out


def test_lines_wait_for_flush_and_counts_move_with_them(proc):
    proc(7, exe="/usr/bin/cat")
    sink, out = sink_with(proc.root)
    for _ in range(3):
        sink.handle(shadow())
    assert out.getvalue() == "" and sink.counts() == {}
    sink.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and out.getvalue().endswith("\n")
    assert all(json.loads(line)["process"]["exe"] == "/usr/bin/cat" for line in lines)
    assert sink.counts() == {("sensitive_file_read", "warning", "shop"): 3}
    sink.flush()  # nothing waiting: nothing written
    assert len(out.getvalue().splitlines()) == 3


def test_a_full_batch_is_written_without_waiting_for_the_poll(proc):
    sink, out = sink_with(proc.root)
    for _ in range(EventSink.BATCH + 5):
        sink.handle(shadow())
    assert len(out.getvalue().splitlines()) == EventSink.BATCH
    sink.close()  # writes the rest
    assert len(out.getvalue().splitlines()) == EventSink.BATCH + 5
    assert sink.counts()[("sensitive_file_read", "warning", "shop")] == EventSink.BATCH + 5


def test_unmatched_events_write_nothing(proc):
    sink, out = sink_with(proc.root)
    sink.handle(RawEvent("open", pid=7, comm="cat", path="/srv/app.css"))
    sink.flush()
    assert out.getvalue() == "" and sink.counts() == {}


def test_identity_is_reused_briefly_then_asked_again(proc):
    clock = Clock()
    calls = []

    def identity_of(cid):
        calls.append(cid)
        return {**POD, "pod": f"web-{len(calls)}"}

    sink, out = sink_with(proc.root, identity_of, clock)
    sink.handle(shadow())
    sink.handle(shadow())
    clock.now += EventSink.IDENTITY_TTL + 0.01
    sink.handle(shadow())
    sink.flush()
    assert calls == [42, 42]
    assert [json.loads(line)["pod"] for line in out.getvalue().splitlines()] == ["web-1", "web-1", "web-2"]


def test_exe_is_read_once_per_process_and_comm_for_a_short_time(proc):
    clock = Clock()
    info = ProcessInfo(proc.root, ttl=1.0, clock=clock)
    proc(7, exe="/usr/bin/python3")
    assert info.exe(7, "python3") == "/usr/bin/python3"
    proc(7, exe="/usr/bin/cat")                          # the process exec'd cat, the exec was not seen
    assert info.exe(7, "python3") == "/usr/bin/python3"  # same comm within the ttl: reused
    assert info.exe(7, "cat") == "/usr/bin/cat"          # a new comm means a new program: read again
    clock.now += 1.01
    assert info.exe(7, "python3") == "/usr/bin/cat"      # the ttl is over: read again


def test_exe_from_exec_events_wins_while_the_comm_matches(proc):
    info = ProcessInfo(proc.root, clock=Clock())
    proc(8, exe="/usr/bin/env")
    info.remember_exec(8, "/bin/dash", "sh")
    assert info.exe(8, "sh") == "/bin/dash"
    assert info.exe(8, "env") == "/usr/bin/env"
    assert info.exe(9, "gone") == ""                     # no such process
    info.remember_exec(9, "/bin/true", "true")
    assert info.exe(9, "other") == "/bin/true"           # exited: the last exec seen is the best we know


def test_cwd_is_never_reused(proc):
    """A chdir between two relative opens must not misplace the second path."""
    proc(7, exe="/usr/bin/cat", cwd="/srv")
    sink, out = sink_with(proc.root)
    sink.handle(shadow(path="shadow"))                   # /srv/shadow: no match
    proc(7, exe="/usr/bin/cat", cwd="/etc")
    sink.handle(shadow(path="shadow"))                   # /etc/shadow
    sink.flush()
    [line] = out.getvalue().splitlines()
    obj = json.loads(line)
    assert obj["syscall"]["path"] == "/etc/shadow" and obj["process"]["cwd"] == "/etc"


def test_no_planted_secret_reaches_the_output(proc):
    proc(7, exe="/opt/PASSWORD=hunter2hunter2/cat", cwd="/srv/token=hunter2hunter2")
    sink, out = sink_with(proc.root)
    sink.handle(shadow())
    sink.handle(RawEvent("exec", cgroup_id=42, pid=8, comm="sh", path="/bin/sh", exe="/bin/sh",
                         args=["sh", "-c", "mysql -uroot -phunter2hunter2 db"]))
    sink.close()
    text = out.getvalue()
    assert len(text.splitlines()) == 2 and "hunter2hunter2" not in text


def test_a_broken_output_does_not_stop_the_others(proc):
    sink, out = sink_with(proc.root)
    broken = io.StringIO()
    broken.close()
    sink.output.streams.insert(0, broken)
    sink.handle(shadow())
    sink.flush()
    assert len(out.getvalue().splitlines()) == 1


def _stat(proc_root, pid, start_ticks):
    """A /proc/<pid>/stat whose field 22 (starttime, clock ticks since boot) is ``start_ticks``."""
    fields = ["S"] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 30
    with open(os.path.join(proc_root, str(pid), "stat"), "w") as f:
        f.write(f"{pid} (odd name) x) " + " ".join(fields) + "\n")


def test_parent_exe_only_from_the_process_that_really_is_the_parent(proc):
    """The parent's exe is taken from /proc only when /proc/<ppid>'s start
    time is the parent's start time the kernel reported: a PID the parent
    left and another process took lends nothing."""
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    info = ProcessInfo(proc.root)
    boot = info._boot_offset
    proc(300, exe="/usr/sbin/sshd")
    _stat(proc.root, 300, 5000)
    assert info.parent_exe(300, boot + 5000 * tick) == "/usr/sbin/sshd"
    proc(301, exe="/usr/bin/other")
    _stat(proc.root, 301, 9000)  # pid 301 now belongs to a process started later
    assert info.parent_exe(301, boot + 5000 * tick) == ""
    assert info.parent_exe(0, boot) == "" and info.parent_exe(300, 0) == ""


def test_a_remembered_exec_names_its_process_as_a_parent(proc):
    info = ProcessInfo(proc.root)
    info.remember_exec(400, "/usr/bin/bash", "bash", start_ns=123)
    assert info.parent_exe(400, 123) == "/usr/bin/bash"  # no /proc needed: it exited meanwhile
    assert info.parent_exe(400, 124) == ""  # another process with that pid


def test_matched_events_carry_the_parent_exe(proc):
    sink, out = sink_with(proc.root)
    sink.proc.remember_exec(50, "/usr/bin/python3", "python3", start_ns=777)
    matched, ignored = shadow(), RawEvent("open", pid=7, comm="cat", path="/srv/app.css", ppid=50, parent_start_ns=777)
    matched.ppid, matched.parent_start_ns = 50, 777
    sink.handle(matched)
    sink.handle(ignored)
    sink.flush()
    assert len(out.getvalue().splitlines()) == 1
    assert matched.parent_exe == "/usr/bin/python3"
    assert ignored.parent_exe == ""  # no /proc read for what no rule matched
