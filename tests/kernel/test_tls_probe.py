"""TLS handshakes from uprobes in the real OpenSSL that pod processes map,
checked against what the TLS programs themselves did (tests/support/tlsprog.py):
a server whose handshake sleeps a known time, clients that succeed, retry
non-blocking handshakes, reject the certificate or give up on a silent
server; a copy of libssl at another path; no link left after SIGKILL."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from podsight.kernel.families.tls import LINKS, uprobe_multi
from tests.support.agent import AgentProcess, Scrape
from tests.support.traffic import PYTHON

pytestmark = pytest.mark.root

TLSPROG = str(Path(__file__).resolve().parents[1] / "support" / "tlsprog.py")
TIMEOUT = 1.0  # probes.tls.handshake_timeout: unfinished this long after the first call, failed
CONFIG = f"probes:\n  tls:\n    rescan_interval: 200ms\n    handshake_timeout: {TIMEOUT:g}s\n"
DELAY_MS = 300
# 300 ms falls in the log2 bucket (0.262144, 0.524288] s.
BELOW, ABOVE = "0.262144", "0.524288"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=tls-test", "-addext", "subjectAltName=DNS:tls-test", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


def serve(pod, port: int, cert, n: int, delay_ms: int = DELAY_MS):
    p = pod.run(PYTHON, TLSPROG, "serve", pod.ip, str(port), *cert, str(delay_ms), str(n), text=True)
    assert p.stdout.readline().strip() == "listening", p.stderr.read()
    return p


def client(pod, server, port: int, cert, n: int, mode: str, env=None):
    p = pod.run(PYTHON, TLSPROG, "connect", server.ip, str(port), str(n), cert[0], mode, text=True,
                stdin=subprocess.PIPE, env=env)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def go(p) -> tuple[int, int, int]:
    """Let a ready client run; its own count of (succeeded, failed, retries)."""
    out, err = p.communicate("go\n", timeout=60)
    assert p.returncode == 0, err
    _, ok, failed, retries = out.split()
    return int(ok), int(failed), int(retries)


def handshakes(s: Scrape, pod, role: str, result: str) -> float:
    return s.value("podsight_tls_handshakes_total", pod=pod.uid, role=role, result=result)


def bucket(s: Scrape, pod, role: str, le: str) -> float:
    return s.value("podsight_tls_handshake_duration_seconds_bucket", pod=pod.uid, role=role, le=le)


def probing(agent, pod, processes: int = 1) -> Scrape:
    """Wait until ``processes`` of the pod map a library the probe is attached to."""
    return agent.wait_for(lambda s: s.value("podsight_tls_library_processes", pod=pod.uid) >= processes,
                          what=f"{processes} process(es) of pod {pod.name} probed")


def test_handshake_time_in_the_delay_bucket_and_counts_per_role(node, cert):
    a, b = node.pod("tls-a"), node.pod("tls-b")
    with AgentProcess(config=CONFIG) as agent:
        agent.wait_for(lambda s: s.value("podsight_probe_up", probe="tls") == 1, what="tls probe up")
        srv = serve(b, 8443, cert, 5)
        probing(agent, b)
        blocking = client(a, b, 8443, cert, 3, "blocking")
        assert go(blocking) == (3, 0, 0)
        nonblocking = client(a, b, 8443, cert, 2, "nonblocking")
        ok, failed, retries = go(nonblocking)
        assert (ok, failed) == (2, 0)
        assert retries >= 2, "the non-blocking handshakes never had to retry: the case went untested"
        out, _ = srv.communicate(timeout=30)
        assert out.split() == ["served", "5", "0"]

        s = agent.wait_for(lambda s: handshakes(s, a, "client", "success") >= 5 and
                           handshakes(s, b, "server", "success") >= 5, what="5 handshakes on each side")
        for pod, role, other in ((a, "client", "server"), (b, "server", "client")):
            assert handshakes(s, pod, role, "success") == 5, (pod.name, role)
            assert handshakes(s, pod, role, "failure") == 0, (pod.name, role)
            assert s.value("podsight_tls_handshakes_total", pod=pod.uid, role=other) == 0, f"{pod.name}: {other}"
            # Every handshake waited for the server's 300 ms: all five in that bucket,
            # the non-blocking ones with their full duration, not their last call's.
            assert bucket(s, pod, role, BELOW) == 0, (pod.name, role)
            assert bucket(s, pod, role, ABOVE) == 5, (pod.name, role)
            assert s.value("podsight_tls_handshake_duration_seconds_count", pod=pod.uid, role=role) == 5
            total = s.value("podsight_tls_handshake_duration_seconds_sum", pod=pod.uid, role=role)
            assert 5 * DELAY_MS / 1000 <= total < 5 * 0.524288, (pod.name, role, total)
        assert s.value("podsight_tls_libraries_attached") >= 1


def test_rejected_certificate_is_a_failure_and_never_a_success(node, cert):
    a, b = node.pod("tls-a"), node.pod("tls-b")
    with AgentProcess(config=CONFIG) as agent:
        srv = serve(b, 8443, cert, 2, delay_ms=0)
        probing(agent, b)
        c = client(a, b, 8443, cert, 2, "reject")
        assert go(c) == (0, 2, 0)
        out, _ = srv.communicate(timeout=30)
        assert out.split() == ["served", "0", "2"]
        s = agent.wait_for(lambda s: handshakes(s, a, "client", "failure") >= 2 and
                           handshakes(s, b, "server", "failure") >= 2, what="2 failures on each side",
                           timeout=15 + TIMEOUT)
        assert handshakes(s, a, "client", "failure") == 2
        assert handshakes(s, b, "server", "failure") == 2
        assert s.value("podsight_tls_handshakes_total", pod=a.uid, result="success") == 0
        assert s.value("podsight_tls_handshakes_total", pod=b.uid, result="success") == 0
        assert s.value("podsight_tls_handshake_duration_seconds_count", pod=a.uid) == 0


def test_a_handshake_never_answered_fails_after_the_timeout(node, cert):
    """The client gives up after 0.5 s; nothing in the library says so (no
    SSL_get_error or SSL_free is probed): the sweep counts it once the
    handshake is TIMEOUT old."""
    a, b = node.pod("tls-a"), node.pod("tls-b")
    with AgentProcess(config=CONFIG) as agent:
        srv = b.run(PYTHON, TLSPROG, "silent", b.ip, "8443", text=True)
        assert srv.stdout.readline().strip() == "listening", srv.stderr.read()
        c = client(a, b, 8443, cert, 1, "timeout")
        probing(agent, a)
        assert go(c) == (0, 1, 0)
        s = agent.wait_for(lambda s: handshakes(s, a, "client", "failure") >= 1, what="the abandoned handshake",
                           timeout=10 + TIMEOUT)
        assert handshakes(s, a, "client", "failure") == 1
        assert s.value("podsight_tls_handshakes_total", pod=a.uid, result="success") == 0
        assert s.value("podsight_tls_handshakes_total", pod=b.uid) == 0  # the silent server has no TLS
        srv.kill()


def test_a_copy_of_libssl_in_another_pod_started_later_is_probed(node, cert, tmp_path):
    """A container's own libssl.so.3 (another file, another inode): found by
    the rescan after the process loads it, and measured separately."""
    import ssl  # this process maps the system libssl: the copy must be another file
    assert ssl.OPENSSL_VERSION.startswith("OpenSSL 3"), ssl.OPENSSL_VERSION

    system = next(l.split()[-1] for l in Path("/proc/self/maps").read_text().splitlines()
                  if l.split()[-1].rsplit("/", 1)[-1] == "libssl.so.3")
    copy = tmp_path / "lib"
    copy.mkdir()
    shutil.copy(system, copy / "libssl.so.3")
    b, c = node.pod("tls-b"), node.pod("tls-c")
    with AgentProcess(config=CONFIG) as agent:
        srv = serve(b, 8443, cert, 3, delay_ms=0)
        s = probing(agent, b)
        assert s.value("podsight_tls_libraries_attached") == 1, s.series("podsight_tls_libraries_attached")
        own = client(c, b, 8443, cert, 3, "blocking", env={"LD_LIBRARY_PATH": str(copy)})
        maps = Path(f"/proc/{own.pid}/maps").read_text()
        assert str(copy / "libssl.so.3") in maps, "the client did not load the copy"
        s = probing(agent, c)
        assert s.value("podsight_tls_libraries_attached") == 2
        assert go(own) == (3, 0, 0)
        srv.communicate(timeout=30)
        s = agent.wait_for(lambda s: handshakes(s, c, "client", "success") >= 3, what="pod C's 3 handshakes")
        assert handshakes(s, c, "client", "success") == 3
        assert handshakes(s, b, "server", "success") == 3
        # Both gone: the copy's links go with the last process that mapped it.
        s = agent.wait_for(lambda s: s.value("podsight_tls_libraries_attached") == 0,
                           what="links detached once no pod process maps a library")


def bpftool(*args: str) -> list[dict]:
    return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout
                      or "[]")


def tls_links() -> set[int]:
    """Links of programs named tls_* (the tls probe's)."""
    names = {p["id"]: p.get("name", "") for p in bpftool("prog", "show")}
    return {l["id"] for l in bpftool("link", "show") if names.get(l.get("prog_id"), "").startswith("tls_")}


def test_sigkill_leaves_no_uprobe(node, cert):
    from podsight.kernel.mounts import tracefs_root

    events = Path(tracefs_root(), "uprobe_events")
    before_events, before_links = events.read_text(), tls_links()
    b = node.pod("tls-b")
    agent = AgentProcess(config=CONFIG).start()
    try:
        srv = serve(b, 8443, cert, 1, delay_ms=0)
        probing(agent, b)
        running = tls_links() - before_links
        # One link per program (uprobe_multi), or per function before Linux 6.6.
        expected = len(LINKS) if uprobe_multi() else sum(len(fns) for _, _, fns in LINKS)
        assert len(running) == expected, f"expected the {expected} uprobe links of one library file, got {running}"
    finally:
        agent.stop(signal.SIGKILL)
    srv.kill()
    assert tls_links() - before_links == set(), "uprobe links left after SIGKILL"
    assert events.read_text() == before_events, "uprobe_events changed: a legacy tracefs uprobe was left"


def test_perf_event_uprobes_where_uprobe_multi_is_missing(node, cert):
    """Kernels before 6.6 get the same programs as perf-event uprobes (libbpf,
    the uprobe PMU): attached here the way the probe attaches them there."""
    import ssl

    from podsight.kernel.families.tls import CLIENT, SERVER, attach_file, configure_object
    from podsight.kernel.layouts import TlsCounters, TlsKey
    from podsight.kernel.loader import BpfObject

    assert ssl.OPENSSL_VERSION
    path = next(l.split()[-1] for l in Path("/proc/self/maps").read_text().splitlines()
                if l.split()[-1].rsplit("/", 1)[-1] == "libssl.so.3")
    a, b = node.pod("tls-a"), node.pod("tls-b")
    with BpfObject("tls") as obj:
        configure_object(obj, False, TIMEOUT)
        obj.load()
        links = attach_file(obj, path, False)
        assert len(links) == sum(len(fns) for _, _, fns in LINKS)  # one perf event per function
        srv = serve(b, 8443, cert, 2, delay_ms=0)
        assert go(client(a, b, 8443, cert, 2, "blocking")) == (2, 0, 0)
        assert srv.communicate(timeout=30)[0].split() == ["served", "2", "0"]

        def counted(pod, role) -> tuple[int, int]:
            per_cpu = obj.maps["tls_stats"].lookup(bytes(TlsKey(pod.cgroup_id, role))) or []
            vals = [TlsCounters.from_buffer_copy(v) for v in per_cpu]
            return sum(v.succeeded for v in vals), sum(v.failed for v in vals)
        assert counted(a, CLIENT) == (2, 0)
        assert counted(b, SERVER) == (2, 0)


def test_a_kernel_refusing_the_sweep_loses_only_the_timeouts():
    from podsight.kernel.families.tls import SWEEP, TlsProbe

    p = TlsProbe()
    assert p.optional_programs() == {SWEEP}
    p.refused({SWEEP})
    assert p.sweeps is False
