"""Agent configuration: YAML file, then ``PODSIGHT_*`` environment, then flags.

Validation happens before anything touches the kernel.  Every error names the
source (file and line, env variable or flag), the key, and what was expected,
so a broken ConfigMap fails the pod at start instead of half-running.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DEFAULT_LISTEN",
    "Duration",
    "load_config",
    "parse_listen",
]

# 9100-9999 is fully allocated on the Prometheus "Default port allocations"
# wiki page; 9963 is our pick and is documented in the README.
DEFAULT_LISTEN = "0.0.0.0:9963"


# PODSIGHT_* variables that are not config keys (paths for the runtime itself).
ENV_NOT_CONFIG = frozenset({"PODSIGHT_CONFIG", "PODSIGHT_BPF_DIR", "PODSIGHT_LIBBPF"})


class ConfigError(ValueError):
    """A configuration problem, with where it came from."""


class Duration(float):
    """Seconds, written in YAML as ``30s``, ``5m``, ``1h``, ``250ms`` or a number."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    _RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")

    @classmethod
    def parse(cls, value: object) -> "Duration":
        if isinstance(value, bool):
            raise ValueError("a duration like 30s, 5m or 1h")
        if isinstance(value, (int, float)):
            return cls(float(value))
        m = cls._RE.match(str(value))
        if not m:
            raise ValueError("a duration like 30s, 5m or 1h")
        return cls(float(m.group(1)) * cls._UNITS[m.group(2) or "s"])


@dataclass
class NetworkProbe:
    enabled: bool = True


@dataclass
class TcpProbe:
    enabled: bool = True
    # How often the RTT sampler visits the tracked connections: each that
    # received segments since its last sample adds one (and one as it closes).
    srtt_sample_interval: Duration = Duration(1.0)
    # Connections open at once the kernel tracks (kernel memory is reserved
    # for all of them, about 100 bytes each); beyond it, new connections'
    # opens still count but their closes and RTT do not.
    max_tracked_connections: int = 65536
    # Kernel drop reasons (names as in the `reason` label) not counted in
    # podsight_network_drops_total.  QUEUE_PURGE is a closed socket's queue
    # being freed: the peer's FIN reaching a connection we closed first, for
    # most actively closed connections; not a network drop.
    ignored_drop_reasons: list[str] = field(default_factory=lambda: ["QUEUE_PURGE"])


@dataclass
class TlsProbe:
    enabled: bool = True
    # How often /proc is scanned for TLS library files that pod processes
    # map.  Processes that map an already-probed file are covered at once
    # (the probe is on the file); a new copy of the library is seen within
    # one interval.
    rescan_interval: Duration = Duration(10.0)
    # A handshake not finished this long after its first call counts as
    # failed (abandoned, timed out, or its SSL freed: nothing else tells).
    handshake_timeout: Duration = Duration(10.0)
    # The host's /proc (processes' maps and roots); /host/proc in a pod without hostPID.
    proc_root: str = "/proc"


@dataclass
class Probes:
    network: NetworkProbe = field(default_factory=NetworkProbe)
    tcp: TcpProbe = field(default_factory=TcpProbe)
    tls: TlsProbe = field(default_factory=TlsProbe)


@dataclass
class Kubernetes:
    # "auto": use the API when in a pod or when a kubeconfig is given.
    enabled: str = "auto"
    kubeconfig: str = ""
    # How long series of a deleted pod stay exported.  Long enough for a
    # couple of scrapes at common intervals (15-60 s) to see the final value.
    grace_period: Duration = Duration(300.0)


@dataclass
class Labels:
    # "container" or "pod": the level traffic is aggregated at.
    level: str = "container"
    image: bool = False
    workload: bool = False
    pod_labels: list[str] = field(default_factory=list)


@dataclass
class RateLimit:
    events_per_second: int = 100
    burst: int = 200


@dataclass
class Guard:
    events_per_second: int = 1000
    burst: int = 2000


@dataclass
class Egress:
    allowed_cidrs: list[str] = field(default_factory=list)
    # Where pods reach the Kubernetes API; empty: $KUBERNETES_SERVICE_HOST.
    kubernetes_api_cidrs: list[str] = field(default_factory=list)


@dataclass
class Aggregate:
    # Repeats of one detection (rule, cgroup, program, parent, target) within
    # the window: one summary line with a count.  0: every occurrence a line.
    window: Duration = Duration(10.0)
    # Distinct detections written per rule and cgroup per window; beyond: dropped, counted.
    max_lines: int = 100


