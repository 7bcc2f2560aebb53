"""Simulated pods: a network namespace plus a cgroup laid out the way the kubelet lays it out.

This is not a container runtime.  A "pod" here is:
- a network namespace ``ps-<name>`` whose ``eth0`` is one end of a veth pair; the
  other end sits in a shared "node" namespace on a bridge, so pods reach each
  other by IP (10.244.0.0/24, only inside namespaces the test created);
- a cgroup v2 directory at the path the kubelet would use (systemd driver:
  ``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope``,
  or the cgroupfs driver's ``kubepods/<qos>/pod<uid>/<id>``);
- processes started with ``pod.run(...)`` join that cgroup before exec and run
  in that namespace, so their sockets carry the pod's cgroup like a real one.

Everything is removed on ``close()``, and ``Node.close()`` removes whatever a
failed test left behind.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Node", "Pod", "cgroup2_root"]

NODE_NS = "ps-node"
BRIDGE = "psbr0"
SUBNET = "10.244.0"


def cgroup2_root() -> str:
    from podsight.kernel.mounts import cgroup2_root as find

    return find()


def sh(*cmd: str, check: bool = True, ns: str | None = None) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(full, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed: {r.stderr.strip()}")
    return r.stdout


def _kubelet_path(uid: str, container_id: str, qos: str, driver: str) -> list[str]:
    """Directory names from the cgroup root down to the container, kubelet style."""
    if driver == "systemd":
        u = uid.replace("-", "_")
        if qos == "guaranteed":
            pod = ["kubepods.slice", f"kubepods-pod{u}.slice"]
        else:
            pod = ["kubepods.slice", f"kubepods-{qos}.slice", f"kubepods-{qos}-pod{u}.slice"]
        return pod + [f"cri-containerd-{container_id}.scope"]
    base = ["kubepods"] if qos == "guaranteed" else ["kubepods", qos]
    return base + [f"pod{uid}", container_id]


@dataclass
class Pod:
    node: "Node"
    name: str
    index: int
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    container_id: str = field(default_factory=lambda: secrets.token_hex(32))
    qos: str = "burstable"
    driver: str = "systemd"
    netns: bool = True
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def ns(self) -> str:
        return f"ps-{self.name}"

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def cgroup_dirs(self) -> list[Path]:
        parts = _kubelet_path(self.uid, self.container_id, self.qos, self.driver)
        root = Path(self.node.cgroup_root)
        return [root.joinpath(*parts[: i + 1]) for i in range(len(parts))]

    @property
    def cgroup(self) -> Path:
        return self.cgroup_dirs[-1]

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.cgroup).st_ino

    def create(self) -> "Pod":
        self.cgroup.mkdir(parents=True, exist_ok=True)
        if self.netns:
            host_if = f"psv{self.index}"
            sh("ip", "netns", "add", self.ns)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
            sh("ip", "link", "set", host_if, "netns", NODE_NS)
            sh("ip", "link", "set", host_if, "master", BRIDGE, "up", ns=NODE_NS)
            # IPv6 off: no router solicitations or DAD chatter in the byte counts.
            sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=self.ns)
            sh("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0", ns=self.ns)
            sh("ip", "link", "set", "eth0", "up", ns=self.ns)
            sh("ip", "link", "set", "lo", "up", ns=self.ns)
        return self

    def run(self, *cmd: str, **kw) -> subprocess.Popen:
        """Start ``cmd`` inside the pod (its cgroup, and its netns when it has one)."""
        procs_file = str(self.cgroup / "cgroup.procs")

        def enter() -> None:
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))

        full = (["ip", "netns", "exec", self.ns] if self.netns else []) + list(cmd)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(full, preexec_fn=enter, **kw)
        self.procs.append(p)
        return p

    def netdev(self, ifname: str = "eth0") -> dict[str, int]:
        """Counters of ``ifname`` from /proc/net/dev inside the pod: the kernel's own numbers."""
        for line in sh("cat", "/proc/net/dev", ns=self.ns).splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == ifname:
                v = [int(x) for x in rest.split()]
                return {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8], "tx_packets": v[9]}
        raise KeyError(ifname)

    def mib(self) -> dict[str, int]:
        """The namespace's own SNMP/netstat counters (/proc/net/snmp and
        /proc/net/netstat read inside it), named as nstat names them
        (``TcpActiveOpens``, ``IpExtInNoECTPkts``): read directly, so no
        nstat history file is involved."""
        out: dict[str, int] = {}
        for path in ("/proc/net/snmp", "/proc/net/netstat"):
            lines = sh("cat", path, ns=self.ns).splitlines()
            # Pairs of lines: "Tcp: Name1 Name2 ..." then "Tcp: 1 2 ...".
            for head, vals in zip(lines[::2], lines[1::2]):
                prefix, _, names = head.partition(":")
                out.update((prefix + n, int(v)) for n, v in zip(names.split(), vals.split(":", 1)[1].split()))
        return out

    @property
    def mac(self) -> str:
        return sh("cat", "/sys/class/net/eth0/address", ns=self.ns).strip()

    def pin_neighbor(self, other: "Pod") -> None:
        """A permanent ARP entry for ``other``: no ARP frames on eth0, so its
        counters hold only the pods' IPv4 traffic."""
        sh("ip", "neigh", "replace", other.ip, "lladdr", other.mac, "nud", "permanent", "dev", "eth0", ns=self.ns)

    def set_offload(self, **features: bool) -> None:
        """Turn eth0's ``tso`` / ``gro`` on or off with the legacy ethtool
        ioctl (the ethtool tool is not installed)."""
        cmds = {"tso": 0x1F, "gro": 0x2C}  # ETHTOOL_STSO, ETHTOOL_SGRO
        for name, on in features.items():
            code = (
                "import ctypes, fcntl, socket, struct\n"
                f"v = (ctypes.c_uint32 * 2)({cmds[name]}, {int(on)})\n"
                "fcntl.ioctl(socket.socket(), 0x8946, struct.pack('16sP', b'eth0', ctypes.addressof(v)))\n"
            )
            sh("python3", "-c", code, ns=self.ns)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        self.procs.clear()
        if self.netns:
            sh("ip", "netns", "del", self.ns, check=False)
        for d in reversed(self.cgroup_dirs[len(self.node.shared_parents(self)) :]):
            _rmdir(d)


