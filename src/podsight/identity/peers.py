"""Who is at the other end of an edge: a peer address named as a pod, a
Service (and the backend conntrack sent the connection to), a node, or an
external address in a named CIDR set.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Protocol, Sequence

from ..config import Flows

__all__ = ["CidrSets", "PEER_FIELDS", "PeerNamer", "covering_network"]

# The peer's half of an edge's labels, in this order.
PEER_FIELDS = ("peer_kind", "peer_namespace", "peer_workload", "peer_workload_kind", "peer_zone", "peer_service",
               "peer_pod", "peer_ip")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Cluster(Protocol):
    """What naming needs of the cluster-wide watch (podsight.identity.cluster.ClusterIndex)."""

    generation: int

    def peer(self, addr: IPAddress): ...

    def zone(self, node: str) -> str: ...

    def service_port_ips(self) -> list[str]: ...

    def pod_ips(self, namespace: str, name: str) -> list: ...


class Nat(Protocol):
    """What naming needs of the conntrack NAT table (podsight.reader.conntrack.NatTable)."""

    def backend(self, family: int, service_addr: bytes, service_port: int, client_port: int,
                client_addrs: Sequence[bytes] = ()) -> tuple[bytes, int] | None: ...


def address(family: int, addr: bytes) -> IPAddress:
    return ipaddress.IPv4Address(addr[:4]) if family == socket.AF_INET else ipaddress.IPv6Address(addr[:16])


class CidrSets:
    """Named CIDR sets: the longest matching prefix names an address; the
    default set names the rest."""

    def __init__(self, sets: dict[str, list[str]], default: str):
        nets = [(ipaddress.ip_network(c, strict=False), name) for name, cidrs in sets.items() for c in cidrs]
        self._nets = sorted(nets, key=lambda nn: -nn[0].prefixlen)
        self.default = default

    def name(self, ip: IPAddress) -> str:
        for net, name in self._nets:
            if ip.version == net.version and ip in net:
                return name
        return self.default


def covering_network(ips: list[str], version: int):
    """The smallest network holding every address of one IP version, or None."""
    addrs = sorted(int(a) for a in (ipaddress.ip_address(i) for i in ips) if a.version == version)
    if not addrs:
        return None
    bits = 32 if version == 4 else 128
    prefix = bits - (addrs[0] ^ addrs[-1]).bit_length()
    return ipaddress.ip_network((addrs[0] >> (bits - prefix) << (bits - prefix), prefix) if prefix < bits
                                else (addrs[0], bits))


class PeerNamer:
    """Peer labels (``PEER_FIELDS``) of an address; answers are cached until
    the cluster's state changes."""

    def __init__(self, cfg: Flows, cluster: Cluster | None = None, nat: Nat | None = None, node: str = ""):
        self.node = node
        self.cluster = cluster
        self.nat = nat
        self.sets = CidrSets(cfg.external.cidr_sets, cfg.external.default_set)
        self.raw_ips = cfg.external.raw_ips
        self._configured = [ipaddress.ip_network(c, strict=False) for c in cfg.service_cidrs]
        self._cache: dict[tuple[int, bytes], tuple] = {}
        self._generation = -1
        self._networks: tuple[int, list] | None = None   # (cluster generation, Service networks)

    def _fresh(self) -> None:
        gen = self.cluster.generation if self.cluster is not None else 0
        if gen != self._generation:
            self._cache, self._generation = {}, gen

    def peer(self, family: int, addr: bytes) -> tuple:
        """Labels of the peer at ``addr`` (packed; IPv4 in the first 4 bytes)."""
        self._fresh()
        key = (family, addr)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._name(address(family, addr))
        return hit

    def _name(self, ip: IPAddress) -> tuple:
        if ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback):
            return ("node", "", self.node, "Node", self._own_zone(), "", "", "")
        p = self.cluster.peer(ip) if self.cluster is not None else None
        if p is None:
            return ("external", "", self.sets.name(ip), "", "", "", "", str(ip) if self.raw_ips else "")
        if p.kind == "pod":
            return ("pod", p.namespace, p.workload, p.workload_kind, p.zone, "", p.name, "")
        if p.kind == "service":
            return ("service", p.namespace, "", "", "", p.name, "", "")
        return ("node", "", p.name, "Node", p.zone, "", "", "")

    def _own_zone(self) -> str:
        return self.cluster.zone(self.node) if self.cluster is not None else ""

    def backend(self, family: int, addr: bytes, port: int, client_port: int, service: tuple,
                client_ips: Sequence[IPAddress] = ()) -> tuple | None:
        """The labels of a Service connection that reached a backend, from
        conntrack: the Service's name, the backend's workload; None if
        conntrack does not know it (yet)."""
        if self.nat is None:
            return None
        found = self.nat.backend(family, addr[:4] if family == socket.AF_INET else addr, port, client_port,
                                 [ip.packed for ip in client_ips])
        if found is None:
            return None
        b_addr, _ = found
        b = self.peer(socket.AF_INET if len(b_addr) == 4 else socket.AF_INET6, b_addr.ljust(16, b"\0"))
        # The Service names the edge; the backend fills in where it went.
        return ("service", service[1], b[2], b[3], b[4], service[5], b[6], b[7])

    def client_ips(self, namespace: str, pod: str) -> list:
        if self.cluster is None or not pod:
            return []
        return self.cluster.pod_ips(namespace, pod)

    def service_networks(self) -> list:
        """Where connections are followed one by one: the configured Service
        CIDRs, else the smallest networks holding every ClusterIP seen."""
        if self._configured:
            return self._configured
        if self.cluster is None:
            return []
        gen = self.cluster.generation
        if self._networks is None or self._networks[0] != gen:
            ips = self.cluster.service_port_ips()
            self._networks = (gen, [n for n in (covering_network(ips, 4), covering_network(ips, 6)) if n is not None])
        return self._networks[1]
