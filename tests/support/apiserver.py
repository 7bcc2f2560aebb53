"""A test server that speaks the Kubernetes pod list/watch HTTP protocol.

This is NOT a Kubernetes API server.  It is a small threaded HTTP/1.1 server
(127.0.0.1, ephemeral port) that keeps pods in memory and answers the few
requests podsight's Kubernetes client makes, with the wire format of the real
API:

- ``GET /api/v1/pods?fieldSelector=spec.nodeName=X``: a ``PodList`` with
  ``metadata.resourceVersion``;
- ``GET /api/v1/pods?watch=true&resourceVersion=N&allowWatchBookmarks=true``:
  a chunked stream of JSON lines ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}`` replaying history after N, then live changes; objects that
  start or stop matching the field selector arrive as ADDED / DELETED, as
  they do from a real API server; BOOKMARK only when the client asked for it;
- ``410 Gone`` when N is older than the compaction point a test sets, either
  as an HTTP 410 ``Status`` or as a 200 stream with one ``ERROR`` event whose
  ``Status`` has ``code: 410`` (the form a real apiserver's watch cache uses);
- ``/version`` and ``/api`` for clients that probe them;
- bearer-token check (401 ``Status`` on a wrong token);
- plain HTTP, or HTTPS with a throwaway self-signed certificate
  (``make_tls_files``, needs the ``openssl`` command).

Test controls: add / modify / delete pods, send bookmarks, compact history,
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
    "make_pod",
    "start_container",
    "write_kubeconfig",
    "make_tls_files",
    "DEFAULT_TOKEN",
]

DEFAULT_TOKEN = "podsight-test-token"

_END = object()  # queue sentinel: end the stream cleanly (like timeoutSeconds)
_EXPIRE = object()  # queue sentinel: send ERROR 410, then end


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
) -> dict:
    """A v1 Pod as the API returns it, not yet started (no container IDs).

    ``owner`` is ``(kind, name)`` of the controlling owner reference;
    ``containers`` are ``(name, image)`` pairs.
    """
    containers = list(containers)
    init_containers = list(init_containers)
    meta: dict = {
        "name": name,
        "namespace": namespace,
        "uid": uid or str(uuid.uuid4()),
        "labels": dict(labels or {}),
        "creationTimestamp": "2026-01-01T00:00:00Z",
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
            "containers": [{"name": c, "image": i} for c, i in containers],
            **({"initContainers": [{"name": c, "image": i} for c, i in init_containers]}
               if init_containers else {}),
        },
        "status": {
            "phase": "Pending",
            "containerStatuses": [waiting(c, i) for c, i in containers],
            **({"initContainerStatuses": [waiting(c, i) for c, i in init_containers]}
               if init_containers else {}),
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

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
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
        if path == "/api/v1/pods":
            kind = "watch" if watch else "list"
        owner._count(kind, query)
        delay = owner._delay_for(kind)
        if delay:
            time.sleep(delay)
        if owner.token and self.headers.get("Authorization") != f"Bearer {owner.token}":
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        if kind == "version":
            self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-podsight-test",
                                  "platform": "linux/amd64"})
        elif kind == "api":
            self._send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                  "serverAddressByClientCIDRs": []})
        elif kind in ("list", "watch"):
            try:
                node = _parse_field_selector(query.get("fieldSelector", ""))
            except ValueError as e:
                self._send_json(400, _status(400, "BadRequest", str(e)))
                return
            if kind == "list":
                self._send_json(200, owner._pod_list(node))
            else:
                self._watch(owner, node, query)
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

    def _watch(self, owner: "PodApiServer", node: str | None, query: dict) -> None:
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        sub = owner._subscribe(query.get("resourceVersion", ""), node)
        if isinstance(sub, dict):  # a Status: too old (410) or a bad version (400)
            if owner.gone_mode == "status" or sub["code"] != 410:
                self._send_json(sub["code"], sub)
                return
            backlog, q = [{"type": "ERROR", "object": sub}], None
        else:
            backlog, q = sub
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + timeout if timeout else None
        try:
            for ev in backlog:
                self._write_chunk(json.dumps(ev).encode() + b"\n")
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
                    self._write_chunk(json.dumps({"type": "ERROR", "object": st}).encode() + b"\n")
                    break
                ev_type, obj = item
                if ev_type == "BOOKMARK" and not bookmarks:
                    continue
                ev = _filter_event(ev_type, obj, node)
                if ev is not None:
                    self._write_chunk(json.dumps(ev).encode() + b"\n")
            self._write_chunk(b"")  # chunked terminator: a clean end of the watch
        except OSError:
            pass  # client went away or the server is stopping
        finally:
            if q is not None:
                owner._unsubscribe(q)


def _parse_field_selector(selector: str) -> str | None:
    if not selector:
        return None
    key, sep, value = selector.partition("=")
    if key == "spec.nodeName" and sep and not value.startswith("="):
        return value
    raise ValueError(f"test server supports only fieldSelector=spec.nodeName=<node>, got {selector!r}")


def _node_of(obj: Mapping | None) -> str | None:
    if obj is None:
        return None
    return (obj.get("spec") or {}).get("nodeName") or ""


def _filter_event(ev_type: str, entry, node: str | None) -> dict | None:
    """Apply the field selector the way the apiserver does for watches."""
    if ev_type == "BOOKMARK":
        return {"type": "BOOKMARK", "object": entry}
    obj, prev = entry
    if node is None:
        return {"type": ev_type, "object": obj}
    now = _node_of(obj) == node
    before = _node_of(prev) == node if prev is not None else None
    if ev_type == "ADDED":
        return {"type": "ADDED", "object": obj} if now else None
    if ev_type == "DELETED":
        return {"type": "DELETED", "object": obj} if now else None
    # MODIFIED: entering or leaving the selection is ADDED / DELETED.
    if now and before:
        return {"type": "MODIFIED", "object": obj}
    if now:
        return {"type": "ADDED", "object": obj}
    if before:
        return {"type": "DELETED", "object": obj}
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
        self._pods: dict[str, dict] = {}
        self._rv = 1
        self._compacted = 0
        self._log: list[tuple[int, str, tuple[dict, dict | None]]] = []
        self._subs: set[queue.Queue] = set()
        self._conns: set[socket.socket] = set()
        self._counts: Counter[str] = Counter()
        self._watch_params: list[dict[str, str]] = []
        self._delays: dict[str | None, float] = {}
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

    # -- pods ----------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def _record(self, ev_type: str, obj: dict, prev: dict | None) -> dict:
        """Under the lock: bump the version, log the change, fan it out."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        entry = (obj, prev)
        self._log.append((self._rv, ev_type, entry))
        for q in self._subs:
            q.put((ev_type, entry))
        return obj

    def add_pod(self, pod: dict) -> dict:
        with self._lock:
            uid = pod["metadata"]["uid"]
            if uid in self._pods:
                raise KeyError(f"pod uid {uid} already exists")
            stored = self._record("ADDED", pod, None)
            self._pods[uid] = stored
            return copy.deepcopy(stored)

    def modify_pod(self, uid: str, mutate: Callable[[dict], object]) -> dict:
        """Apply ``mutate`` to a copy of the stored pod and publish MODIFIED."""
        with self._lock:
            prev = self._pods[uid]
            new = copy.deepcopy(prev)
            mutate(new)
            stored = self._record("MODIFIED", new, prev)
            self._pods[uid] = stored
            return copy.deepcopy(stored)

    def delete_pod(self, uid: str) -> None:
        with self._lock:
            prev = self._pods.pop(uid)
            self._record("DELETED", prev, prev)

    def pods(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._pods.values()))

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current version to open watches that allow them."""
        with self._lock:
            obj = {"kind": "Pod", "apiVersion": "v1",
                   "metadata": {"resourceVersion": str(self._rv)}}
            for q in self._subs:
                q.put(("BOOKMARK", obj))
            return self._rv

    def advance(self, n: int = 1) -> int:
        """Bump the version without a pod change (other objects changing in etcd)."""
        with self._lock:
            self._rv += n
            return self._rv

    def compact(self) -> int:
        """Forget history: a watch from any older version now gets 410 Gone."""
        with self._lock:
            self._compacted = self._rv
            self._log = [e for e in self._log if e[0] > self._compacted]
            return self._compacted

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

    def open_watches(self) -> int:
        with self._lock:
            return len(self._subs)

    # -- instrumentation ----------------------------------------------

    def set_delay(self, seconds: float, kind: str | None = None) -> None:
        """Delay responses of one kind ("list", "watch", ...) or, with None, all."""
        with self._lock:
            self._delays[kind] = seconds

    def requests(self, kind: str | None = None) -> int | Counter:
        with self._lock:
            return self._counts[kind] if kind else Counter(self._counts)

    def watch_requests(self) -> list[dict[str, str]]:
        """Query parameters of every watch request so far, oldest first."""
        with self._lock:
            return [dict(p) for p in self._watch_params]

    # -- handler helpers ----------------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _count(self, kind: str, query: dict) -> None:
        with self._lock:
            self._counts[kind] += 1
            if kind == "watch":
                self._watch_params.append(dict(query))

    def _delay_for(self, kind: str) -> float:
        with self._lock:
            return self._delays.get(kind, self._delays.get(None, 0.0))

    def _pod_list(self, node: str | None) -> dict:
        with self._lock:
            items = [copy.deepcopy(p) for p in self._pods.values()
                     if node is None or _node_of(p) == node]
            rv = self._rv
        return {"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def _subscribe(self, rv_param: str, node: str | None):
        """Backlog and live queue for a watch from ``rv_param``, or a 410 Status."""
        with self._lock:
            if rv_param in ("", "0"):
                # No version: the current state as synthetic ADDED, then changes.
                backlog = [{"type": "ADDED", "object": copy.deepcopy(p)} for p in self._pods.values()
                           if node is None or _node_of(p) == node]
            else:
                try:
                    since = int(rv_param)
                except ValueError:
                    return _status(400, "BadRequest", f"invalid resourceVersion {rv_param!r}")
                if since < self._compacted:
                    return _status(410, "Expired",
                                   f"too old resource version: {since} ({self._compacted})")
                backlog = []
                for rv, ev_type, entry in self._log:
                    if rv > since:
                        ev = _filter_event(ev_type, entry, node)
                        if ev is not None:
                            backlog.append(ev)
            q: queue.Queue = queue.Queue()
            self._subs.add(q)
            return backlog, q

    def _unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subs.discard(q)