@dataclass
class HttpRetry:
    # Attempts per batch, the first included; then its events count as http_failed.
    max_attempts: int = 3
    # Wait before the second attempt; doubled before each further one (at most 60 s).
    backoff: Duration = Duration(1.0)


@dataclass
class HttpOutput:
    # Empty: no HTTP output.  http:// or https://; Falcosidekick listens at "/".
    url: str = ""
    # Added to every request, e.g. Authorization (values are never logged).
    headers: dict[str, str] = field(default_factory=dict)
    # Events per POST: 1 posts one JSON object (what Falcosidekick and most
    # webhooks take); more posts newline-delimited JSON (application/x-ndjson).
    batch: int = 1
    # Per attempt: connecting, sending, and each wait for the answer.
    timeout: Duration = Duration(5.0)
    # Events waiting in memory; beyond, new ones are dropped (http_queue_full).
    max_queue: int = 10000
    retry: HttpRetry = field(default_factory=HttpRetry)


@dataclass
class SecurityOutput:
    stdout: bool = True
    file: str = ""
    # podsight | falco (Falco's JSON output, for Falcosidekick) | ecs (Elastic Common Schema)
    format: str = "podsight"
    aggregate: Aggregate = field(default_factory=Aggregate)
    http: HttpOutput = field(default_factory=HttpOutput)


@dataclass
class Security:
    enabled: bool = False
    # "builtin:default" names the rules shipped with podsight.
    rules_files: list[str] = field(default_factory=lambda: ["builtin:default"])
    include_host: bool = False
    # The host's /proc (for exe and cwd of a process); /host/proc in a pod without hostPID.
    proc_root: str = "/proc"
    ringbuf_size_kb: int = 256
    # Per pod and rule clause: events that may match a rule (the kernel filter's candidates).
    rate_limit: RateLimit = field(default_factory=RateLimit)
    # Per pod: events whose path the kernel cannot judge (relative, ../), sent for user space to judge.
    guard: Guard = field(default_factory=Guard)
    egress: Egress = field(default_factory=Egress)
    output: SecurityOutput = field(default_factory=SecurityOutput)


def _private_cidrs() -> dict[str, list[str]]:
    return {"private": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]}


@dataclass
class FlowsExternal:
    # Peers outside the cluster, by named CIDR sets: the longest matching
    # prefix names the set (peer_workload="<set>").
    cidr_sets: dict[str, list[str]] = field(default_factory=_private_cidrs)
    # The set of every address no CIDR set holds.
    default_set: str = "internet"
    # Also export the raw address (peer_ip) of the top_ips external peers by
    # bytes per workload; off: no raw IP is ever a label.
    raw_ips: bool = False
    top_ips: int = 10


@dataclass
class Flows:
    # Who talks to whom: per-edge TCP flows (tcp.bpf.c keeps the peer of each
    # connection it tracks; no per-packet work).  Needs the tcp probe.
    enabled: bool = True
    # "workload": workload <-> peer workload; "pod": pod <-> peer pod.
    level: str = "workload"
    # Peers exported per local workload (by bytes over peer_window); the rest
    # are folded into peer_workload="~other".
    max_peers_per_workload: int = 20
    peer_window: Duration = Duration(300.0)
    # An edge with no new traffic for this long leaves /metrics.
    idle_timeout: Duration = Duration(600.0)
    # Kernel flow map entries (per node) for edges; a quarter of it (at least
    # 1,024) for connections to Service addresses open at once.
    max_flows: int = 16384
    # Name the backend a Service connection reached from the host network
    # namespace's conntrack NAT tuples (the agent needs CAP_NET_ADMIN there).
    conntrack: bool = True
    # Service ClusterIP ranges whose connections are followed one by one (to
    # find their backend); empty: learned from the ClusterIPs the agent sees.
    service_cidrs: list[str] = field(default_factory=list)
    # The Node label that names a node's zone.
    zone_label: str = "topology.kubernetes.io/zone"
    external: FlowsExternal = field(default_factory=FlowsExternal)


