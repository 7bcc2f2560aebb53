"""Figure 7: TLS handshakes per second between two pods, agent off vs on (issue 17).

bench/tools/tlsbench.c in two simulated pods: a server and a client, one
process each, one connection at a time, every connection a full TLS
handshake (a new connection and a new SSL object each; no tickets, no
session cache, no session offered, and none resumed, checked per handshake;
the client verifies the certificate and its name).  Both link the system's
libssl.so.3, the file the tls probe attaches to.  C, CPU-bound and
latency-bound on purpose, as the churn figure: each handshake's work on
both sides is on the critical path, so whatever the probe adds per
handshake shows in the rate, not hidden behind a slow program's own work.
(With two clients and two server processes the two CPUs are saturated and
the rate moved by up to 2x with whatever else ran on the machine.)

The three arms of ab.alternate: no agent; the real agent in its default
configuration, its tls probe checked attached to the server pod's library
(the client maps the same file, so its handshakes are probed from its first);
and the floor: empty programs on podsight's network and TCP hooks plus empty
uprobes (bench/bpf/empty_tls.bpf.c) on the same OpenSSL functions of the same
file, entry and return alike.  After every "on" run the agent's own counters
must hold exactly the handshakes the client made, as successes on the client
side of the client pod and on the server side of the server pod, and no
failure: otherwise the probe was not on the path and the ratio would mean
nothing.  No run starts while another podsight agent has the tls probe's
programs loaded (a test's agent would probe our pods too: "off" would not be
off).
"""
from __future__ import annotations

import contextlib
import json
import re
import tempfile
from pathlib import Path

from podsight.kernel import mounts
from podsight.kernel.families.tls import FAMILY
from podsight.kernel.tls_libraries import Scanner

from . import env
from .ab import alternate
from .floor import floor_programs, uprobe_floor
from .stats import Budget

__all__ = ["run", "BUDGET", "handshakes", "CLIENTS", "WORKERS"]

BUDGET = Budget(">=", 0.98)
PORT = 8443
NAME = "tls-test"  # the certificate's name, which the client verifies
CLIENTS = 1  # client processes, one handshake at a time each
WORKERS = 1  # server processes
CERTIFICATE = "ECDSA P-256, self-signed; the client verifies it and its name"
# The tls probe's programs.  bpftool names a program from its BTF, or by the
# 15 characters the kernel keeps of its name.
TLS_PROGRAMS = frozenset(FAMILY.programs)
_NAMES = TLS_PROGRAMS | {prog[:15] for prog in TLS_PROGRAMS}
_RESULT = re.compile(r"^handshakes (\d+) seconds ([\d.]+) reused (\d+) failed (\d+) protocol (\S+) cipher (\S+)$")


def certificate(d: Path) -> tuple[str, str]:
    cert, key = d / "cert.pem", d / "key.pem"
    env.sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}", "-days", "1",
           "-keyout", str(key), "-out", str(cert), check=True)
    return str(cert), str(key)


def handshakes(client, server, tlsbench: Path, cafile: str, seconds: float) -> dict:
    """One client run: its own count of full handshakes, their rate, and what
    the two pods' processes used of the CPUs meanwhile (cgroup cpu.stat)."""
    cpu0 = _cpu_usec(client) + _cpu_usec(server)
    p = client.run(str(tlsbench), "connect", server.ip, str(PORT), cafile, NAME, f"{seconds:g}", str(CLIENTS),
                   text=True)
    out, err = p.communicate(timeout=seconds + 30)
    cpu = _cpu_usec(client) + _cpu_usec(server) - cpu0
    m = _RESULT.match(out.strip())
    if p.returncode != 0 or not m:
        raise env.BenchError(f"tlsbench connect failed ({p.returncode}): {out} {err}")
    n, secs, reused, failed = int(m[1]), float(m[2]), int(m[3]), int(m[4])
    if failed or reused or not n:
        raise env.BenchError(f"tlsbench: {n} handshakes, {failed} failed, {reused} resumed: the figure would "
                             f"not be full handshakes:\n{out} {err}")
    return {"handshakes": n, "seconds": secs, "per_second": n / secs, "cpu_us_per_handshake": cpu / n,
            "protocol": m[5], "cipher": m[6]}


def _cpu_usec(pod) -> int:
    """CPU time of every process that ran in the pod's cgroup, user and kernel (uprobe traps included)."""
    for line in (pod.cgroup / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1])
    raise env.BenchError(f"{pod.cgroup}/cpu.stat: no usage_usec")


