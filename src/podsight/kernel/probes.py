"""How a probe family's object is loaded and attached; the families
themselves (what each attaches, its maps and metrics) are declared in
podsight.kernel.families.

A probe that cannot start on this kernel reports ``up == False`` with the
reason, and the agent runs on without it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from ..config import Config
from .loader import BpfObject

__all__ = ["Probe", "ProgramStats", "program_stats"]

log = logging.getLogger("podsight.probes")


@dataclass
class Probe:
    name: str
    obj_name: str
    up: bool = False
    error: str = ""
    obj: BpfObject | None = field(default=None, repr=False)
    sample_interval: float = 0.0  # seconds between sample() calls; 0: never
    # Parts this kernel cannot run (a missing tracepoint, a program it
    # refuses): expected on such a node, unlike a part that failed.
    unsupported: set[str] = field(default_factory=set)

    def configure(self, obj: BpfObject, cfg: Config) -> None:
        """Set load-time knobs (``const volatile``) and map sizes before load."""

    def attach(self, obj: BpfObject, cfg: Config, cgroup_root: str) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, bool]:
        """``podsight_probe_up`` values: probe (or probe part) name → attached."""
        return {self.name: self.up}

    def states(self) -> dict[str, str]:
        """``podsight_probe_state``: part → up, unsupported or failed."""
        return {part: "up" if ok else "unsupported" if part in self.unsupported else "failed"
                for part, ok in self.status().items()}

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """Maps besides the counter maps whose fill the probe knows: name → (entries, max entries)."""
        return {}

    def key_names(self, counter_map: str) -> dict[int, str]:
        """Names of a paired counter map's second key on this kernel (e.g. drop reasons)."""
        return {}

    def prepare(self) -> None:
        """Work before ``sample()`` that touches no BPF object (reading /proc):
        the agent runs it outside its lock, so scrapes do not wait for it."""

    def sample(self) -> None:
        """Periodic in-kernel work the agent drives (every ``sample_interval`` s)."""

    def gauges(self) -> dict[str, dict]:
        """Values of the family's declared ``Gauge``s: name → {label value: v},
        or {cgroup id: v} for per-cgroup gauges."""
        return {}

    def optional_programs(self) -> set[str]:
        """Programs whose refusal at load takes down only their own part:
        the object is loaded again without them."""
        return set()

    def refused(self, programs: set[str]) -> None:
        """The kernel refused ``programs`` at load (the object was loaded without them)."""

    def _open(self, cfg: Config, without: set[str]) -> BpfObject:
        obj = BpfObject(self.obj_name)
        try:
            self.configure(obj, cfg)
            for prog in without:
                obj.set_autoload(prog, False)
        except BaseException:
            obj.close()
            raise
        return obj

    def start(self, cfg: Config, cgroup_root: str) -> bool:
        obj = None
        try:
            obj = self._open(cfg, set())
            try:
                obj.load()
            except OSError as e:
                optional = {p for p in self.optional_programs() if obj.autoload(p)}
                if not optional:
                    raise
                # A kernel may refuse one kind of program (seen: iterators, EPERM)
                # and take the rest: lose only the part that needs it.
                obj.close()
                obj = self._open(cfg, optional)
                obj.load()
                self.refused(optional)
                log.warning("probe %s: %s refused by this kernel (%s); loaded without", self.name,
                            ", ".join(sorted(optional)), e)
            self.attach(obj, cfg, cgroup_root)
        except (OSError, ValueError) as e:
            if obj is not None:
                obj.close()
            self.up, self.error = False, str(e)
            log.warning("probe %s unavailable: %s", self.name, e)
            return False
        self.obj, self.up, self.error = obj, True, ""
        log.info("probe %s attached (%d links)", self.name, len(obj.links))
        return True

    def stop(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.up = False


@dataclass(frozen=True)
class ProgramStats:
    run_count: int
    run_time_ns: int


_FDINFO = re.compile(r"^(run_time_ns|run_cnt):\s+(\d+)$", re.M)


def program_stats(prog_fd: int) -> ProgramStats | None:
    """The kernel's own cost accounting for one program (needs BPF stats enabled)."""
    try:
        with open(f"/proc/self/fdinfo/{prog_fd}") as f:
            text = f.read()
    except OSError:
        return None
    vals = dict(_FDINFO.findall(text))
    if not vals:
        return None
    return ProgramStats(int(vals.get("run_cnt", 0)), int(vals.get("run_time_ns", 0)))