@dataclass
class Config:
    listen: str = DEFAULT_LISTEN
    node_name: str = ""
    log_level: str = "info"
    # Empty: detect the cgroup v2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified).
    cgroup_root: str = ""
    # How often the identity resolver may walk the cgroup tree for ids it could
    # not open by handle; five times this, it sweeps for cgroups that are gone.
    rescan_interval: Duration = Duration(2.0)
    # Kernel BPF run-time statistics (podsight_bpf_program_*): each program run
    # then costs two clock reads more, so it is opt-in.
    bpf_stats: bool = False
    probes: Probes = field(default_factory=Probes)
    kubernetes: Kubernetes = field(default_factory=Kubernetes)
    labels: Labels = field(default_factory=Labels)
    security: Security = field(default_factory=Security)
    flows: Flows = field(default_factory=Flows)


_CHOICES = {
    "log_level": ("debug", "info", "warning", "error"),
    "kubernetes.enabled": ("auto", "true", "false"),
    "labels.level": ("container", "pod"),
    "flows.level": ("workload", "pod"),
    "security.output.format": ("podsight", "falco", "ecs"),
}
# enum skb_drop_reason names, as the kernel's tracepoint format prints them.
_DROP_REASON = re.compile(r"[A-Z][A-Z0-9_]*")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) → (host, port)."""
    m = re.match(r"^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d{1,5})$", value)
    if not m:
        raise ValueError("an address like 0.0.0.0:9963 or [::]:9963")
    host = m.group(1) if m.group(1) is not None else m.group(2)
    port = int(m.group(3))
    if port > 65535:
        raise ValueError("a port between 0 and 65535 (0: any free port)")
    if m.group(1) is not None:
        ipaddress.IPv6Address(host)
    return host or "0.0.0.0", port


def _describe(tp: object) -> str:
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if tp is Duration:
        return "a duration like 30s, 5m or 1h"
    if typing.get_origin(tp) is list:
        return "a list of strings"
    if typing.get_origin(tp) is dict:
        return "a mapping of names to lists of strings" if typing.get_args(tp)[1] != str else "a mapping of names to strings"
    return "a mapping"


class _Loader:
    """Walks a YAML node tree against the dataclasses, keeping line numbers."""

    def __init__(self, source: str):
        self.source = source

    def where(self, node: yaml.Node | None) -> str:
        if node is None or node.start_mark is None:
            return self.source
        return f"{self.source}:{node.start_mark.line + 1}"

    def fail(self, node, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.where(node)}: {key}: {message}")

    def apply(self, obj: object, node: yaml.Node, prefix: str = "") -> None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, prefix.rstrip(".") or "(top level)", "expected a mapping")
        hints = typing.get_type_hints(type(obj))
        names = {f.name for f in dataclasses.fields(obj)}
        seen: set[str] = set()
        for knode, vnode in node.value:
            key = knode.value
            path = f"{prefix}{key}"
            if key not in names:
                allowed = ", ".join(sorted(names))
                self.fail(knode, path, f"unknown key (expected one of: {allowed})")
            if key in seen:
                self.fail(knode, path, "key appears twice")
            seen.add(key)
            tp = hints[key]
            if dataclasses.is_dataclass(tp):
                self.apply(getattr(obj, key), vnode, path + ".")
            else:
                setattr(obj, key, self.convert(tp, vnode, path))

    def convert(self, tp: object, node: yaml.Node, path: str):
        expected = _describe(tp)
        if typing.get_origin(tp) is list:
            if not isinstance(node, yaml.SequenceNode):
                self.fail(node, path, f"expected {expected}")
            return [self.convert(str, item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if typing.get_origin(tp) is dict:
            if not isinstance(node, yaml.MappingNode):
                self.fail(node, path, f"expected {expected}")
            out: dict[str, object] = {}
            vtype = typing.get_args(tp)[1] if typing.get_args(tp) else str
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode) or knode.value == "":
                    self.fail(knode, path, "expected a non-empty name")
                if knode.value in out:
                    self.fail(knode, f"{path}.{knode.value}", "key appears twice")
                out[knode.value] = self.convert(vtype, vnode, f"{path}.{knode.value}")
            return out
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, path, f"expected {expected}")
        value = yaml.safe_load(yaml.serialize(node)) if node.value != "" else ""
        return self.scalar(tp, value, node, path)

    def scalar(self, tp: object, value: object, node, path: str):
        expected = _describe(tp)
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(node, path, f"expected {expected}, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(node, path, f"expected {expected}, got {value!r}")
            return value
        if tp is Duration:
            try:
                return Duration.parse(value)
            except ValueError:
                self.fail(node, path, f"expected {expected}, got {value!r}")
        if tp is str:
            if isinstance(value, bool):
                # YAML 1.1 reads "true" as a boolean; accept it for string switches.
                return "true" if value else "false"
            if not isinstance(value, (str, int, float)):
                self.fail(node, path, f"expected {expected}, got {value!r}")
            return str(value)
        raise AssertionError(tp)


def _check(cfg: Config, where: dict[str, str]) -> None:
    """Cross-field checks that types alone do not catch."""

    def fail(key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{where.get(key, 'config')}: {key}: {message}")

    for key, choices in _CHOICES.items():
        obj: object = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            fail(key, f"expected one of {', '.join(choices)}, got {obj!r}")
    try:
        parse_listen(cfg.listen)
    except ValueError as e:
        fail("listen", f"expected {e}, got {cfg.listen!r}")
    if cfg.security.rate_limit.events_per_second < 1:
        fail("security.rate_limit.events_per_second", "expected a positive integer")
    if cfg.security.rate_limit.burst < 1:
        fail("security.rate_limit.burst", "expected a positive integer")
    if cfg.security.guard.events_per_second < 1:
        fail("security.guard.events_per_second", "expected a positive integer")
    if cfg.security.guard.burst < 1:
        fail("security.guard.burst", "expected a positive integer")
    if not 1024 <= cfg.probes.tcp.max_tracked_connections <= 4_194_304:
        fail("probes.tcp.max_tracked_connections",
             f"expected an integer from 1024 to 4194304, got {cfg.probes.tcp.max_tracked_connections}")
    if cfg.probes.tls.rescan_interval < 0.1:
        fail("probes.tls.rescan_interval", f"expected at least 100ms, got {cfg.probes.tls.rescan_interval:g}s")
    if cfg.probes.tls.handshake_timeout < 1:
        fail("probes.tls.handshake_timeout", f"expected at least 1s, got {cfg.probes.tls.handshake_timeout:g}s")
    for i, name in enumerate(cfg.probes.tcp.ignored_drop_reasons):
        if not _DROP_REASON.fullmatch(name):
            fail(f"probes.tcp.ignored_drop_reasons[{i}]",
                 f"expected a kernel drop reason name like QUEUE_PURGE, got {name!r}")
    if cfg.security.output.aggregate.max_lines < 1:
        fail("security.output.aggregate.max_lines", "expected a positive integer")
    size = cfg.security.ringbuf_size_kb
    if size < 4 or size & (size - 1):
        fail("security.ringbuf_size_kb", f"expected a power of two >= 4, got {size}")
    for key in ("allowed_cidrs", "kubernetes_api_cidrs"):
        for i, cidr in enumerate(getattr(cfg.security.egress, key)):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                fail(f"security.egress.{key}[{i}]", f"expected a CIDR, got {cidr!r}")
    for i, name in enumerate(cfg.labels.pod_labels):
        if not name or len(name) > 317:
            fail(f"labels.pod_labels[{i}]", f"expected a Kubernetes label key, got {name!r}")
    _check_flows(cfg.flows, fail)
    _check_http(cfg.security.output.http, fail)


def _check_flows(flows: Flows, fail) -> None:
    if not 1 <= flows.max_peers_per_workload <= 10_000:
        fail("flows.max_peers_per_workload", f"expected an integer from 1 to 10000, got {flows.max_peers_per_workload}")
    if not 1024 <= flows.max_flows <= 1_048_576:
        fail("flows.max_flows", f"expected an integer from 1024 to 1048576, got {flows.max_flows}")
    if flows.peer_window < 10:
        fail("flows.peer_window", f"expected at least 10s, got {flows.peer_window:g}s")
    if flows.idle_timeout < 10:
        fail("flows.idle_timeout", f"expected at least 10s, got {flows.idle_timeout:g}s")
    if not 0 <= flows.external.top_ips <= 1000:
        fail("flows.external.top_ips", f"expected an integer from 0 to 1000, got {flows.external.top_ips}")
    for i, cidr in enumerate(flows.service_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            fail(f"flows.service_cidrs[{i}]", f"expected a CIDR, got {cidr!r}")
    names = set(flows.external.cidr_sets)
    if not flows.external.default_set or not _SET_NAME.fullmatch(flows.external.default_set):
        fail("flows.external.default_set", f"expected a name of letters, digits, '-' and '_', got {flows.external.default_set!r}")
    for name, cidrs in flows.external.cidr_sets.items():
        if not _SET_NAME.fullmatch(name):
            fail(f"flows.external.cidr_sets.{name}", "expected a name of letters, digits, '-' and '_'")
        for i, cidr in enumerate(cidrs):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                fail(f"flows.external.cidr_sets.{name}[{i}]", f"expected a CIDR, got {cidr!r}")
    if flows.external.default_set in names:
        fail("flows.external.default_set", f"{flows.external.default_set!r} is also a CIDR set's name")


# A CIDR set's name: a label value people type in queries.
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# RFC 9110 token: what a header name may be.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _without_userinfo(url: str) -> str:
    """The URL for an error message: a password in it is not repeated."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _check_http(http: HttpOutput, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    key = "security.output.http"
    if http.url:
        try:
            parts = urllib.parse.urlsplit(http.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or any(c.isspace() for c in http.url)):
            fail(f"{key}.url", f"expected an http:// or https:// URL, got {_without_userinfo(http.url)!r}")
    for name, value in http.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            fail(f"{key}.headers.{name}", "expected an HTTP header name (letters, digits, -)")
        if "\r" in value or "\n" in value or "\0" in value:
            fail(f"{key}.headers.{name}", "expected a header value without line breaks")  # the value may be a secret
    if not 1 <= http.batch <= 10000:
        fail(f"{key}.batch", f"expected an integer from 1 to 10000, got {http.batch}")
    if http.timeout <= 0:
        fail(f"{key}.timeout", "expected a duration above 0")
    if http.max_queue < http.batch:
        fail(f"{key}.max_queue", f"expected at least batch ({http.batch}) events, got {http.max_queue}")
    if not 1 <= http.retry.max_attempts <= 100:
        fail(f"{key}.retry.max_attempts", f"expected an integer from 1 to 100, got {http.retry.max_attempts}")
    if http.retry.backoff < 0:
        fail(f"{key}.retry.backoff", "expected a duration of 0 or more")


