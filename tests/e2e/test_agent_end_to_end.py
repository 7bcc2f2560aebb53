"""End to end: the real agent, real Prometheus scraping it every second with
the shipped rules (e2e variants from tests/e2e/rule-overrides.yaml), real
Alertmanager with the example routing, and a local webhook receiver.

Simulated pods (tests/support/pods.py) get metadata from the local pod API
test server (tests/support/apiserver.py, not a real API server) and produce
traffic, successful and failed connects, retransmits (iptables random drops),
a long-lived connection, shells, and TLS handshakes (OpenSSL through Python's
ssl: good ones and ones the client rejects). Then every panel target of every
dashboard must return data, with its variables at All and at the values
they list, and the security, retransmit and TLS failure alerts must reach
their receivers.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import dashboard_queries
import prom_tools
from tests.support.agent import AgentProcess
from tests.support.apiserver import PodApiServer, make_node, make_pod, start_container, write_kubeconfig
from tests.support.pods import sh
from tests.support.traffic import NETPROG, PYTHON

pytestmark = pytest.mark.root

CRITICAL_SHELL_RULE = Path(__file__).with_name("critical-shell-rule.yaml")
NODE = "node-a"
NAMESPACE = "dash-e2e"
CLIENT_POD = "client-5d8f7c9b4-x2x7q"
# Values each dashboard variable must list, and the panels must show data for.
DASHBOARD_CHOICES = {"node": [NODE], "namespace": [NAMESPACE], "pod": [CLIENT_POD, "server-0"],
                     "workload": ["client", "server"]}
# Ports inside the simulated pods' own network namespaces.
DOWNLOAD_PORT, ECHO_PORT, CLOSED_PORT, TLS_PORT = 8091, 8092, 8093, 8443
TLSPROG = str(Path(__file__).resolve().parents[1] / "support" / "tlsprog.py")
# TLS handshakes from the client pod to the server pod: one to warm up, then
# good ones and ones the client rejects (the self-signed certificate checked
# against the system CAs); the server's handshake sleeps TLS_DELAY_MS.
TLS_WARM_UP, TLS_GOOD, TLS_REJECTED, TLS_DELAY_MS = 1, 10, 3, 20

AGENT_CONFIG = """\
bpf_stats: true
labels:
  workload: true
probes:
  tcp:
    srtt_sample_interval: 100ms
  tls:
    rescan_interval: 200ms
security:
  enabled: true
  rules_files: [builtin:default, {rules}]
  # Low on purpose: the shell loop below must also produce rate_limited drops.
  rate_limit:
    events_per_second: 2
    burst: 4
"""


def _netprog(pod, *args, timeout=90) -> str:
    p = pod.run("python3", NETPROG, *args, text=True)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"netprog {args} in {pod.name}: {err}"
    return out.strip()


def _serve(pod, port, send=0):
    p = pod.run("python3", NETPROG, "serve", pod.ip, str(port), str(send), text=True)
    assert p.stdout.readline().strip() == "listening", p.stderr.read()
    return p


@pytest.fixture
def tls_cert(tmp_path) -> tuple[str, str]:
    d = tmp_path / "tls"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=tls-test", "-addext", "subjectAltName=DNS:tls-test", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


def _tls_serve(pod, cert, n: int):
    """tlsprog's server: accepts ``n`` connections, one full handshake each, then exits."""
    p = pod.run(PYTHON, TLSPROG, "serve", pod.ip, str(TLS_PORT), *cert, str(TLS_DELAY_MS), str(n), text=True)
    assert p.stdout.readline().strip() == "listening", p.stderr.read()
    return p


def _tls_connect(client, server, cert, n: int, mode: str) -> tuple[int, int]:
    """``n`` handshakes from ``client`` to the TLS server; tlsprog's own (succeeded, failed)."""
    p = client.run(PYTHON, TLSPROG, "connect", server.ip, str(TLS_PORT), str(n), cert[0], mode, text=True,
                   stdin=subprocess.PIPE)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    out, err = p.communicate("go\n", timeout=60)
    assert p.returncode == 0, f"tlsprog connect {mode} in {client.name}: {err}"
    _, ok, failed, _ = out.split()
    return int(ok), int(failed)


def _register(api: PodApiServer, sim, name: str, owner: tuple[str, str], labels=None) -> None:
    pod = make_pod(name, namespace=NAMESPACE, node=NODE, uid=sim.uid, owner=owner, labels=labels)
    start_container(pod, "app", sim.container_id)
    api.add_pod(pod)