def tls_programs() -> int:
    """Programs loaded on this machine with the tls probe's names, whoever loaded them."""
    r = env.sh("bpftool", "-j", "prog", "show")
    if r.returncode != 0:
        raise env.BenchError(f"bpftool prog show failed: {r.stderr}")
    return sum(1 for p in json.loads(r.stdout or "[]") if p.get("name") in _NAMES)


def library_paths(server) -> list[str]:
    """The TLS library files the server pod's processes map, found as the agent finds them."""
    scan = Scanner(mounts.cgroup2_root()).scan()
    keys = set().union(*scan.cgroups.get(server.cgroup_id, []))
    if len(keys) != 1:
        raise env.BenchError(f"the TLS server's pod maps {len(keys)} TLS library files, expected 1: {keys}")
    return [scan.paths[k][0] for k in keys]


def run(node, tools: dict, repeats: int, seconds: float, log) -> dict:
    tlsbench, empty_dir = tools["tlsbench"], tools["empty_dir"]
    with tempfile.TemporaryDirectory(prefix="psb-tls-") as d:
        cert, key = certificate(Path(d))
        client, server = node.pod(env.pod_name("tlsc")), node.pod(env.pod_name("tlss"))
        srv = server.run(str(tlsbench), "serve", server.ip, str(PORT), cert, key, str(WORKERS), text=True)
        env.wait_line(srv, "listening")
        paths = library_paths(server)
        runs: list[dict] = []
        checks: list[dict] = []
        side = {"now": "off"}

        def measure():
            # Another agent on this machine (a test's) would probe our pods too:
            # the "off" arm would not be off.  Ours loads each program once.
            loaded, expected = tls_programs(), len(TLS_PROGRAMS) if side["now"] == "on" else 0
            if loaded != expected:
                raise env.BenchError(f"{loaded} tls probe programs loaded during an {side['now']!r} run, expected "
                                     f"{expected}: another podsight agent is running here")
            r = handshakes(client, server, tlsbench, cert, seconds)
            runs.append(r)
            return r["per_second"], {"cpu_us_per_handshake": r["cpu_us_per_handshake"]}

        @contextlib.contextmanager
        def agent():
            with env.agent(check_probes=("network", "tcp", "tls")) as a:
                # The server's processes, running before the agent, are found by its first scan.
                a.wait_for(lambda s: s.value("podsight_probe_up", probe="tls") == 1 and
                           s.value("podsight_tls_library_processes", pod=server.uid) >= WORKERS,
                           timeout=30, what=f"the tls probe up and on the {WORKERS} server processes")
                side["now"] = "on"
                try:
                    yield a
                finally:
                    side["now"] = "off"

        def counted(a) -> None:
            made = runs[-1]["handshakes"]
            s = a.scrape()
            c = {"made": made,
                 "client_success": s.value("podsight_tls_handshakes_total", pod=client.uid, role="client",
                                           result="success"),
                 "server_success": s.value("podsight_tls_handshakes_total", pod=server.uid, role="server",
                                           result="success"),
                 "failure": sum(s.value("podsight_tls_handshakes_total", pod=p.uid, result="failure")
                                for p in (client, server)),
                 "untracked": sum(s.value("podsight_tls_handshakes_untracked_total", pod=p.uid)
                                  for p in (client, server)),
                 "client_timed": s.value("podsight_tls_handshake_duration_seconds_count", pod=client.uid,
                                         role="client")}
            checks.append(c)
            if not (c["client_success"] == c["server_success"] == c["client_timed"] == made
                    and c["failure"] == c["untracked"] == 0):
                raise env.BenchError(f"the agent did not count the handshakes made: {c}")

        @contextlib.contextmanager
        def floor():
            with floor_programs(empty_dir), uprobe_floor(empty_dir, paths):
                side["now"] = "floor"
                try:
                    yield
                finally:
                    side["now"] = "off"

        log(f"tls: {CLIENTS} client and {WORKERS} server process(es), full handshakes, {seconds:g} s x {repeats} "
            f"rounds (handshakes/s)")
        result = alternate(measure, repeats, log, on=agent, floor=floor, after_on=counted)
        srv.kill()
        node.remove(client)
        node.remove(server)
    return {"unit": "handshakes/s", "seconds_per_run": seconds,
            "tool": f"bench/tools/tlsbench.c, {CLIENTS} client and {WORKERS} server processes",
            "tls": {"protocol": runs[0]["protocol"], "cipher": runs[0]["cipher"], "certificate": CERTIFICATE,
                    "full_handshakes": "every one: no tickets, no session cache, none resumed (checked)"},
            "library_files": paths,
            "handshakes_made": sum(r["handshakes"] for r in runs),
            "agent_counted": {"runs": len(checks), "all_matched": True, "per_on_run": checks},
            **result, "budget": BUDGET.judge(result["ratio"], result["ratio_ci"])}
