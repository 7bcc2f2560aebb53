"""Figure 5: the security events path, events/s decoded + rule-matched on one core.

What runs today: ring-buffer records (``struct security_event`` bytes, built
from benchlib.match's event mix) through the agent's own decoder
(``podsight.reader.events.decode``), rule matching and JSON for matches
(``benchlib.match.bench_decode_match``), in one thread, timed by
CPU time.  ``match_only`` is the same loop on pre-decoded events, so the
decoder's share shows.

Events path through the kernel (``kernel_path``): the real agent with the
security probe, a pod opening a watched file as fast as it can, events/s
delivered vs generated and ``podsight_events_dropped_total`` by reason.
Reported next to the user-space figure, never instead of it: if the security
probe cannot run, the figure says why.
"""
from __future__ import annotations

import ctypes
import ipaddress

from . import env
from .stats import Budget, summary

__all__ = ["run", "BUDGET", "encode"]

BUDGET = Budget(">=", 50_000, " events/s")


def encode(ev) -> bytes:
    """A RawEvent as the kernel would write it into the ring buffer (bpf/podsight.h)."""
    from podsight.kernel.layouts import SEC_KINDS, SEC_SYSCALLS, SecurityEvent

    e = SecurityEvent()
    e.ts_ns, e.cgroup_id, e.ret = ev.ts_ns, ev.cgroup_id, ev.ret
    e.kind = SEC_KINDS.index(ev.kind)
    e.syscall = SEC_SYSCALLS.index(ev.syscall) if ev.syscall in SEC_SYSCALLS else 0
    e.pid, e.tid, e.ppid, e.uid, e.gid = ev.pid, ev.tid, ev.ppid, ev.uid, ev.gid
    e.flags, e.mode, e.target_pid, e.ptrace_request = ev.flags, ev.mode, ev.target_pid, ev.ptrace_request
    e.comm, e.parent_comm = ev.comm.encode()[:15], ev.parent_comm.encode()[:15]
    e.path = ev.path.encode()[:255]
    if ev.args:
        packed = b"\0".join(a.encode() for a in ev.args)[: SecurityEvent.args.size - 1]
        ctypes.memmove(ctypes.addressof(e) + SecurityEvent.args.offset, packed, len(packed))
        e.args_len = len(packed) + 1
    if ev.dst_ip:
        addr = ipaddress.ip_address(ev.dst_ip)
        e.family = 2 if addr.version == 4 else 10
        e.dst_addr[: len(addr.packed)] = list(addr.packed)
        e.dst_port = ev.dst_port
    return bytes(e)


# Opened in a loop from inside a pod: a default rule (sensitive_file_read)
# matches every one, so the agent decodes, matches and JSON-encodes each event
# that reaches it (the heaviest path), and podsight_security_events_total
# counts exactly the delivered ones.
GENERATOR = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    for _ in range(100):
        os.close(os.open("/etc/shadow", os.O_RDONLY))
    n += 100
print(n, flush=True)
"""
SECURITY_CONFIG = """log_level: warning
kubernetes:
  enabled: "false"
probes:
  network:
    enabled: false
  tcp:
    enabled: false
security:
  enabled: true
  rate_limit:
    events_per_second: 100000000
    burst: 100000000
  output:
    stdout: false
    file: /dev/null
    aggregate: {window: 0s}  # the worst case, comparable with earlier runs: every match a JSON line
"""


def kernel_path(node, seconds: float, log) -> dict:
    """Events through the kernel: a pod opens /etc/shadow as fast as one Python
    loop can for ``seconds``; the agent (security probe only, rate limit
    lifted, JSON to /dev/null) delivers what it can.  Reports delivered
    events/s, the agent's CPU per event, and drops by reason; generated must
    equal delivered + dropped."""
    import sys
    import time

    if not (env.REPO / "build" / "bpf" / "security.bpf.o").exists():
        return {"status": "pending", "reason": "build/bpf/security.bpf.o not built (security probe not landed)"}
    pod = node.pod(env.pod_name("sec"), netns=False)
    try:
        with env.agent(SECURITY_CONFIG, check_probes=("security",)) as agent:
            pid = agent.proc.pid
            c0 = env.cpu_seconds(pid)
            t0 = time.monotonic()
            gen = pod.run(sys.executable, "-c", GENERATOR, f"{seconds:g}", text=True)
            out, err = gen.communicate(timeout=seconds + 60)
            if gen.returncode != 0:
                raise env.BenchError(f"event generator failed: {err}")
            generated = int(out.strip())
            # Drain: until delivered + dropped stops moving.
            last = -1.0
            while True:
                s = agent.scrape()
                delivered = s.value("podsight_security_events_total", rule="sensitive_file_read")
                dropped = {r: s.value("podsight_events_dropped_total", reason=r)
                           for r in ("rate_limited", "guard_limited", "ringbuf_full", "pending_full",
                                     "output_limited")}
                total = delivered + sum(dropped.values())
                if total == last or time.monotonic() - t0 > seconds + 120:
                    break
                last = total
                time.sleep(1.0)
            wall = time.monotonic() - t0
            cpu = env.cpu_seconds(pid) - c0
    finally:
        node.remove(pod)
    per_cpu = delivered / cpu if cpu else None
    return {"status": "measured", "generated": generated, "delivered": delivered, "dropped": dropped,
            "accounted": delivered + sum(dropped.values()) == generated,
            "generator_seconds": seconds, "wall_seconds": round(wall, 2),
            "delivered_per_second": delivered / wall, "agent_cpu_seconds": cpu,
            "delivered_per_cpu_second": per_cpu,
            "method": "every event matches sensitive_file_read: ring buffer + decode + match + JSON (to /dev/null) each",
            "budget": BUDGET.as_dict(per_cpu)}


def run(n: int, repeats: int, log, node=None, kernel_seconds: float = 5.0) -> dict:
    kernel = {"status": "skipped"}
    if node is not None:
        log(f"events: through the kernel, {kernel_seconds:g} s of opens from a pod")
        try:
            kernel = kernel_path(node, kernel_seconds, log)
        except Exception as e:  # the security probe is young: keep the user-space figure
            kernel = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    try:
        from podsight.reader.events import boot_to_realtime_offset, decode
        from .match import bench_decode_match, sample_events  # imports podsight.security
    except ImportError as e:
        return {"status": "unavailable", "reason": str(e), "kernel": kernel}
    log(f"events: {n:,} ring-buffer records decoded + matched x {repeats}")
    raw = [(encode(ev), idn) for ev, idn in sample_events(n)]
    offset = boot_to_realtime_offset()

    def dec(item):
        return decode(item[0], offset), item[1]

    full, match_only, matches = [], [], 0
    for _ in range(repeats):
        r = bench_decode_match(items=raw, decode=dec)
        full.append(r["events_per_second"])
        matches = r["matches"]
        match_only.append(bench_decode_match(n)["events_per_second"])
    out = {"status": "measured", "events": n, "matches_per_run": matches, "unit": "events/s (one core, CPU time)",
           "decode_match": summary(full), "match_only": summary(match_only),
           "decode_us_per_event": summary([1e6 / f - 1e6 / m for f, m in zip(full, match_only)]),
           "kernel": kernel}
    out["decode_match"]["budget"] = BUDGET.judge(out["decode_match"])
    return out
