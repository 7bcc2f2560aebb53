"""The chart's rendered DaemonSet pod template → a ``podman run`` command line.

What is carried over, field by field (``podman_run_args``):

- the container: ``image`` (replaced by the image under test), ``command``
  (``--entrypoint``), ``args`` with the kubelet's ``$(VAR)`` expansion done
  here (podman kube play 4.3 does not expand them), ``env`` values and the
  ``fieldRef``s a node can answer (``spec.nodeName`` → the given node name,
  ``metadata.name``/``metadata.namespace``/``metadata.uid``);
- ``securityContext``: ``capabilities`` add/drop, ``readOnlyRootFilesystem``,
  ``privileged``, ``allowPrivilegeEscalation: false`` (no-new-privileges),
  ``runAsUser``/``runAsGroup``, ``seccompProfile`` (``Unconfined`` →
  ``seccomp=unconfined``, ``RuntimeDefault`` → podman's default profile,
  ``Localhost`` → ``seccomp=<seccomp_dir>/<localhostProfile>``: the kubelet
  resolves it under /var/lib/kubelet/seccomp, the tests pass the chart's
  files/seccomp) and ``appArmorProfile`` (container level
  wins over pod level, as in Kubernetes);
- volumes: ``hostPath`` (``type: Directory`` must exist, as the kubelet
  checks), ``configMap`` (the caller writes each ConfigMap's keys as files in
  ``configmap_dirs[name]``; ``subPath`` mounts that one file),
  ``emptyDir`` (a tmpfs, ``sizeLimit`` as its size); ``readOnly`` → ``ro``;
- ``hostNetwork`` (``--network host``; otherwise ``network``, which must be
  ``none`` or ``slirp4netns``: never podman's bridge), ``hostPID``
  (``--pid host``), ``containerPort``s (published on 127.0.0.1 only with
  slirp4netns; with ``none`` they are reached inside the pod's netns),
  ``resources.limits`` memory and cpu (``--memory``, ``--cpus``),
  ``terminationGracePeriodSeconds`` (``--stop-timeout``), the pod's labels.

What cannot be carried over (listed in ``IGNORED``, skipped on purpose;
any other field raises ``Untranslatable`` so a chart change is noticed):

- liveness/readiness/startup probes: no kubelet runs them (the tests
  request /healthz, /readyz and /metrics themselves);
- ``resources.requests``: scheduling and cpu shares, nothing to schedule;
- ``serviceAccountName``/``automountServiceAccountToken``: no API server, no
  token is mounted (the agent runs without pod metadata from the API);
- ``dnsPolicy``, ``nodeSelector``, ``tolerations``, ``affinity``,
  ``priorityClassName``, ``imagePullPolicy``/``imagePullSecrets``: scheduler,
  CNI DNS and registry concerns;
- ``recursiveReadOnly``: podman 4.3 has no ``rro`` bind option; the
  cgroup and tracefs mounts are read-only on their top mount only (as on
  kubelets before 1.30 or without runtime support);
- ``runAsNonRoot``: only an admission-time check on the user;
- rlimits: Kubernetes has none, a container gets its runtime's; the caller
  passes ``--ulimit`` (tests/image/runtime.py: podman's default nofile and
  nproc are above what a process without CAP_SYS_RESOURCE may set here);
- the pod's annotations (config checksum) and the ConfigMap's live update.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

NETWORKS = ("none", "slirp4netns")

# Fields skipped on purpose: the docstring says why.
IGNORED_POD = {"serviceAccountName", "automountServiceAccountToken", "dnsPolicy", "nodeSelector",
               "tolerations", "affinity", "priorityClassName", "imagePullSecrets", "securityContext"}
IGNORED_CONTAINER = {"livenessProbe", "readinessProbe", "startupProbe", "imagePullPolicy", "name",
                     "terminationMessagePath", "terminationMessagePolicy"}
IGNORED_MOUNT = {"recursiveReadOnly", "name"}
IGNORED_SECURITY = {"runAsNonRoot"}


class Untranslatable(ValueError):
    """A field this translation does not know: carry it over or list it in IGNORED_*."""


def _check_known(obj: dict, known: set[str], where: str) -> None:
    unknown = set(obj) - known
    if unknown:
        raise Untranslatable(f"{where}: no translation for {sorted(unknown)}")


def quantity_bytes(q: str | int) -> int:
    """A Kubernetes memory quantity (16Mi, 512M, 1Gi, 1000) in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]i?|)", str(q))
    if not m:
        raise Untranslatable(f"quantity {q!r}")
    n, unit = int(m.group(1)), m.group(2)
    powers = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return n * powers[unit]


