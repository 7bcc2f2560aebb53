"""Every pod, service and node of the cluster, by IP address: who a peer is.

``ClusterIndex`` lists and watches ALL pods (no field selector), services and
nodes, one background thread each, and answers ``peer(addr)``: the pod, the
Service (by ClusterIP) or the node an address belongs to, with the pod's
workload and both the node and its zone.

It keeps only what that answer needs.  Responses are parsed with msgspec
into small typed structs that name the few fields read (name, namespace,
owner references, the ``pod-template-hash`` label, node name,
hostNetwork, phase, pod IPs; a service's type and cluster IPs; a node's
addresses and zone label): the rest of each object (containers, env,
managedFields, status conditions ...) is skipped by the parser without ever
becoming Python objects, and no lightkube model is built.  Lists are read in
pages (``limit``, 500 objects) so the first list of a large cluster never
holds the whole ``PodList`` in memory at once.  What stays is one slotted
record per object and a dict from packed address bytes to its owner, with
repeated strings (namespace, node, workload) interned: 5.5 MB of Python heap
for 10,000 pods, 2,000 services and 500 nodes, about 450 bytes an object
(tests/identity/test_cluster.py measures it).

The protocol is PodWatcher's: each thread runs listwatch.py's loop and
transport (bookmarks, watch read timeouts past ``timeoutSeconds`` so a dead
connection is noticed, spaced watch requests, a prompt stop, backoff for
reconnects, 410 Gone → relist, where a relist replaces that resource's whole
state) with the same kubeconfig loading, and a heartbeat per thread.
An expired continue token (410 between pages) falls back to one whole list,
as client-go's pager does.  While the API is unreachable what is known stays
known; ``api_up`` is True only while all three watches are healthy, and the
first watch to reach the API again wakes the other two from their backoff.

Resolution (``peer``), first match wins:

1. a pod IP (``status.podIPs``, else ``status.podIP``) of a pod that is not
   ``hostNetwork`` and not Succeeded/Failed; when two pods claim one address
   the one not terminating, then Running, then created last, then seen last
   wins, and removing one leaves the other;
2. a Service ClusterIP (every ``spec.clusterIPs``; headless ``None`` and
   ExternalName services have none);
3. a node address (``InternalIP`` and ``ExternalIP``): a hostNetwork pod's
   address therefore names its node.

A pod's zone is its node's ``zone_label`` label, looked up at resolve time, so
a Node that arrives late or changes zone is reflected at once.  IPv4-mapped
IPv6 addresses resolve as the IPv4 address.  Deleted objects stop resolving
at once (callers keep their own series); ``generation`` grows with every
change that can alter an answer, for callers' caches.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from ..heartbeat import Heartbeat
from .kubeconfig import SERVICE_ACCOUNT_DIR, load_client_config
from .listwatch import WATCH_TIMEOUT_RANGE, Gone, ListWatchLoop, is_gone
from .workload import POD_TEMPLATE_HASH_LABEL, derive_workload

__all__ = ["ClusterIndex", "Peer", "DEFAULT_ZONE_LABEL", "PAGE_SIZE"]

log = logging.getLogger(__name__)

DEFAULT_ZONE_LABEL = "topology.kubernetes.io/zone"
PAGE_SIZE = 500  # objects per list page, as client-go's reflector asks
NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Peer:
    kind: str           # "pod" | "service" | "node"
    namespace: str      # "" for nodes
    name: str           # pod, service or node name
    workload: str       # pod: derive_workload(); service: the service name; node: the node name
    workload_kind: str  # pod: e.g. "Deployment"; service: "Service"; node: "Node"
    node: str           # pod: spec.nodeName; node: itself; service: ""
    zone: str           # pod: its node's zone; node: its zone; service: ""; "" when unknown


# -- what is read of the API's JSON (everything else is skipped) -------------

class _Meta(msgspec.Struct, gc=False):
    name: str | None = None
    namespace: str | None = None
    resourceVersion: str | None = None


class _Owner(msgspec.Struct, gc=False):
    kind: str | None = None
    name: str | None = None
    controller: bool | None = None


class _PodLabels(msgspec.Struct, gc=False):
    template_hash: str | None = msgspec.field(default=None, name=POD_TEMPLATE_HASH_LABEL)


class _PodMeta(_Meta, gc=False):
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    labels: _PodLabels | None = None
    ownerReferences: list[_Owner] | None = None


class _PodIP(msgspec.Struct, gc=False):
    ip: str | None = None


class _PodSpec(msgspec.Struct, gc=False):
    nodeName: str | None = None
    hostNetwork: bool | None = None


class _PodStatus(msgspec.Struct, gc=False):
    phase: str | None = None
    podIP: str | None = None
    podIPs: list[_PodIP] | None = None


class _Pod(msgspec.Struct, gc=False):
    metadata: _PodMeta | None = None
    spec: _PodSpec | None = None
    status: _PodStatus | None = None


class _ServiceSpec(msgspec.Struct, gc=False):
    type: str | None = None
    clusterIP: str | None = None
    clusterIPs: list[str] | None = None


class _Service(msgspec.Struct, gc=False):
    metadata: _Meta | None = None
    spec: _ServiceSpec | None = None


class _NodeMeta(_Meta, gc=False):
    labels: dict[str, str] | None = None


class _NodeAddress(msgspec.Struct, gc=False):
    type: str | None = None
    address: str | None = None


class _NodeStatus(msgspec.Struct, gc=False):
    addresses: list[_NodeAddress] | None = None


class _Node(msgspec.Struct, gc=False):
    metadata: _NodeMeta | None = None
    status: _NodeStatus | None = None


class _ListMeta(msgspec.Struct, gc=False):
    resourceVersion: str | None = None
    continue_: str | None = msgspec.field(default=None, name="continue")


class _List(msgspec.Struct, gc=False):
    metadata: _ListMeta | None = None
    items: list[msgspec.Raw] | None = None  # decoded one by one: a bad object costs only itself


class _Event(msgspec.Struct, gc=False):
    type: str | None = None
    object: msgspec.Raw = msgspec.Raw()


class _Versioned(msgspec.Struct, gc=False):  # a BOOKMARK's object
    metadata: _Meta | None = None


class _Status(msgspec.Struct, gc=False):
    code: int | None = None
    reason: str | None = None
    message: str | None = None


_list_decoder = msgspec.json.Decoder(_List)
_event_decoder = msgspec.json.Decoder(_Event)
_versioned_decoder = msgspec.json.Decoder(_Versioned)
_status_decoder = msgspec.json.Decoder(_Status)


def _packed(text: str | None) -> bytes | None:
    """An address as the index keys it: 4 or 16 bytes, IPv4-mapped IPv6 as IPv4."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _key(addr)