def _warm_up(prom, client, server, tls_cert):
    """One connection and one TLS handshake so both pods' series exist in
    Prometheus, named, before the real activity. A counter whose first sample
    already holds every event shows rate 0 (Prometheus has no earlier sample);
    real pods, unlike these, live long before anything interesting happens.
    Returns the TLS server, which serves the activity's handshakes too."""
    _serve(server, DOWNLOAD_PORT, send=20_000_000)
    _serve(server, ECHO_PORT)
    tls_server = _tls_serve(server, tls_cert, TLS_WARM_UP + TLS_GOOD + TLS_REJECTED)
    assert _netprog(client, "connect", server.ip, str(ECHO_PORT), "1") == "1"
    # The probe attaches to the libssl the TLS server maps at its next /proc
    # rescan; the client's python maps the same file, so it is measured too.
    assert prom.wait_for(f'podsight_tls_library_processes{{namespace="{NAMESPACE}", pod="server-0"}} >= 1', 30), \
        "the tls probe never reported the TLS server's process as probed; tls probe state: " + \
        str([s["metric"]["state"] for s in prom.query('podsight_probe_state{probe="tls"} == 1')])
    assert _tls_connect(client, server, tls_cert, TLS_WARM_UP, "blocking") == (TLS_WARM_UP, 0)
    for pod in ("server-0", CLIENT_POD):
        assert prom.wait_for(f'podsight_tcp_connections_opened_total{{namespace="{NAMESPACE}", pod="{pod}"}}', 30), \
            f"no TCP series labelled namespace={NAMESPACE} pod={pod}: pod metadata did not reach the agent"
    for pod, role in (("server-0", "server"), (CLIENT_POD, "client")):
        series = f'podsight_tls_handshakes_total{{namespace="{NAMESPACE}", pod="{pod}", role="{role}", result="success"}}'
        assert prom.wait_for(f"{series} >= {TLS_WARM_UP}", 30), f"no TLS handshake counted: {series}"
    # A few samples before the activity, so rate() sees it begin.
    for series in (f'podsight_tcp_connections_opened_total{{namespace="{NAMESPACE}", pod="{CLIENT_POD}"}}',
                   f'podsight_tls_handshakes_total{{namespace="{NAMESPACE}", pod="{CLIENT_POD}", role="client"}}'):
        assert prom.wait_for(f"count_over_time({series}[1m]) >= 3", 30), f"fewer than 3 samples of {series}"
    return tls_server


def _generate_activity(client, server, tls_cert, tls_server) -> None:
    """Everything the dashboards and the asserted alerts need, with counts we
    chose: 10 good TLS handshakes and 3 the client rejects, 20 good connects,
    5 refused, a 20 MB download with 3 % of the server's segments dropped, an
    8 s ping-pong connection, 10 shells. After the TLS server exits, the
    server pod's processes map no TLS library (the TLS board's 'not seen'
    panel)."""
    holder = client.run("python3", NETPROG, "hold", server.ip, str(ECHO_PORT), "8", "0.05", text=True)
    assert holder.stdout.readline().strip() == "open"
    assert _tls_connect(client, server, tls_cert, TLS_GOOD, "blocking") == (TLS_GOOD, 0)
    assert _tls_connect(client, server, tls_cert, TLS_REJECTED, "reject") == (0, TLS_REJECTED)
    out, err = tls_server.communicate(timeout=30)
    assert out.split() == ["served", str(TLS_WARM_UP + TLS_GOOD), str(TLS_REJECTED)], err
    assert _netprog(client, "connect", server.ip, str(ECHO_PORT), "20") == "20"
    assert _netprog(client, "refused", server.ip, str(CLOSED_PORT), "5") == "5"
    drop = ["INPUT", "-p", "tcp", "--sport", str(DOWNLOAD_PORT), "-m", "statistic", "--mode", "random",
            "--probability", "0.03", "-j", "DROP"]
    sh("iptables", "-A", *drop, ns=client.ns)
    try:
        assert _netprog(client, "download", server.ip, str(DOWNLOAD_PORT), "20000000") == "20000000"
    finally:
        sh("iptables", "-D", *drop, ns=client.ns)
    time.sleep(2.5)  # let the pod's token bucket refill: the first shells are delivered
    for _ in range(10):
        p = client.run("sh", "-c", "true")
        p.communicate(timeout=10)
    holder.communicate(timeout=30)