def _rmdir(d: Path) -> None:
    for _ in range(50):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            # Processes just killed may take a moment to leave the cgroup.
            time.sleep(0.05)
    raise RuntimeError(f"cannot remove cgroup {d}")


class Node:
    """The test's node: a bridge namespace and the kubelet's cgroup parents."""

    def __init__(self, cgroup_root: str | None = None):
        self.cgroup_root = cgroup_root or cgroup2_root()
        self.pods: list[Pod] = []
        self._next = 10
        sh("ip", "netns", "del", NODE_NS, check=False)
        sh("ip", "netns", "add", NODE_NS)
        sh("ip", "link", "add", BRIDGE, "type", "bridge", ns=NODE_NS)
        sh("ip", "link", "set", BRIDGE, "up", ns=NODE_NS)
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=NODE_NS)

    def shared_parents(self, pod: Pod) -> list[Path]:
        """QoS-level parents (kubepods.slice, ...) are shared: removed by the node."""
        return pod.cgroup_dirs[:-2]

    def pod(self, name: str, **kw) -> Pod:
        p = Pod(self, name, self._next, **kw)
        self._next += 1
        self.pods.append(p)
        return p.create()

    def remove(self, pod: Pod) -> None:
        pod.close()
        self.pods.remove(pod)

    def close(self) -> None:
        for p in list(self.pods):
            p.close()
        self.pods.clear()
        sh("ip", "netns", "del", NODE_NS, check=False)
        # The kubelet's shared parents go too, once no other pod uses them.
        root = Path(self.cgroup_root)
        for top in ("kubepods.slice", "kubepods"):
            base = root / top
            if base.exists():
                for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    _try_rmdir(d)
                _try_rmdir(base)


def _try_rmdir(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass  # still in use (by another pod): not ours to remove
