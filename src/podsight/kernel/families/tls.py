"""bpf/tls.bpf.c: TLS handshakes per cgroup and role, timed by uprobes in
the TLS library files that pod processes map (OpenSSL 1.1 and 3), and a
sweep the agent runs every second for handshakes that never finished.

Discovery is a bounded rescan of /proc (podsight.kernel.tls_libraries), not
exec events: a process maps libssl when it loads it (Python: on ``import
ssl``), usually well after exec, and the security probe that sees execs is
opt-in.  The probes sit on the file, so processes started later that map an
already-probed file are measured from their first handshake; a new copy of
the library is found within one rescan interval.  A file's links go when
the last process mapping it is gone.
"""
from __future__ import annotations

import logging
import os
import time

from ...config import Config
from ..family import CounterMap, Family, Gauge, Metric
from ..elf import ElfError, function_offsets
from ..layouts import TLS_ROLES, Hist, TlsConfig, TlsCounters, TlsKey
from ..libbpf import LibbpfError
from ..loader import BPF_TRACE_UPROBE_MULTI, BpfObject, Link
from ..probes import Probe
from ..tls_libraries import Scan, Scanner

__all__ = ["FAMILY", "LINKS", "TlsProbe", "attach_file", "configure_object", "uprobe_multi"]

log = logging.getLogger("podsight.probes")

# Perf-event uprobes (kernels before 6.6) come from the uprobe PMU: made with
# perf_event_open() and owned by a bpf link, nothing written to tracefs,
# nothing left behind by a SIGKILL.
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe/type"

CLIENT, SERVER = TLS_ROLES.index("client"), TLS_ROLES.index("server")
ROLE_NAMES = dict(enumerate(TLS_ROLES))

# program, return probe, (OpenSSL function, cookie: the role it sets).  Only
# functions that begin with an instruction the kernel emulates (bpf/tls.bpf.c).
LINKS = (
    ("tls_handshake_enter", False, (("SSL_do_handshake", 0),)),
    ("tls_handshake_exit", True, (("SSL_do_handshake", 0),)),
    ("tls_set_role", False, (("SSL_set_connect_state", CLIENT), ("SSL_set_accept_state", SERVER))),
)
SWEEP = "tls_sweep"


