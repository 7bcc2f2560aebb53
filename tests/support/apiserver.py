"""A test server that speaks the Kubernetes list/watch HTTP protocol for
pods, services and nodes.

This is NOT a Kubernetes API server.  It is a small threaded HTTP/1.1 server
(127.0.0.1, ephemeral port) that keeps pods, services and nodes in memory and
answers the few requests podsight's Kubernetes clients make, with the wire
format of the real API:

- ``GET /api/v1/pods?fieldSelector=spec.nodeName=X``: a ``PodList`` with
  ``metadata.resourceVersion``; ``/api/v1/services`` and ``/api/v1/nodes``
  likewise (``ServiceList``, ``NodeList``; no field selector);
- ``limit=N`` pages a list: ``metadata.continue`` names the rest of the same
  snapshot (``remainingItemCount`` too), ``continue=<token>`` fetches it; a
  token older than the compaction point (or after ``expire_continues()``, or
  any while ``continues_expire`` is set) is ``410 Gone``, as from a real
  apiserver whose etcd compacted;
- ``GET /api/v1/<resource>?watch=true&resourceVersion=N&allowWatchBookmarks=true``:
  a chunked stream of JSON lines ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}`` replaying that resource's history after N, then live
  changes; pods that start or stop matching the field selector arrive as
  ADDED / DELETED, as they do from a real API server; BOOKMARK only when the
  client asked for it;
- one resourceVersion sequence for all three resources, as in etcd;
- ``410 Gone`` when N is older than the compaction point a test sets, either
  as an HTTP 410 ``Status`` or as a 200 stream with one ``ERROR`` event whose
  ``Status`` has ``code: 410`` (the form a real apiserver's watch cache uses);
- ``/version`` and ``/api`` for clients that probe them;
- bearer-token check (401 ``Status`` on a wrong token);
- plain HTTP, or HTTPS with a throwaway self-signed certificate
  (``make_tls_files``, needs the ``openssl`` command).

Test controls: add / modify / delete pods, services and nodes, send bookmarks, compact history,
deny a kind of request (403, as a missing RBAC verb),
end or expire open watches, stop and start again on the SAME port, inject a
delay, count requests by kind and record every watch request's parameters.
Its purpose is to drive the real client library over real HTTP, so the
production code path is exercised without an API server on the machine.
"""
from __future__ import annotations

import base64
import copy
import json
import queue
import shutil
import ssl
import subprocess
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

__all__ = [
    "PodApiServer",
    "make_node",
    "make_pod",
    "make_service",
    "start_container",
    "write_kubeconfig",
    "make_tls_files",
    "DEFAULT_TOKEN",
]

DEFAULT_TOKEN = "podsight-test-token"

_END = object()  # queue sentinel: end the stream cleanly (like timeoutSeconds)
_EXPIRE = object()  # queue sentinel: send ERROR 410, then end

