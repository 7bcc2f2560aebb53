"""The image built from the repository's Dockerfile (scripts/image.sh), run
with the chart's own rendered pod spec (tests/image/podspec.py) by podman
and runc: every probe up and /readyz?strict 200, /metrics served, a podman
container under a kubelet-style cgroup parent counted for its pod with
exactly the bytes and packets its network namespace's IP and TCP counters
show, SIGTERM exits 0 and leaves no bpf link; TLS handshakes in a container
with its own libssl counted for its pod; the same with the chart's
Localhost seccomp profile (files/seccomp/podsight.json); under the
runtime's default seccomp profile the agent comes up degraded (/readyz 200,
/readyz?strict 503).

Networks: the agent pod's (the chart's default hostNetwork, ``--network host``,
for the flows' conntrack) reached through its netns; never podman's bridge. Storage: the
dedicated root of scripts/podman-test-env.sh. Containers are removed, and
the workload's cgroups with them, even when a test fails."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from podsight.kernel.mounts import cgroup2_root, tracefs_root
from tests.deploy.chart import CHART, one, render
from tests.image.podspec import metrics_port, podman_run_args
from tests.image.runtime import (Container, bpf_link_ids, build_image, cleanup_leftovers, existing_cgroups, podman,
                                remove_cgroups)
from tests.support.agent import Scrape

pytestmark = pytest.mark.root

PREFIX = "psi-"
NODE = "ps-image-node"
PROBES = {"network", "tcp", "tcp_rtt", "network_drops"}  # at least these; security is off by default
PAYLOAD = 1_000_003
# IPv4 (20) + TCP (20) + timestamps (12): the header of every data segment
# software GSO cuts from one skb (each segment gets its own copy).
SEG_HDR = 52

WORKLOAD = r"""
import socket, sys, threading, time
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 5201)); srv.listen(1)
got = []
def receive():
    c, _ = srv.accept(); total = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        total += len(b)
    got.append(total); c.close()