def uprobe_multi() -> bool:
    """uprobe_multi links (Linux 6.6): one link per program and file, and
    CAP_BPF + CAP_PERFMON suffice; perf-event uprobes need CAP_SYS_ADMIN."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 6)


def configure_object(obj: BpfObject, multi: bool, handshake_timeout: float = 10.0) -> None:
    """uprobe_multi links need programs loaded for them."""
    obj.set_config(TlsConfig(int(handshake_timeout * 1e9)))
    if multi:
        for prog, *_ in LINKS:
            obj.set_expected_attach_type(prog, BPF_TRACE_UPROBE_MULTI)


def attach_file(obj: BpfObject, path: str, multi: bool, links=LINKS) -> list[Link]:
    """Every link of ``links`` on the library at ``path``; none if one fails."""
    made: list[Link] = []
    try:
        if multi:
            offsets = function_offsets(path, {fn for _, _, fns in links for fn, _ in fns})
            for prog, ret, fns in links:
                missing = [fn for fn, _ in fns if fn not in offsets]
                if missing:
                    raise ElfError(f"{path} does not export {', '.join(missing)}")
                made.append(obj.attach_uprobe_multi(prog, path, [offsets[fn] for fn, _ in fns],
                                                    [cookie for _, cookie in fns], retprobe=ret))
        else:
            for prog, ret, fns in links:
                for fn, cookie in fns:
                    made.append(obj.attach_uprobe(prog, path, fn, retprobe=ret, cookie=cookie))
    except BaseException:
        for link in made:
            obj.detach(link)
        raise
    return made


class TlsProbe(Probe):
    def __init__(self) -> None:
        super().__init__("tls", "tls")
        self.scanner: Scanner | None = None
        self.attached: dict[tuple[str, int], tuple[str, list[Link]]] = {}  # file → (name, links)
        self.unprobed: dict[tuple[str, int], str] = {}                      # file → why it could not be probed
        self._next: Scan | None = None
        self._denied = 0    # pod processes the last scan could not read
        self._gauges: dict[str, dict] = {}
        self.multi = uprobe_multi()
        self.sweeps = True          # the kernel loaded tls_sweep
        self.tracked: int | None = None  # tls_ssl entries at the last sweep
        self.rescan_interval = 10.0
        self._rescan_due = 0.0

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        configure_object(obj, self.multi, float(cfg.probes.tls.handshake_timeout))

    def optional_programs(self) -> set[str]:
        return {SWEEP}

    def refused(self, programs: set[str]) -> None:
        # Without the sweep, only a new SSL at the same address tells a
        # handshake failed; abandoned ones stay uncounted.
        self.sweeps = False
        log.warning("tls: %s refused: handshakes that never finish are not counted as failed", SWEEP)

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        if not self.multi and not os.path.exists(UPROBE_PMU):
            self.unsupported.add(self.name)
            raise OSError(f"no uprobe PMU ({UPROBE_PMU}): this kernel lacks CONFIG_UPROBES")
        self.sample_interval = min(1.0, float(cfg.probes.tls.rescan_interval))  # the sweep's, at most 1 s
        self.rescan_interval = float(cfg.probes.tls.rescan_interval)
        self.scanner = Scanner(cgroup_root, cfg.probes.tls.proc_root)
        self._apply(obj, self.scanner.scan())
        self._rescan_due = time.monotonic() + self.rescan_interval

    def prepare(self) -> None:
        now = time.monotonic()
        if self.up and self.scanner is not None and now >= self._rescan_due:
            self._rescan_due = now + self.rescan_interval
            self._next = self.scanner.scan()

    def sample(self) -> None:
        if not self.up:
            return
        if self.sweeps:
            self.tracked = self.obj.run(SWEEP)  # it returns the entries it walked
        if self._next is not None:
            scan, self._next = self._next, None
            self._apply(self.obj, scan)

    def map_fill(self) -> dict[str, tuple[int, int]]:
        if not self.up or self.tracked is None:
            return {}
        return {"tls_ssl": (self.tracked, self.obj.maps["tls_ssl"].max_entries)}

    def _apply(self, obj: BpfObject, scan: Scan) -> None:
        if scan.denied and not self._denied:
            log.warning("tls: /proc/<pid>/maps of %d pod process(es) not readable: the tls probe needs ptrace read "
                        "access to other users' processes (CAP_SYS_PTRACE); their TLS is not measured", scan.denied)
        for key in [k for k in self.attached if k not in scan.files]:
            name, links = self.attached.pop(key)
            for link in links:
                obj.detach(link)
            log.info("tls: %s %s:%d no longer mapped; detached", name, *key)
        for key in [k for k in self.unprobed if k not in scan.files]:
            del self.unprobed[key]  # a file seen again later is tried again
        for key, lib in scan.files.items():
            if key in self.attached or key in self.unprobed:
                continue
            error = ""
            for path in scan.paths[key]:  # any process mapping it: some may have exited
                try:
                    self.attached[key] = (lib.name, attach_file(obj, path, self.multi))
                    log.info("tls: probing %s (%s:%d) at %s", lib.name, *key, path)
                    break
                except (OSError, LibbpfError, ElfError) as e:
                    error = str(e)
            else:
                self.unprobed[key] = error
                log.warning("tls: cannot probe %s (%s:%d): %s", lib.name, *key, error)
        self._denied = scan.denied
        # The gauges change only here, once a rescan: not computed per scrape.
        by_name: dict[str, int] = {}
        for name, _ in self.attached.values():
            by_name[name] = by_name.get(name, 0) + 1
        probed = set(self.attached)
        self._gauges = {
            "podsight_tls_libraries_attached": by_name,
            "podsight_tls_library_processes": {
                cid: sum(1 for files in procs if files & probed) for cid, procs in scan.cgroups.items()},
        }

    def key_names(self, counter_map: str) -> dict[int, str]:
        return ROLE_NAMES

    def gauges(self) -> dict[str, dict]:
        return self._gauges if self.up else {}


# log2 slots of microseconds; buckets 256 us .. ~8.4 s, then +Inf.
_US = dict(unit=1e-6, buckets=(8, 23))

FAMILY = Family(
    name="tls",
    probe=TlsProbe,
    programs={**{prog: "uprobe" for prog, *_ in LINKS}, SWEEP: None},
    maps=("tls_stats", "tls_histograms", "tls_ssl", "tls_calls"),
    counters=(
        CounterMap("tls_stats", TlsCounters, TlsKey, unnamed="role_{}"),      # (cgroup, enum tls_role)
        CounterMap("tls_histograms", Hist, TlsKey, unnamed="role_{}"),
    ),
    metrics=(
        Metric("podsight_tls_handshakes", "counter",
               "TLS handshakes in the workload's processes (OpenSSL), by role and result: success, or failure "
               "when unfinished probes.tls.handshake_timeout after the first call; non-blocking retries count "
               "once.", "tls_stats", ("succeeded", "failed"), split="result",
               split_values=("success", "failure"), key_label="role"),
        Metric("podsight_tls_handshakes_untracked", "counter",
               "TLS handshake calls not timed because the kernel could not store their state (a map update "
               "failed; the LRU maps' evictions show as podsight_bpf_map_entries at capacity).",
               "tls_stats", ("untracked",), key_label="role"),
        Metric("podsight_tls_handshake_duration_seconds", "histogram",
               "Time from a TLS handshake's first call to its success, in the TLS library (OpenSSL), by role.",
               "tls_histograms", key_label="role", **_US),
    ),
    gauges=(
        Gauge("podsight_tls_libraries_attached",
              "TLS library files (distinct device and inode) that pod processes map and the tls probe has "
              "uprobes on, by file name.", label="library"),
        Gauge("podsight_tls_library_processes",
              "Processes of the workload that map a TLS library the tls probe measures; 0: its TLS, if any, is "
              "not seen (statically linked, e.g. Go crypto/tls or Envoy's BoringSSL).", per_cgroup=True),
    ),
    structs={"tls_key": TlsKey, "tls_counters": TlsCounters, "tls_config": TlsConfig},
    enums={"tls_role": ("TLS_ROLE_", TLS_ROLES)},
)