# Served resources: path under /api/v1 → (object kind, list kind, prefix of
# the request kinds counted and delayed: "list"/"watch" for pods as before,
# "service-list", "node-watch", ...).
_RESOURCES = {
    "pods": ("Pod", "PodList", ""),
    "services": ("Service", "ServiceList", "service-"),
    "nodes": ("Node", "NodeList", "node-"),
}


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def make_pod(
    name: str,
    namespace: str = "default",
    node: str = "node-a",
    *,
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    containers: Iterable[tuple[str, str]] = (("app", "registry.example/app:1.0"),),
    init_containers: Iterable[tuple[str, str]] = (),
    ips: Iterable[str] = (),
    host_network: bool = False,
    phase: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
) -> dict:
    """A v1 Pod as the API returns it, not yet started (no container IDs).

    ``owner`` is ``(kind, name)`` of the controlling owner reference;
    ``containers`` are ``(name, image)`` pairs; ``ips`` become
    ``status.podIPs`` (the first also ``status.podIP``); ``host_network``
    sets ``spec.hostNetwork``; ``phase`` overrides ``status.phase``
    (``Pending``, or ``Running`` once ``start_container`` ran);
    ``created`` is ``metadata.creationTimestamp``.
    """
    containers = list(containers)
    init_containers = list(init_containers)
    ips = list(ips)
    meta: dict = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "labels": dict(labels or {}),
        "creationTimestamp": created,
    }
    if owner is not None:
        kind, owner_name = owner
        api = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
               "Job": "batch/v1"}.get(kind, "v1")
        meta["ownerReferences"] = [{
            "apiVersion": api, "kind": kind, "name": owner_name,
            "uid": str(uuid.uuid4()), "controller": True, "blockOwnerDeletion": True,
        }]

    def waiting(cname: str, image: str) -> dict:
        return {"name": cname, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}

    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            **({"hostNetwork": True} if host_network else {}),
            "containers": [{"name": c, "image": i} for c, i in containers],
            **({"initContainers": [{"name": c, "image": i} for c, i in init_containers]}
               if init_containers else {}),
        },
        "status": {
            "phase": phase or "Pending",
            **({"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]} if ips else {}),
            "containerStatuses": [waiting(c, i) for c, i in containers],
            **({"initContainerStatuses": [waiting(c, i) for c, i in init_containers]}
               if init_containers else {}),
        },
    }


def make_service(
    name: str,
    namespace: str = "default",
    cluster_ips: Iterable[str] = (),
    ports: Iterable[int | tuple[int, str]] = (80,),
    *,
    uid: str | None = None,
    external_name: str | None = None,
    selector: Mapping[str, str] | None = None,
) -> dict:
    """A v1 Service as the API returns it.

    ``cluster_ips`` become ``spec.clusterIPs`` (the first also
    ``spec.clusterIP``); ``["None"]`` is a headless service.  ``ports`` are
    port numbers or ``(port, protocol)`` pairs.  With ``external_name`` the
    service is of type ExternalName and has no cluster IP.
    """
    cluster_ips = list(cluster_ips)
    port_specs = []
    for p in ports:
        port, proto = p if isinstance(p, tuple) else (p, "TCP")
        port_specs.append({"name": f"{proto.lower()}-{port}", "protocol": proto, "port": port,
                           "targetPort": port})
    spec: dict = {"selector": dict(selector if selector is not None else {"app": name}),
                  "ports": port_specs, "sessionAffinity": "None"}
    if external_name is not None:
        spec.update(type="ExternalName", externalName=external_name)
    else:
        spec["type"] = "ClusterIP"
        if cluster_ips:
            spec.update(clusterIP=cluster_ips[0], clusterIPs=cluster_ips,
                        ipFamilies=["IPv6" if ":" in ip else "IPv4" for ip in cluster_ips if ip != "None"],
                        ipFamilyPolicy="SingleStack" if len(cluster_ips) == 1 else "PreferDualStack")
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                     "labels": {"app": name}, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def make_node(
    name: str,
    addresses: Iterable[str | tuple[str, str]] = (),
    zone: str | None = None,
    *,
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    zone_label: str = "topology.kubernetes.io/zone",
) -> dict:
    """A v1 Node as the API returns it.

    ``addresses`` are IPs (type ``InternalIP``) or ``(type, address)`` pairs
    (``ExternalIP``, ``InternalIP``, ...); a ``Hostname`` address with the
    node's name is always added, as the kubelet does.  ``zone`` is set as the
    ``zone_label`` label.
    """
    node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                   "kubernetes.io/arch": "amd64", **(labels or {})}
    if zone is not None:
        node_labels[zone_label] = zone
    addrs = [{"type": a[0], "address": a[1]} if isinstance(a, tuple) else {"type": "InternalIP", "address": a}
             for a in addresses]
    addrs.append({"type": "Hostname", "address": name})
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": uid or str(uuid.uuid4()), "labels": node_labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "addresses": addrs,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
            "nodeInfo": {"kubeletVersion": "v1.31.0", "containerRuntimeVersion": "containerd://1.7.0",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "architecture": "amd64"},
        },
    }