def _where_map(node: yaml.Node | None, source: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            path = prefix + str(knode.value)
            out[path] = f"{source}:{knode.start_mark.line + 1}"
            if isinstance(vnode, yaml.SequenceNode):
                for i, item in enumerate(vnode.value):
                    out[f"{path}[{i}]"] = f"{source}:{item.start_mark.line + 1}"
            out.update(_where_map(vnode, source, path + "."))
    return out


def _env_node(name: str, raw: str) -> yaml.Node:
    try:
        return yaml.compose(raw) or yaml.ScalarNode("tag:yaml.org,2002:null", "")
    except yaml.YAMLError as e:
        raise ConfigError(f"environment {name}: not valid YAML: {e}") from None


def _nest(path: str, node: yaml.Node) -> yaml.MappingNode:
    parts = path.split(".")
    for part in reversed(parts):
        node = yaml.MappingNode(
            "tag:yaml.org,2002:map",
            [(yaml.ScalarNode("tag:yaml.org,2002:str", part), node)],
        )
    return node


def load_config(
    path: str | os.PathLike | None = None,
    env: typing.Mapping[str, str] | None = None,
    overrides: typing.Mapping[str, object] | None = None,
) -> Config:
    """Build the effective configuration.

    ``env`` keys look like ``PODSIGHT_LISTEN`` or ``PODSIGHT_SECURITY__ENABLED``
    (double underscore descends into a section).  ``overrides`` are flag values
    keyed by dotted path and win over everything else.
    """
    cfg = Config()
    where: dict[str, str] = {}
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
        if root is not None and not (isinstance(root, yaml.ScalarNode) and root.value == ""):
            _Loader(source).apply(cfg, root)
            where.update(_where_map(root, source))
    for name, raw in sorted((env if env is not None else os.environ).items()):
        if not name.startswith("PODSIGHT_") or name in ENV_NOT_CONFIG:
            continue
        dotted = name[len("PODSIGHT_"):].lower().replace("__", ".")
        _Loader(f"environment {name}").apply(cfg, _nest(dotted, _env_node(name, raw)))
        where[dotted] = f"environment {name}"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        obj: object = cfg
        parts = dotted.split(".")
        for part in parts[:-1]:
            obj = getattr(obj, part)
        tp = typing.get_type_hints(type(obj))[parts[-1]]
        flag = "--" + parts[-1].replace("_", "-")
        setattr(obj, parts[-1], _Loader(f"flag {flag}").scalar(tp, value, None, dotted))
        where[dotted] = f"flag {flag}"
    _check(cfg, where)
    return cfg