t = threading.Thread(target=receive); t.start()
cl = socket.create_connection(("127.0.0.1", 5201)); cl.sendall(b"x" * n)
# Half-close and wait for the server's FIN before close(): the client ACKs
# it as a full socket. A client closed at once is orphaned, becomes a
# timewait socket when its FIN is ACKed, and the server's FIN and the ACK
# of it then pass no cgroup hook (see the byte check).
cl.shutdown(socket.SHUT_WR); assert cl.recv(1) == b""; cl.close()
t.join(); srv.close()
print("received", got[0], flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def image():
    cleanup_leftovers(PREFIX)
    name, took = build_image()
    print(f"image {name} ready in {took:.1f}s")
    return name


def chart_pod(tmp_path: Path, sets: tuple[str, ...] = ()) -> tuple[dict, dict[str, Path]]:
    """The rendered DaemonSet pod template and its ConfigMap written as files."""
    objs = render(sets=sets)
    template = one(objs, "DaemonSet")["spec"]["template"]
    cm = one(objs, "ConfigMap", "podsight")
    d = tmp_path / "configmap-podsight"
    d.mkdir()
    for k, v in cm["data"].items():
        (d / k).write_text(v)
    return template, {"podsight": d}


@pytest.fixture
def rendered(tmp_path):
    return chart_pod(tmp_path)


# What podman/runc create: the workload's pod cgroups (cgroupfs driver)
# and podman's default parent of the agent's. Removed unless they were there.
CGROUP_DIRS = ["kubepods", "kubepods/besteffort", "libpod_parent"]


@pytest.fixture
def containers():
    made: list[Container] = []
    pods: list[str] = []
    keep = set().union(*(existing_cgroups(r) for r in CGROUP_DIRS))

    def run(name: str, args: list[str]) -> Container:
        c = Container(name, args)
        made.append(c)
        return c.start()

    try:
        yield run
    finally:
        for c in reversed(made):
            c.remove()
            parent = c.run_args[c.run_args.index("--cgroup-parent") + 1] if "--cgroup-parent" in c.run_args else ""
            if parent:
                pods.append(parent.strip("/"))
        remove_cgroups([*pods, *CGROUP_DIRS], keep)


def wait_scrape(agent: Container, port: int, predicate, what: str, timeout: float = 30, seen=None) -> Scrape:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            status, body = agent.get(port, "/metrics")
            if status == 200:
                last = Scrape(body)
                if predicate(last):
                    return last
        except ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\nlast: {seen}\nlogs:\n{agent.logs()[-3000:]}")


def probes_up(s: Scrape) -> dict[str, float]:
    return {labels["probe"]: v for labels, v in s.series("podsight_probe_up")}


def start_agent(containers, image, rendered, **kw) -> tuple[Container, int]:
    template, cm_dirs = rendered
    tracefs_root()  # the chart mounts the node's tracefs: this namespace has none until mounted
    name = f"{PREFIX}agent-{os.getpid()}"
    args = podman_run_args(template, image=image, node_name=NODE, name=name, configmap_dirs=cm_dirs, **kw)
    return containers(name, args), metrics_port(template)


def readyz(agent: Container, port: int, strict: bool = False) -> tuple[int, str]:
    return agent.get(port, "/readyz?strict" if strict else "/readyz")


def seccomp_mode(c: Container) -> int:
    """The agent process's seccomp mode (/proc/<pid>/status): 0 none, 2 filter."""
    (line,) = [l for l in Path(f"/proc/{c.pid}/status").read_text().splitlines() if l.startswith("Seccomp:")]
    return int(line.split()[1])


def assert_every_probe_up(agent: Container, port: int) -> None:
    s = wait_scrape(agent, port, lambda s: PROBES <= set(probes_up(s)), "podsight_probe_up for every probe")
    # Every probe this image has is up (the four here, and any newer one).
    assert set(probes_up(s).values()) == {1.0}, (probes_up(s), agent.logs()[-3000:])
    # What a smoke test (curl -f) checks: 200 only when nothing is degraded.
    assert readyz(agent, port, strict=True) == (200, "ready\n")
    assert readyz(agent, port) == (200, "ready\n")
    assert agent.get(port, "/healthz")[0] == 200


def netns_counters(c: Container) -> dict[str, int]:
    """The kernel's own counters in the container's netns: lo's (its only
    device) from /proc/net/dev, and the IP/TCP MIBs of /proc/net/snmp and
    /proc/net/netstat, named as nstat names them (IpExtOutOctets)."""
    out: dict[str, int] = {}
    (line,) = [l for l in c.in_netns("cat", "/proc/net/dev").stdout.splitlines() if l.strip().startswith("lo:")]
    f = [int(x) for x in line.split(":", 1)[1].split()]
    out.update(lo_rx_bytes=f[0], lo_rx_packets=f[1], lo_tx_bytes=f[8], lo_tx_packets=f[9])
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = c.in_netns("cat", path).stdout.splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, _, names = head.partition(":")
            out.update((prefix + n, int(v)) for n, v in zip(names.split(), vals.split(":", 1)[1].split()))
    return out


def test_chart_pod_spec_runs_the_built_image(image, rendered, containers):
    links_before = bpf_link_ids()
    agent, port = start_agent(containers, image, rendered)
    assert seccomp_mode(agent) == 0  # the chart's default: Unconfined
    assert_every_probe_up(agent, port)

    # A workload pod: a podman container in the kubelet's cgroupfs layout
    # (kubepods/besteffort/pod<uid>/...), with only lo in its netns.
    uid = str(uuid.uuid4())
    wname = f"{PREFIX}work-{os.getpid()}"
    work = containers(wname, ["--name", wname, "--network", "none",
                              "--cgroup-parent", f"/kubepods/besteffort/pod{uid}",
                              "--entrypoint", "python3", image, "-c", WORKLOAD, str(PAYLOAD)])
    deadline = time.monotonic() + 30
    while "received" not in work.logs():
        assert time.monotonic() < deadline, work.logs()
        time.sleep(0.2)
    assert f"received {PAYLOAD}" in work.logs()
    cgroup = Path(f"/proc/{work.pid}/cgroup").read_text()
    assert f"/kubepods/besteffort/pod{uid}/" in cgroup, cgroup
    assert Path(cgroup2_root(), f"kubepods/besteffort/pod{uid}").is_dir(), "runc made no cgroup v2 directory"

    # Exact, against the pod netns' own counters (deploy/README.md, "Building
    # and running the image in the suite", has the measurements):
    # - egress == IpExtOutOctets: IP counts each skb as it leaves, a GSO skb
    #   whole, as the cgroup egress hook sees it. Not lo's tx_bytes: lo takes
    #   GSO skbs up to its gso_max_size (64 KiB) only; TCP hands IP larger
    #   ones (two segments, up to 131018 bytes), which the device layer cuts
    #   in software after the hook, a header per segment, and lo counts those.
    # - ingress == lo's rx_bytes (== IpExtInOctets): every packet lo carried
    #   reached a full socket of this pod. lo counts IP-layer bytes: loopback
    #   counts skb->len after eth_type_trans() pulled the Ethernet header.
    # - packets: segments (TcpOutSegs) both ways.
    # Exact only while no packet is sent or received by a timewait socket:
    # those go through the netns' TCP control socket, outside the pod's
    # cgroup; hence the workload's half-close.
    seen: dict = {}

    def exact(s: Scrape) -> bool:
        k = netns_counters(work)
        seen["kernel"] = {n: k[n] for n in ("IpExtOutOctets", "IpExtInOctets", "TcpOutSegs", "IpOutRequests",
                                            "lo_tx_bytes", "lo_rx_bytes", "lo_tx_packets")}
        now = seen["agent"] = {(l["direction"], name): v for name in ("bytes", "packets")
                               for l, v in s.series(f"podsight_network_{name}_total") if l["pod"] == uid}
        return now == {("egress", "bytes"): k["IpExtOutOctets"], ("egress", "packets"): k["TcpOutSegs"],
                       ("ingress", "bytes"): k["lo_rx_bytes"], ("ingress", "packets"): k["TcpOutSegs"]}

    s = wait_scrape(agent, port, exact, f"pod {uid}'s bytes and packets == its netns' IP, TCP and lo counters",
                    seen=seen)
    series = [l for l, _ in s.series("podsight_network_bytes_total") if l["pod"] == uid]
    assert {l["namespace"] for l in series} == {""}, series  # no API server: no namespace
    k, egress = seen["kernel"], seen["agent"][("egress", "bytes")]
    assert PAYLOAD < egress and k["lo_rx_bytes"] == k["IpExtInOctets"], seen
    # The software-GSO gap, to the byte: lo carried a header more for every
    # segment cut from an skb IP sent (lo's packets less IP's output skbs).
    split = k["lo_tx_packets"] - k["IpOutRequests"]
    assert k["lo_tx_bytes"] - egress == SEG_HDR * split, seen
    print(f"pod bytes: egress {egress}, lo tx {k['lo_tx_bytes']}, {split} segments cut by software GSO")
    work.remove()

    # SIGTERM (podman stop): exit 0, every link the agent made gone.
    assert bpf_link_ids() - links_before, "the running agent holds no bpf link"
    podman("stop", "-t", "30", agent.name)
    state = agent.inspect()["State"]
    assert state["ExitCode"] == 0, (state, agent.logs()[-3000:])
    assert bpf_link_ids() - links_before == set(), "bpf links left after SIGTERM"


TLS_WORKLOAD = r"""
import os, socket, ssl, sys, threading, time
n = int(sys.argv[1])
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); server.load_cert_chain("/certs/cert.pem", "/certs/key.pem")
client = ssl.create_default_context(cafile="/certs/cert.pem")
srv = socket.create_server(("127.0.0.1", 8443))
def serve():
    for _ in range(n):
        c, _ = srv.accept()
        with server.wrap_socket(c, server_side=True) as s:
            s.sendall(s.recv(1))
t = threading.Thread(target=serve); t.start()
print("ready", flush=True)
while not os.path.exists("/certs/go"):  # the test says go once the agent probes this container's libssl
    time.sleep(0.1)
for _ in range(n):
    with client.wrap_socket(socket.create_connection(("127.0.0.1", 8443)), server_hostname="tls-test") as s:
        s.sendall(b"x"); s.recv(1)
t.join()
print("handshakes", n, flush=True)
time.sleep(3600)
"""


def test_tls_handshakes_in_a_container_with_its_own_libssl(image, rendered, containers, tmp_path):
    """The tls probe in the chart's pod finds the libssl inside another
    container's image (its root through /host/proc, another mount namespace)
    and counts that pod's handshakes, client and server side."""
    import subprocess

    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", "/CN=tls-test", "-addext", "subjectAltName=DNS:tls-test", "-days", "1",
                    "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")], check=True, capture_output=True)
    certs.chmod(0o755)
    (certs / "key.pem").chmod(0o644)
    agent, port = start_agent(containers, image, rendered)
    assert_every_probe_up(agent, port)
    uid, n = str(uuid.uuid4()), 4
    wname = f"{PREFIX}tls-{os.getpid()}"
    work = containers(wname, ["--name", wname, "--network", "none", "--volume", f"{certs}:/certs:ro",
                              "--cgroup-parent", f"/kubepods/besteffort/pod{uid}",
                              "--entrypoint", "python3", image, "-c", TLS_WORKLOAD, str(n)])
    libssl = [l.split()[-1] for l in Path(f"/proc/{work.pid}/maps").read_text().splitlines() if "libssl" in l]
    assert libssl, "the workload has not loaded libssl"
    wait_scrape(agent, port, lambda s: s.value("podsight_tls_library_processes", pod=uid) >= 1,
                f"the agent probing pod {uid}'s libssl ({libssl[0]} in the container)")
    (certs / "go").touch()
    deadline = time.monotonic() + 30
    while f"handshakes {n}" not in work.logs():
        assert time.monotonic() < deadline, work.logs()
        time.sleep(0.2)

    def counted(s: Scrape) -> bool:
        return all(s.value("podsight_tls_handshakes_total", pod=uid, role=r, result="success") >= n
                   for r in ("client", "server"))
    s = wait_scrape(agent, port, counted, f"{n} handshakes on each side of pod {uid}")
    for role in ("client", "server"):
        assert s.value("podsight_tls_handshakes_total", pod=uid, role=role, result="success") == n, role
        assert s.value("podsight_tls_handshake_duration_seconds_count", pod=uid, role=role) == n, role
    assert s.value("podsight_tls_handshakes_total", pod=uid, result="failure") == 0