def start_container(pod: dict, container: str, container_id: str | None = None,
                    *, scheme: str = "containerd") -> str:
    """Mark ``container`` (regular, init or ephemeral) running with an ID, as
    the kubelet reports it once the runtime has started it.  Returns the bare ID."""
    cid = container_id or uuid.uuid4().hex + uuid.uuid4().hex
    status = pod.setdefault("status", {})
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key, []):
            if cs["name"] == container:
                cs["containerID"] = f"{scheme}://{cid}"
                cs["imageID"] = f"{cs['image']}@sha256:{'0' * 64}"
                cs["started"] = True
                cs["state"] = {"running": {"startedAt": "2026-01-01T00:00:01Z"}}
                status["phase"] = "Running"
                return cid
    raise KeyError(f"pod {pod['metadata']['name']!r} has no container {container!r}")


def write_kubeconfig(path: str | Path, server_url: str, token: str = DEFAULT_TOKEN,
                     namespace: str = "default", ca_file: str | Path | None = None) -> Path:
    """Write a kubeconfig with one cluster/user/context pointing at ``server_url``;
    with ``ca_file``, the CA goes in inline as ``certificate-authority-data``."""
    path = Path(path)
    cluster: dict = {"server": server_url}
    if ca_file is not None:
        cluster["certificate-authority-data"] = base64.b64encode(Path(ca_file).read_bytes()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "podsight-test", "cluster": cluster}],
        "users": [{"name": "podsight-test", "user": {"token": token}}],
        "contexts": [{"name": "podsight-test",
                      "context": {"cluster": "podsight-test", "user": "podsight-test",
                                  "namespace": namespace}}],
        "current-context": "podsight-test",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def make_tls_files(directory: str | Path, name: str = "apiserver") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, made
    with the ``openssl`` command.  Returns ``(cert_pem, key_pem)``."""
    directory = Path(directory)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("make_tls_files: the openssl command is needed (apt-get install openssl)")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", f"/CN=podsight-test-{name}",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
        check=True, capture_output=True)
    return cert, key


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, owner: "PodApiServer"):
        self.owner = owner
        super().__init__(address, _Handler)
        if owner.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*owner.tls)
            # The handshake runs on the handler thread's first read, so one
            # slow client does not stall the accept loop.
            self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        # A client or a stop() closing the socket mid-response is expected;
        # anything else is a bug in this server and is printed.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output quiet
        pass

    def setup(self):
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def _send_json(self, code: int, body: dict | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server naming
        owner = self.server.owner
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path.rstrip("/")
        watch = query.get("watch") in ("true", "1")
        kind = {"/version": "version", "/api": "api"}.get(path, "other")
        resource = path.removeprefix("/api/v1/") if path.startswith("/api/v1/") else None
        if resource in _RESOURCES:
            kind = _RESOURCES[resource][2] + ("watch" if watch else "list")
        else:
            resource = None
        owner._count(kind, query, resource)
        delay = owner._delay_for(kind)
        if delay:
            time.sleep(delay)
        if owner.token and self.headers.get("Authorization") != f"Bearer {owner.token}":
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if owner._is_denied(kind):
            verb = "watch" if watch else "list"
            self._send_json(403, _status(403, "Forbidden", f'{resource} is forbidden: User "podsight" cannot '
                                         f'{verb} resource "{resource}" in API group "" at the cluster scope'))
            return
        if kind == "version":
            self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-podsight-test",
                                  "platform": "linux/amd64"})
        elif kind == "api":
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": []})
        elif resource is not None:
            try:
                node = _parse_field_selector(query.get("fieldSelector", ""), resource)
            except ValueError as e:
                self._send_json(400, _status(400, "BadRequest", str(e)))
                return
            if not watch:
                code, body = owner._list(resource, node, query)
                self._send_json(code, body)
            else:
                self._watch(owner, node, query, resource)
        else:
            self._send_json(404, _status(404, "NotFound", f"the server could not find {url.path}"))

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """The client closed its end (EOF readable), so the stream can stop."""
        conn = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            if not readable:
                return False
            if isinstance(conn, ssl.SSLSocket):
                # No MSG_PEEK on TLS; a watch client sends nothing more, so
                # reading is safe: EOF or close_notify means it has gone.
                conn.settimeout(0.05)
                try:
                    return conn.recv(1) == b""
                except (socket.timeout, ssl.SSLWantReadError):
                    return False
                finally:
                    conn.settimeout(None)
            return conn.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _watch(self, owner: "PodApiServer", node: str | None, query: dict, resource: str = "pods") -> None:
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        sub = owner._subscribe(query.get("resourceVersion", ""), node, resource)
        if isinstance(sub, dict):  # a Status: too old (410) or a bad version (400)
            if owner.gone_mode == "status" or sub["code"] != 410:
                self._send_json(sub["code"], sub)
                return
            backlog, q = [_json_line({"type": "ERROR", "object": sub})], None
        else:
            backlog, q = sub
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            for line in backlog:
                self._write_chunk(line)
            while q is not None:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                try:
                    item = q.get(timeout=min(wait, 0.5) if wait is not None else 0.5)
                except queue.Empty:
                    if owner._stopping.is_set() or self._client_gone():
                        break
                    continue
                if item is _END:
                    break
                if item is _EXPIRE:
                    st = _status(410, "Expired", "too old resource version (watch expired by test)")
                    self._write_chunk(_json_line({"type": "ERROR", "object": st}))
                    break
                ev_type, entry = item
                if ev_type == "BOOKMARK" and not bookmarks:
                    continue
                line = _filter_event(ev_type, entry, node)
                if line is not None:
                    self._write_chunk(line)
            self._write_chunk(b"")  # chunked terminator: a clean end of the watch
        except OSError:
            pass  # client went away or the server is stopping
        finally:
            if q is not None:
                owner._unsubscribe(q)


def _parse_field_selector(selector: str, resource: str = "pods") -> str | None:
    if not selector:
        return None
    key, sep, value = selector.partition("=")
    if resource == "pods" and key == "spec.nodeName" and sep and not value.startswith("="):
        return value
    raise ValueError(f"test server supports only fieldSelector=spec.nodeName=<node> on pods, "
                     f"got {selector!r} on {resource}")


def _node_of(obj: Mapping | None) -> str | None:
    if obj is None:
        return None
    return (obj.get("spec") or {}).get("nodeName") or ""


def _json_line(ev: dict) -> bytes:
    return json.dumps(ev).encode() + b"\n"


def _event_line(ev_type: str, raw: bytes) -> bytes:
    """A watch event line around an object already serialised."""
    return b'{"type": "%s", "object": %s}\n' % (ev_type.encode(), raw)


def _filter_event(ev_type: str, entry, node: str | None) -> bytes | None:
    """The event's line after the field selector, applied the way the apiserver
    does for watches; ``entry`` is ``(object, previous, object's JSON)``, or a
    BOOKMARK's object."""
    if ev_type == "BOOKMARK":
        return _json_line({"type": "BOOKMARK", "object": entry})
    obj, prev, raw = entry
    if node is None:
        return _event_line(ev_type, raw)
    now = _node_of(obj) == node
    before = _node_of(prev) == node if prev is not None else None
    if ev_type == "ADDED":
        return _event_line("ADDED", raw) if now else None
    if ev_type == "DELETED":
        return _event_line("DELETED", raw) if now else None
    # MODIFIED: entering or leaving the selection is ADDED / DELETED.
    if now and before:
        return _event_line("MODIFIED", raw)
    if now:
        return _event_line("ADDED", raw)
    if before:
        return _event_line("DELETED", raw)
    return None


class PodApiServer:
    """See the module docstring.  Use as a context manager or start()/stop()."""

    def __init__(self, *, token: str | None = DEFAULT_TOKEN, gone_mode: str = "event",
                 tls: tuple[str | Path, str | Path] | None = None):
        """``tls``: ``(cert_pem, key_pem)`` to serve HTTPS (see make_tls_files)."""
        if gone_mode not in ("event", "status"):
            raise ValueError(f"gone_mode: expected 'event' or 'status', got {gone_mode!r}")
        self.tls = (str(tls[0]), str(tls[1])) if tls is not None else None
        self.token = token
        self.gone_mode = gone_mode
        self._lock = threading.Lock()
        # Stored objects are never changed in place (a change stores a new
        # copy) and are serialised once, when stored: lists and watch events
        # send those bytes, so 10,000 pods are listed in a blink.
        self._objects: dict[str, dict[str, dict]] = {r: {} for r in _RESOURCES}  # resource → uid → object
        self._json: dict[str, dict[str, bytes]] = {r: {} for r in _RESOURCES}  # resource → uid → its JSON
        self._pods = self._objects["pods"]
        self._rv = 1
        self._compacted = 0
        # (rv, resource, type, (object, previous, object's JSON))
        self._log: list[tuple[int, str, str, tuple[dict, dict | None, bytes]]] = []
        self._subs: dict[queue.Queue, str] = {}  # open watch → its resource
        self._continues: dict[str, tuple[int, list[bytes]]] = {}  # token → (list rv, items still to serve)
        self._continue_seq = 0
        # True: every continue token answers 410 Gone, as if etcd compacted
        # between any two pages (a client must then list in one response).
        self.continues_expire = False
        self._conns: set[socket.socket] = set()
        self._counts: Counter[str] = Counter()
        self._watch_params: list[tuple[str, dict[str, str]]] = []  # (resource, query)
        self._delays: dict[str | None, float] = {}
        self._denied: set[str] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "PodApiServer":
        """Listen (again) on 127.0.0.1; after a stop() the same port is reused."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"test-apiserver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: close the listener and every open connection (streams too)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        # Cut connections before waking stream handlers, so clients see an
        # abrupt end (no chunked terminator), as when a server vanishes.
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            for q in self._subs:
                q.put(_END)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> "PodApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- objects -------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def _record(self, ev_type: str, obj: dict, prev: dict | None, resource: str = "pods") -> dict:
        """Under the lock: bump the version, store (or drop) the object, log
        the change, fan it out."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        raw = json.dumps(obj).encode()
        uid = obj["metadata"]["uid"]
        if ev_type == "DELETED":
            self._objects[resource].pop(uid, None)
            self._json[resource].pop(uid, None)
        else:
            self._objects[resource][uid] = obj
            self._json[resource][uid] = raw
        entry = (obj, prev, raw)
        self._log.append((self._rv, resource, ev_type, entry))
        for q, res in self._subs.items():
            if res == resource:
                q.put((ev_type, entry))
        return obj

    def _add(self, resource: str, obj: dict) -> dict:
        with self._lock:
            uid = obj["metadata"]["uid"]
            if uid in self._objects[resource]:
                raise KeyError(f"{resource} uid {uid} already exists")
            return copy.deepcopy(self._record("ADDED", obj, None, resource))

    def _modify(self, resource: str, uid: str, mutate: Callable[[dict], object]) -> dict:
        with self._lock:
            prev = self._objects[resource][uid]
            new = copy.deepcopy(prev)
            mutate(new)
            return copy.deepcopy(self._record("MODIFIED", new, prev, resource))

    def _delete(self, resource: str, uid: str) -> None:
        with self._lock:
            prev = self._objects[resource][uid]
            self._record("DELETED", prev, prev, resource)

    def add_pod(self, pod: dict) -> dict:
        return self._add("pods", pod)

    def add_pods(self, pods: Iterable[dict]) -> int:
        """Add many pods at once (a fast path for thousands: no copies are
        returned).  Returns the resourceVersion after the last one."""
        with self._lock:
            for pod in pods:
                uid = pod["metadata"]["uid"]
                if uid in self._pods:
                    raise KeyError(f"pods uid {uid} already exists")
                self._record("ADDED", pod, None, "pods")
            return self._rv

    def modify_pod(self, uid: str, mutate: Callable[[dict], object]) -> dict:
        """Apply ``mutate`` to a copy of the stored pod and publish MODIFIED."""
        return self._modify("pods", uid, mutate)

    def delete_pod(self, uid: str) -> None:
        self._delete("pods", uid)

    def delete_pods(self, uids: Iterable[str]) -> int:
        """Delete many pods at once; returns the resourceVersion after the last one."""
        with self._lock:
            for uid in uids:
                prev = self._pods[uid]
                self._record("DELETED", prev, prev, "pods")
            return self._rv

    def pods(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._pods.values()))

    def add_service(self, service: dict) -> dict:
        return self._add("services", service)

    def modify_service(self, uid: str, mutate: Callable[[dict], object]) -> dict:
        """Apply ``mutate`` to a copy of the stored service and publish MODIFIED."""
        return self._modify("services", uid, mutate)

    def delete_service(self, uid: str) -> None:
        self._delete("services", uid)

    def services(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._objects["services"].values()))

    def add_node(self, node: dict) -> dict:
        return self._add("nodes", node)

    def modify_node(self, uid: str, mutate: Callable[[dict], object]) -> dict:
        """Apply ``mutate`` to a copy of the stored node and publish MODIFIED."""
        return self._modify("nodes", uid, mutate)

    def delete_node(self, uid: str) -> None:
        self._delete("nodes", uid)

    def nodes(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._objects["nodes"].values()))

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current version to open watches that allow them."""
        with self._lock:
            for q, resource in self._subs.items():
                obj = {"kind": _RESOURCES[resource][0], "apiVersion": "v1",
                       "metadata": {"resourceVersion": str(self._rv)}}
                q.put(("BOOKMARK", obj))
            return self._rv

    def advance(self, n: int = 1) -> int:
        """Bump the version without a change of ours (other objects changing in etcd)."""
        with self._lock:
            self._rv += n
            return self._rv

    def compact(self) -> int:
        """Forget history: a watch from any older version, or a list continued
        from an older snapshot, now gets 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._log = [e for e in self._log if e[0] > self._compacted]
            self._continues = {t: c for t, c in self._continues.items() if c[0] >= self._compacted}
            return self._compacted

    def expire_continues(self) -> int:
        """Make every continue token handed out so far answer 410 Gone; returns how many."""
        with self._lock:
            n = len(self._continues)
            self._continues.clear()
            return n

    def end_watches(self) -> None:
        """End open watch streams cleanly, as a server-side timeout does."""
        with self._lock:
            for q in self._subs:
                q.put(_END)

    def expire_watches(self) -> None:
        """Send ERROR 410 to open watch streams and end them."""
        with self._lock:
            for q in self._subs:
                q.put(_EXPIRE)

    def open_watches(self, resource: str | None = None) -> int:
        """Open watch streams: of one resource ("pods", "services", "nodes") or all."""
        with self._lock:
            return sum(1 for r in self._subs.values() if resource is None or r == resource)

    # -- instrumentation ----------------------------------------------

    def set_delay(self, seconds: float, kind: str | None = None) -> None:
        """Delay responses of one kind ("list", "watch" (pods), "service-list",
        "node-watch", "version", ...) or, with None, all."""
        with self._lock:
            self._delays[kind] = seconds

    def deny(self, kind: str) -> None:
        """Answer requests of ``kind`` (as in set_delay) 403 Forbidden, as an
        API server does when the RBAC lacks the verb."""
        with self._lock:
            self._denied.add(kind)

    def allow(self, kind: str) -> None:
        with self._lock:
            self._denied.discard(kind)

    def _is_denied(self, kind: str) -> bool:
        with self._lock:
            return kind in self._denied

    def requests(self, kind: str | None = None) -> int | Counter:
        """Requests of one kind (as in set_delay) so far, or all as a Counter."""
        with self._lock:
            return self._counts[kind] if kind else Counter(self._counts)

    def watch_requests(self, resource: str = "pods") -> list[dict[str, str]]:
        """Query parameters of every watch request of ``resource`` so far, oldest first."""
        with self._lock:
            return [dict(p) for r, p in self._watch_params if r == resource]

    # -- handler helpers ----------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _count(self, kind: str, query: dict, resource: str | None = None) -> None:
        with self._lock:
            self._counts[kind] += 1
            if resource is not None and query.get("watch") in ("true", "1"):
                self._watch_params.append((resource, dict(query)))

    def _delay_for(self, kind: str) -> float:
        with self._lock:
            return self._delays.get(kind, self._delays.get(None, 0.0))

    def _list(self, resource: str, node: str | None, query: dict) -> tuple[int, dict | bytes]:
        """(HTTP status, body) of a list request, paged when it has ``limit``."""
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            return 400, _status(400, "BadRequest", f"invalid limit {query.get('limit')!r}")
        token = query.get("continue") or ""
        with self._lock:
            if token:
                cont = None if self.continues_expire else self._continues.pop(token, None)
                if cont is None:
                    return 410, _status(410, "Expired", "The provided continue parameter is too old "
                                        "to display a consistent list result. You can start a new list "
                                        "without the continue parameter.")
                rv, items = cont
            else:
                rv = self._rv
                objs = [o for o in self._objects[resource].values() if node is None or _node_of(o) == node]
                if limit > 0:  # pages of one snapshot, in key order as etcd serves them
                    objs.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
                raws = self._json[resource]
                items = [raws[o["metadata"]["uid"]] for o in objs]
            meta: dict = {"resourceVersion": str(rv)}
            if limit > 0 and len(items) > limit:
                items, rest = items[:limit], items[limit:]
                self._continue_seq += 1
                next_token = base64.urlsafe_b64encode(
                    json.dumps({"rv": rv, "seq": self._continue_seq}).encode()).decode()
                self._continues[next_token] = (rv, rest)
                meta.update({"continue": next_token, "remainingItemCount": len(rest)})
        head = {"kind": _RESOURCES[resource][1], "apiVersion": "v1", "metadata": meta}
        return 200, json.dumps(head).encode()[:-1] + b', "items": [' + b", ".join(items) + b"]}"

    def _subscribe(self, rv_param: str, node: str | None, resource: str = "pods"):
        """Backlog and live queue for a watch from ``rv_param``, or a 410 Status."""
        with self._lock:
            if rv_param in ("", "0"):
                # No version: the current state as synthetic ADDED, then changes.
                raws = self._json[resource]
                backlog = [_event_line("ADDED", raws[uid]) for uid, o in self._objects[resource].items()
                           if node is None or _node_of(o) == node]
            else:
                try:
                    since = int(rv_param)
                except ValueError:
                    return _status(400, "BadRequest", f"invalid resourceVersion {rv_param!r}")
                if since < self._compacted:
                    return _status(410, "Expired",
                                   f"too old resource version: {since} ({self._compacted})")
                backlog = []
                for rv, res, ev_type, entry in self._log:
                    if rv > since and res == resource:
                        line = _filter_event(ev_type, entry, node)
                        if line is not None:
                            backlog.append(line)
            q: queue.Queue = queue.Queue()
            self._subs[q] = resource
            return backlog, q

    def _unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subs.pop(q, None)