def _key(addr: Address) -> bytes:
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed


def _addresses(texts: Iterable[str | None]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for text in texts:
        key = _packed(text)
        if key is not None and key not in out:
            out.append(key)
    return tuple(out)


_intern = sys.intern


# -- what is kept: one record per object ---------------------------------------

@dataclass(slots=True)
class _PodRec:
    namespace: str
    name: str
    workload: str
    workload_kind: str
    node: str
    ips: tuple[bytes, ...]
    indexed: bool      # its IPs resolve to it: not hostNetwork, not finished
    running: bool
    terminating: bool
    created: str       # RFC 3339 in UTC: orders as text

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def rank(self) -> tuple:
        """Between pods claiming one address the highest wins; on a tie, the
        one stored last (see _Table.owner)."""
        return (not self.terminating, self.running, self.created)


@dataclass(slots=True)
class _ServiceRec:
    namespace: str
    name: str
    ips: tuple[bytes, ...]
    indexed = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def rank(self) -> tuple:
        return ()  # the one stored last wins


@dataclass(slots=True)
class _NodeRec:
    name: str
    zone: str
    ips: tuple[bytes, ...]
    indexed = True

    @property
    def key(self) -> str:
        return self.name

    def rank(self) -> tuple:
        return ()  # the one stored last wins


def _pod_record(obj: _Pod, zone_label: str) -> _PodRec | None:
    meta = obj.metadata
    if meta is None or not meta.name:
        return None
    spec = obj.spec or _PodSpec()
    status = obj.status or _PodStatus()
    owners = [{"kind": o.kind, "name": o.name, "controller": o.controller} for o in meta.ownerReferences or ()]
    template_hash = meta.labels.template_hash if meta.labels is not None else None
    workload, workload_kind = derive_workload(
        meta.name, owners, {POD_TEMPLATE_HASH_LABEL: template_hash} if template_hash else None)
    if status.podIPs:
        ips = _addresses(p.ip for p in status.podIPs)
    else:
        ips = _addresses((status.podIP,))
    phase = status.phase or ""
    return _PodRec(
        namespace=_intern(meta.namespace or ""),
        name=meta.name,
        workload=_intern(workload),
        workload_kind=_intern(workload_kind),
        node=_intern(spec.nodeName or ""),
        ips=ips,
        indexed=not spec.hostNetwork and phase not in FINISHED_PHASES,
        running=phase == "Running",
        terminating=bool(meta.deletionTimestamp),
        created=meta.creationTimestamp or "",
    )


def _service_record(obj: _Service, zone_label: str) -> _ServiceRec | None:
    meta = obj.metadata
    if meta is None or not meta.name:
        return None
    spec = obj.spec or _ServiceSpec()
    ips: tuple[bytes, ...] = ()
    if spec.type != "ExternalName":
        # "None" (headless) is no address and is skipped by the parse.
        ips = _addresses(spec.clusterIPs if spec.clusterIPs else (spec.clusterIP,))
    return _ServiceRec(namespace=_intern(meta.namespace or ""), name=meta.name, ips=ips)


def _node_record(obj: _Node, zone_label: str) -> _NodeRec | None:
    meta = obj.metadata
    if meta is None or not meta.name:
        return None
    addresses = (obj.status.addresses if obj.status is not None else None) or ()
    ips = _addresses(a.address for a in addresses if a.type in NODE_ADDRESS_TYPES)
    zone = (meta.labels or {}).get(zone_label) or ""
    return _NodeRec(name=_intern(meta.name), zone=_intern(zone), ips=ips)


# -- the tables ----------------------------------------------------------------

class _Table:
    """One resource's records by key, and the addresses they claim.

    An address almost always has one claimant, kept bare; the rare shared
    address keeps a list in the order the claims were stored (a changed
    record claims anew, at the end).  Not thread-safe: the ClusterIndex lock
    guards it.
    """

    def __init__(self, resource: str, decoder: msgspec.json.Decoder,
                 make: Callable[[object, str], object]):
        self.resource = resource
        self.decoder = decoder
        self.make = make
        self.records: dict = {}
        self.claims: dict[bytes, object] = {}

    def decode(self, raw, zone_label: str):
        """(record or None, resourceVersion) of one raw object."""
        obj = self.decoder.decode(raw)
        rv = obj.metadata.resourceVersion if obj.metadata is not None else None
        return self.make(obj, zone_label), rv

    def _claim(self, key, rec) -> None:
        if not rec.indexed:
            return
        claims = self.claims
        for ip in rec.ips:
            cur = claims.get(ip)
            if cur is None:
                claims[ip] = key
            elif isinstance(cur, list):
                if key not in cur:
                    cur.append(key)
            elif cur != key:
                claims[ip] = [cur, key]

    def _unclaim(self, key, rec) -> None:
        if not rec.indexed:
            return
        claims = self.claims
        for ip in rec.ips:
            cur = claims.get(ip)
            if cur == key:
                del claims[ip]
            elif isinstance(cur, list) and key in cur:
                cur.remove(key)
                if len(cur) == 1:
                    claims[ip] = cur[0]

    def put(self, rec) -> bool:
        """Insert or replace; False when nothing an answer depends on changed."""
        key = rec.key
        old = self.records.get(key)
        if old == rec:
            return False
        if old is not None:
            self._unclaim(key, old)
        self.records[key] = rec
        self._claim(key, rec)
        return True

    def remove(self, rec) -> bool:
        """Drop the object stored under ``rec``'s key.

        Keys are names, which the API gives one object at a time, and one
        resource's events arrive in order: the DELETED of an object comes
        before the ADDED of another of the same name.
        """
        key = rec.key
        old = self.records.pop(key, None)
        if old is None:
            return False
        self._unclaim(key, old)
        return True

    def replace(self, recs: Iterable) -> None:
        self.records = {}
        self.claims = {}
        for rec in recs:
            self.put(rec)

    def owner(self, ip: bytes):
        """The record that wins ``ip``, or None."""
        cur = self.claims.get(ip)
        if cur is None:
            return None
        if not isinstance(cur, list):
            return self.records[cur]
        best = None
        for key in cur:  # in claim order: on equal rank the later claim wins
            rec = self.records[key]
            if best is None or rec.rank() >= best.rank():
                best = rec
        return best


# -- one resource's list/watch thread -------------------------------------------

class _ResourceWatch(ListWatchLoop):
    def __init__(self, index: "ClusterIndex", table: _Table):
        self.index = index
        self.table = table
        self.path = f"/api/v1/{table.resource}"
        self.heartbeat = Heartbeat(f"kubernetes cluster {table.resource} watch")
        self.up = False
        self.synced = False
        self.rv: str | None = None
        self.skipped = 0  # objects whose JSON did not fit the expected shape
        self._stopping = index._stopping  # the index's: one stop() ends all three
        self._thread: threading.Thread | None = None
        self._client = None
        self._transport = None
        self._attempt = 0
        self._wake = threading.Event()  # ends a reconnect wait early: stop(), or the API is back
        self._log, self._what, self._keeps = log, f"cluster {table.resource}", "peers"
        self._server = index._config.cluster.server
        self.backoff_max = index.backoff_max

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"podsight-cluster-{self.table.resource}",
                                            daemon=True)
            self._thread.start()

    def abort(self) -> None:
        self._wake.set()
        if self._transport is not None:
            self._transport.abort_watch()

    def _attempt_begins(self) -> None:
        self._wake.clear()

    def _backoff(self, delay: float) -> None:
        """Wait before the next attempt; a wake since this attempt began cuts it short."""
        if not self._stopping.is_set():
            self._wake.wait(delay)

    def _mark_down(self) -> None:
        self.up = False

    def _client_or_new(self):
        if self._client is None:
            import httpx2
            from lightkube.config.client_adapter import Client, ConnectionParams

            config = self.index._config
            transport = self._new_transport(config)
            # The httpx client lightkube would build (base URL, the user's
            # auth, a token file re-read on 401), over the listwatch transport;
            # trust_env=False ignores HTTP(S)_PROXY, meant for the workloads.
            self._client = Client(config, ConnectionParams(timeout=httpx2.Timeout(10.0), trust_env=False,
                                                           transport=transport))
        return self._client

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            if up:
                log.info("Kubernetes API %s: %s watch reachable", self.index._config.cluster.server,
                         self.table.resource)
                # The API answers again: the other watches need not sit out
                # the rest of their backoff (three independent delays would
                # keep api_up False for the longest of them).
                for other in self.index._watches:
                    if other is not self and not other.up:
                        other._wake.set()
            self.up = up

    def _relist(self, client) -> str:
        """List every object (in pages), replace the table, return the list's version."""
        stopping = self._stopping
        zone_label = self.index.zone_label
        page_size = self.index.page_size
        params: dict[str, str | int] = {"limit": page_size} if page_size else {}
        recs: list = []
        rv: str | None = None
        while True:
            resp = client.get(self.path, params=params)
            if resp.status_code == 410 and params.get("continue"):
                # The snapshot the pages came from was compacted: one whole list.
                log.info("cluster %s list: continue token expired; listing again in one response",
                         self.table.resource)
                params, recs, rv = {}, [], None
                continue
            resp.raise_for_status()
            page = _list_decoder.decode(resp.content)
            meta = page.metadata or _ListMeta()
            if rv is None:
                rv = meta.resourceVersion
                if not rv:
                    raise ValueError(f"{self.path}: list without metadata.resourceVersion")
            for raw in page.items or ():
                rec = self._record(raw, zone_label)[0]
                if rec is not None:
                    recs.append(rec)
            del page, resp
            if not meta.continue_:
                break
            if stopping.is_set():
                raise RuntimeError("stopping")
            self.heartbeat.beat(WATCH_TIMEOUT_RANGE[1] + self.PROGRESS_GRACE)
            params = {"limit": page_size, "continue": meta.continue_}
        self.index._replace(self.table, recs)
        self.rv = rv
        self.synced = True
        self._attempt = 0
        self._set_up(True)
        log.debug("listed %d %s at resourceVersion %s", len(recs), self.table.resource, rv)
        return rv

    def _record(self, raw, zone_label: str):
        try:
            return self.table.decode(raw, zone_label)
        except msgspec.ValidationError as e:
            self.skipped += 1
            log.warning("cluster %s: skipped an object of unexpected shape: %s", self.table.resource, e)
            return None, None

    def _watch(self, client, rv: str) -> str:
        """Apply watch events until the stream ends or stop(); returns the last version seen."""
        stopping = self._stopping
        zone_label = self.index.zone_label
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(random.randint(*WATCH_TIMEOUT_RANGE))}
        try:
            with client.stream("GET", self.path, params=params) as resp:
                resp.raise_for_status()  # a 410 Status: Gone below
                for line in resp.iter_lines():
                    self.heartbeat.beat(WATCH_TIMEOUT_RANGE[1] + self.PROGRESS_GRACE)
                    if stopping.is_set():
                        break
                    if not line.strip():
                        continue
                    ev = _event_decoder.decode(line)
                    if ev.type == "ERROR":
                        status = _status_decoder.decode(ev.object)
                        if status.code == 410:
                            raise Gone()
                        raise RuntimeError(f"watch ERROR event: {status.code} {status.reason}: {status.message}")
                    if ev.type == "BOOKMARK":
                        meta = _versioned_decoder.decode(ev.object).metadata
                        new_rv = meta.resourceVersion if meta is not None else None
                    else:
                        rec, new_rv = self._record(ev.object, zone_label)
                        if rec is not None:
                            self.index._apply(self.table, ev.type, rec)
                    if new_rv:
                        rv = self.rv = new_rv
        except Gone:
            raise
        except Exception as e:
            if is_gone(e):
                raise Gone() from e
            raise
        return rv