def quantity_cpus(q: str | int | float) -> str:
    s = str(q)
    return str(int(s[:-1]) / 1000) if s.endswith("m") else s


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: known names replaced, $$ escapes, unknown kept."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def _field_ref(path: str, pod: dict) -> str:
    if path not in pod:
        raise Untranslatable(f"fieldRef {path}: only {sorted(pod)}")
    return pod[path]


def _env(container: dict, pod: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in container.get("env", []):
        _check_known(e, {"name", "value", "valueFrom"}, f"env {e.get('name')}")
        if "valueFrom" in e:
            src = e["valueFrom"]
            if set(src) != {"fieldRef"}:
                raise Untranslatable(f"env {e['name']}: valueFrom {sorted(src)}")
            out[e["name"]] = _field_ref(src["fieldRef"]["fieldPath"], pod)
        else:
            out[e["name"]] = expand(str(e.get("value", "")), out)
    return out


def _security(sc: dict, pod_sc: dict, seccomp_dir: Path) -> list[str]:
    _check_known(sc, {"capabilities", "readOnlyRootFilesystem", "privileged", "allowPrivilegeEscalation",
                      "runAsUser", "runAsGroup", "seccompProfile", "appArmorProfile"} | IGNORED_SECURITY,
                 "securityContext")
    args: list[str] = []
    if sc.get("privileged"):
        args.append("--privileged")
    caps = sc.get("capabilities", {})
    _check_known(caps, {"add", "drop"}, "capabilities")
    for c in caps.get("drop", []):
        args += ["--cap-drop", c.lower() if c == "ALL" else f"CAP_{c}"]
    for c in caps.get("add", []):
        args += ["--cap-add", f"CAP_{c}"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
    if seccomp:
        kind = seccomp["type"]
        if kind == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif kind == "Localhost":
            rel = seccomp.get("localhostProfile", "")
            # The API server accepts only a relative path below the kubelet's directory.
            if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                raise Untranslatable(f"seccomp localhostProfile {rel!r}: a relative path inside {seccomp_dir}")
            profile = seccomp_dir / rel
            if not profile.is_file():
                raise Untranslatable(f"seccomp Localhost profile {profile} is not on this node")
            args += ["--security-opt", f"seccomp={profile}"]
        elif kind != "RuntimeDefault":
            raise Untranslatable(f"seccompProfile type {kind}")
    # With no seccompProfile podman applies its default profile: what a
    # kubelet with SeccompDefault does (without it, a kubelet runs Unconfined).
    apparmor = sc.get("appArmorProfile", pod_sc.get("appArmorProfile"))
    if apparmor:
        kind = apparmor["type"]
        if kind == "Unconfined":
            args += ["--security-opt", "apparmor=unconfined"]
        elif kind == "Localhost":
            args += ["--security-opt", f"apparmor={apparmor['localhostProfile']}"]
        elif kind != "RuntimeDefault":
            raise Untranslatable(f"appArmorProfile type {kind}")
    return args


def _volumes(spec: dict, container: dict, configmap_dirs: dict[str, Path]) -> list[str]:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    args: list[str] = []
    for m in container.get("volumeMounts", []):
        _check_known(m, {"mountPath", "readOnly", "subPath"} | IGNORED_MOUNT, f"volumeMount {m.get('name')}")
        v = volumes[m["name"]]
        kinds = set(v) - {"name"}
        target, ro = m["mountPath"], bool(m.get("readOnly"))
        if kinds == {"hostPath"}:
            hp = v["hostPath"]
            _check_known(hp, {"path", "type"}, f"hostPath {v['name']}")
            src = Path(hp["path"])
            if hp.get("type") == "Directory" and not src.is_dir():
                raise Untranslatable(f"hostPath {src}: type Directory and not a directory on this node")
            if "subPath" in m:
                src = src / m["subPath"]
            args += ["--volume", f"{src}:{target}:{'ro' if ro else 'rw'},rbind"]
        elif kinds == {"configMap"}:
            cm = v["configMap"]
            _check_known(cm, {"name", "items", "defaultMode", "optional"}, f"configMap {v['name']}")
            if "items" in cm:
                raise Untranslatable(f"configMap {v['name']}: items")
            src = Path(configmap_dirs[cm["name"]])
            if "subPath" in m:
                src = src / m["subPath"]
            # A ConfigMap volume is read-only whatever the mount says.
            args += ["--volume", f"{src}:{target}:ro"]
        elif kinds == {"emptyDir"}:
            ed = v["emptyDir"]
            _check_known(ed, {"medium", "sizeLimit"}, f"emptyDir {v['name']}")
            opts = ["rw" if not ro else "ro", "nosuid", "nodev"]
            if "sizeLimit" in ed:
                opts.append(f"size={quantity_bytes(ed['sizeLimit'])}")
            args += ["--tmpfs", f"{target}:{','.join(opts)}"]
        else:
            raise Untranslatable(f"volume {v['name']}: {sorted(kinds)}")
    return args


def podman_run_args(template: dict, *, image: str, node_name: str, name: str,
                    configmap_dirs: dict[str, Path], network: str = "none",
                    seccomp_dir: Path = Path("/var/lib/kubelet/seccomp"),
                    container: str | None = None, pod_uid: str = "", namespace: str = "default",
                    cgroup_parent: str | None = None) -> list[str]:
    """``podman run`` arguments (after ``run``, up to and with the container's
    args) for one container of a pod template (the first one by default)."""
    spec = template["spec"]
    _check_known(spec, {"containers", "volumes", "hostNetwork", "hostPID", "terminationGracePeriodSeconds"}
                 | IGNORED_POD, "pod spec")
    if spec.get("initContainers"):
        raise Untranslatable("initContainers")
    matching = [x for x in spec["containers"] if container in (None, x["name"])]
    if not matching:
        raise KeyError(f"no container {container!r}")
    c = matching[0]
    _check_known(c, {"image", "command", "args", "env", "ports", "resources", "securityContext",
                     "volumeMounts"} | IGNORED_CONTAINER, f"container {c['name']}")
    if network not in NETWORKS:
        raise ValueError(f"network {network!r}: one of {NETWORKS} (never podman's default bridge)")

    pod = {"spec.nodeName": node_name, "metadata.name": name, "metadata.namespace": namespace,
           "metadata.uid": pod_uid}
    env = _env(c, pod)
    args = ["--name", name, "--hostname", node_name if spec.get("hostNetwork") else name]
    for k, v in sorted(template.get("metadata", {}).get("labels", {}).items()):
        args += ["--label", f"{k}={v}"]
    args += ["--network", "host" if spec.get("hostNetwork") else network]
    if spec.get("hostPID"):
        args += ["--pid", "host"]
    if cgroup_parent:
        args += ["--cgroup-parent", cgroup_parent]
    if "terminationGracePeriodSeconds" in spec:
        args += ["--stop-timeout", str(spec["terminationGracePeriodSeconds"])]
    for k, v in env.items():
        args += ["--env", f"{k}={v}"]
    args += _security(c.get("securityContext", {}), spec.get("securityContext", {}), seccomp_dir)
    args += _volumes(spec, c, configmap_dirs)
    if not spec.get("hostNetwork") and network == "slirp4netns":
        for p in c.get("ports", []):
            args += ["--publish", f"127.0.0.1::{p['containerPort']}/{p.get('protocol', 'TCP').lower()}"]
    limits = c.get("resources", {}).get("limits", {})
    _check_known(limits, {"memory", "cpu"}, "resources.limits")
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", quantity_cpus(limits["cpu"])]
    if "command" in c:
        # Like Kubernetes' command: the image's ENTRYPOINT and CMD are both replaced.
        args += ["--entrypoint", json.dumps([expand(a, env) for a in c["command"]])]
    args.append(image)
    args += [expand(a, env) for a in c.get("args", [])]
    return args


def metrics_port(template: dict, port_name: str = "metrics") -> int:
    for c in template["spec"]["containers"]:
        for p in c.get("ports", []):
            if p.get("name") == port_name:
                return int(p["containerPort"])
    raise KeyError(port_name)