def test_localhost_seccomp_profile_keeps_every_probe(image, containers, tmp_path):
    """The chart's Localhost profile (files/seccomp/podsight.json, what
    deploy/README.md says to install as /var/lib/kubelet/seccomp/podsight.json)
    enforced by runc: bpf() and perf_event_open() allowed, every probe up."""
    pod = chart_pod(tmp_path, ("seccompProfile.type=Localhost", "seccompProfile.localhostProfile=podsight.json"))
    agent, port = start_agent(containers, image, pod, seccomp_dir=CHART / "files" / "seccomp")
    assert seccomp_mode(agent) == 2, "no seccomp filter on the agent: the profile was not applied"
    assert_every_probe_up(agent, port)


def test_runtime_default_seccomp_leaves_the_agent_degraded(image, rendered, containers):
    """Without the chart's seccompProfile (what SeccompDefault does), podman's
    default profile (containers/common) refuses bpf() without CAP_SYS_ADMIN."""
    template, cm_dirs = rendered
    for c in template["spec"]["containers"]:
        c["securityContext"].pop("seccompProfile", None)
    agent, port = start_agent(containers, image, (template, cm_dirs))
    assert seccomp_mode(agent) == 2
    s = wait_scrape(agent, port, lambda s: "network" in probes_up(s), "podsight_probe_up")
    assert probes_up(s)["network"] == 0, probes_up(s)
    # Ready for the kubelet (200: rollouts go on, deploy/README.md says why); a smoke test sees 503.
    status, body = readyz(agent, port)
    assert status == 200 and body.startswith("degraded: probes unavailable:") and "network" in body, body
    assert readyz(agent, port, strict=True) == (503, body)