class _AllBeats(Heartbeat):
    """The three watch threads' heartbeats as one: overdue when any is,
    named after the late ones (what ``heartbeat.late()`` prints)."""

    def __init__(self, parts: list[Heartbeat]):
        super().__init__("kubernetes cluster watch")
        self.parts = parts

    @property
    def name(self) -> str:
        late = [p.name for p in self.parts if p.overdue() > 0]
        return ", ".join(late) if late else self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def beat(self, within: float) -> None:
        for p in self.parts:
            p.beat(within)

    def done(self) -> None:
        for p in self.parts:
            p.done()

    def overdue(self) -> float:
        return max(p.overdue() for p in self.parts)


# -- the index ----------------------------------------------------------------

class ClusterIndex:
    """See the module docstring."""

    def __init__(self, kubeconfig: str | None = None, *, in_cluster: bool | None = None,
                 zone_label: str = DEFAULT_ZONE_LABEL, backoff_max: float = 30.0,
                 page_size: int = PAGE_SIZE, service_account_dir: str = SERVICE_ACCOUNT_DIR):
        """``page_size``: objects per list request (0: one response); ``backoff_max``:
        the cap of the reconnect delay in seconds."""
        if page_size < 0:
            raise ValueError(f"page_size: expected 0 or more, got {page_size}")
        self.zone_label = zone_label
        self.backoff_max = backoff_max
        self.page_size = page_size
        # Raises KubeConfigError for a missing or broken kubeconfig, as PodWatcher does.
        self._config = load_client_config(kubeconfig, in_cluster, service_account_dir)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._generation = 0
        self._pods = _Table("pods", msgspec.json.Decoder(_Pod), _pod_record)
        self._services = _Table("services", msgspec.json.Decoder(_Service), _service_record)
        self._nodes = _Table("nodes", msgspec.json.Decoder(_Node), _node_record)
        self._watches = [_ResourceWatch(self, t) for t in (self._pods, self._services, self._nodes)]
        self.heartbeats: list[Heartbeat] = [w.heartbeat for w in self._watches]
        self.heartbeat: Heartbeat = _AllBeats(self.heartbeats)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if any(w._thread is not None for w in self._watches):
            return
        self._stopping.clear()
        for w in self._watches:
            w.start()

    def stop(self) -> None:
        self._stopping.set()
        for w in self._watches:
            w.abort()
        deadline = time.monotonic() + 0.9
        for w in self._watches:
            thread, w._thread = w._thread, None
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    # Inside a list request or a connect (bounded by the 10 s
                    # client timeout): a daemon thread that exits once it returns.
                    log.debug("cluster %s watch thread still finishing a request after stop()",
                              w.table.resource)
            w.up = False

    # -- state -------------------------------------------------------------

    @property
    def api_up(self) -> bool:
        """All three watches healthy."""
        return all(w.up for w in self._watches)

    @property
    def synced(self) -> bool:
        """Pods, services and nodes each listed at least once."""
        return all(w.synced for w in self._watches)

    @property
    def generation(self) -> int:
        return self._generation

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"pods": len(self._pods.records), "services": len(self._services.records),
                    "nodes": len(self._nodes.records)}

    def resource_versions(self) -> dict[str, str | None]:
        """The last resourceVersion seen per resource (list, event or bookmark)."""
        return {w.table.resource: w.rv for w in self._watches}

    # -- questions ---------------------------------------------------------

    def peer(self, addr: Address) -> Peer | None:
        key = _key(addr)
        with self._lock:
            pod = self._pods.owner(key)
            if pod is not None:
                node = self._nodes.records.get(pod.node)
                return Peer("pod", pod.namespace, pod.name, pod.workload, pod.workload_kind, pod.node,
                            node.zone if node is not None else "")
            svc = self._services.owner(key)
            if svc is not None:
                return Peer("service", svc.namespace, svc.name, svc.name, "Service", "", "")
            node = self._nodes.owner(key)
            if node is not None:
                return Peer("node", "", node.name, node.name, "Node", node.name, node.zone)
        return None

    def service_port_ips(self) -> list[str]:
        """Every ClusterIP of every service (dual-stack: both), for learning the service range."""
        with self._lock:
            keys = list(self._services.claims)
        return [str(ipaddress.ip_address(k)) for k in sorted(keys, key=lambda k: (len(k), k))]

    def zone(self, node: str) -> str:
        with self._lock:
            rec = self._nodes.records.get(node)
        return rec.zone if rec is not None else ""

    def pod_ips(self, namespace: str, name: str) -> list[Address]:
        """A pod's IPs (status.podIPs), whatever its phase or network; [] if unknown."""
        with self._lock:
            rec = self._pods.records.get((namespace, name))
        return [ipaddress.ip_address(k) for k in rec.ips] if rec is not None else []

    # -- updates, from the watch threads -----------------------------------------

    def _apply(self, table: _Table, ev_type: str | None, rec) -> None:
        with self._lock:
            if ev_type in ("ADDED", "MODIFIED"):
                changed = table.put(rec)
            elif ev_type == "DELETED":
                changed = table.remove(rec)
            else:
                return
            if changed:
                self._generation += 1

    def _replace(self, table: _Table, recs: list) -> None:
        with self._lock:
            table.replace(recs)
            self._generation += 1