def test_dashboards_show_data_and_alerts_reach_receivers(tmp_path, node, webhook, alertmanager,
                                                         start_prometheus, e2e_rules, tls_cert):
    client, server, remote = node.pod("dashc"), node.pod("dashs"), node.pod("dashr")
    with PodApiServer() as api:
        _register(api, client, CLIENT_POD, ("ReplicaSet", "client-5d8f7c9b4"),
                  labels={"pod-template-hash": "5d8f7c9b4"})
        _register(api, server, "server-0", ("StatefulSet", "server"))
        # Zones for the service map's cross-zone panels: a peer of another
        # node (its netns is here, its pod object says node-b in zone-b).
        api.add_node(make_node(NODE, ["192.0.2.1"], zone="zone-a"))
        api.add_node(make_node("node-b", ["192.0.2.2"], zone="zone-b"))
        api.add_pod(make_pod("cache-0", namespace=NAMESPACE, node="node-b", owner=("StatefulSet", "cache"),
                             ips=[remote.ip]))
        _serve(remote, ECHO_PORT)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
        config = AGENT_CONFIG.format(rules=CRITICAL_SHELL_RULE)
        with AgentProcess("--node-name", NODE, "--kubeconfig", str(kubeconfig), config=config) as agent:
            prom = start_prometheus({"podsight": [agent.url.removeprefix("http://")]}, [e2e_rules], alertmanager)
            start = time.time()
            assert prom.wait_for('up{job="podsight"} == 1', timeout=20), \
                f"Prometheus cannot scrape the agent at {agent.url}"
            assert _netprog(client, "connect", remote.ip, str(ECHO_PORT), "2") == "2"
            tls_server = _warm_up(prom, client, server, tls_cert)
            assert prom.wait_for(f'podsight_flow_connections_opened_total{{namespace="{NAMESPACE}", '
                                 'peer_workload="cache", peer_zone="zone-b"}', 30), "no cross-zone edge"
            _generate_activity(client, server, tls_cert, tls_server)
            assert _netprog(client, "connect", remote.ip, str(ECHO_PORT), "20") == "20"

            # The issue: `promtool check metrics` on a real scrape, taken after
            # the activity so pod series, histograms and events are in it.
            status, text = agent.get("/metrics")
            assert status == 200, text
            lint = subprocess.run([prom_tools.require("promtool"), "check", "metrics"], input=text,
                                  capture_output=True, text=True, timeout=30)
            assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), \
                f"promtool check metrics:\n{lint.stdout}{lint.stderr}"

            # Every panel target of every dashboard returns data, with every
            # variable at All and with each variable at the values it lists
            # (this node, the test's namespace and pods among them). Recording
            # rules need a few evaluations, so poll for a while.
            deadline, tried = time.monotonic() + 60, {}
            while True:
                results = dashboard_queries.evaluate_all(prom, start)
                empty = [f"{t.where()}\n    {expr}" for t, (expr, n) in results.items() if n == 0]
                if not empty:
                    empty, tried = dashboard_queries.evaluate_variable_choices(prom, start, prefer=DASHBOARD_CHOICES)
                if not empty or time.monotonic() > deadline:
                    break
                time.sleep(3)
            empty += dashboard_queries.label_catalog_problems(prom)
            unhealthy = [f"{r['name']}: {r['health']} {r.get('lastError', '')}"
                         for g in prom.rule_groups() for r in g["rules"] if r["health"] != "ok"]
            assert not unhealthy, "rules failing on the agent's real series:\n" + "\n".join(unhealthy)

            # Alerts travel Prometheus -> Alertmanager (example routing) -> receiver.
            # Problems are collected so one run reports the dashboards and every alert.
            problems = []
            if empty:
                problems.append("dashboard targets without data (or label catalog mismatches):\n" + "\n".join(empty)
                                + f"\nvariable values tried: {tried}")
            expected = {
                "PodsightSecurityCriticalEvent": ("/security-oncall", {
                    "rule": "shell_in_container", "namespace": NAMESPACE, "severity": "critical"}),
                "PodsightTCPRetransmitRatioHigh": ("/platform-tickets", {
                    "namespace": NAMESPACE, "workload": "server", "severity": "warning"}),
                # Both sides fail 3 of their 14 handshakes: either may arrive first.
                "PodsightTLSHandshakeFailureRatioHigh": ("/platform-tickets", {
                    "namespace": NAMESPACE, "category": "tls", "severity": "warning"}),
            }
            # The client's retransmit alert may fire too (the threshold is > 0
            # here): the drops also hit the server's SYN-ACKs and ACKs, and the
            # client then resends its SYN or request. Wait for the one asked.
            for name, (want_path, want_labels) in expected.items():
                got = webhook.wait_for_alert(name, timeout=60, labels=want_labels)
                if not got:
                    problems.append(f"{name} with {want_labels} never reached the webhook receiver")
                    continue
                path, alert = got
                if path != want_path:
                    problems.append(f"{name}: reached {path} with {alert['labels']}, expected {want_path}")
                if not alert["annotations"].get("runbook_url", "").endswith(f"/{name}.md"):
                    problems.append(f"{name}: runbook_url {alert['annotations'].get('runbook_url')}")
            assert not problems, "\n\n".join(problems) + f"\n\nwebhook received:\n{webhook.summary()}"
