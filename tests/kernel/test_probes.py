"""Load-time settings derived from rules: the kernel filter's tables (pure, no kernel)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podsight.config import Config
from podsight.kernel.layouts import CLAUSE_COMM, CLAUSE_PATH, CLAUSE_READ, SEC_MATCH_COMMS, SEC_MATCH_PATHS
from podsight.kernel.families.security import security_config
from podsight.security import RawEvent
from podsight.security.kernel_filter import Clause
from tests.security.test_kernel_filter import kernel_passes


def test_tables_encode_the_clauses():
    kf = {"kinds": ["open"], "pods_only": True, "clauses": [
        Clause("open", "r", paths=frozenset({("/etc/shadow", True), ("/root/.ssh/", False)}), read=True,
               comm_out=frozenset({"sshd"})),
        Clause("open", "w", paths=frozenset({("/etc/", False)}), write=True, comms=frozenset({"sh"})),
    ]}
    sc = security_config(kf, Config())
    assert (sc.n_clauses, sc.kind_clauses[1], sc.include_host) == (2, 0b11, 0)
    assert (sc.clauses[0].need, sc.clauses[1].need) == (CLAUSE_PATH | CLAUSE_READ, CLAUSE_PATH | CLAUSE_COMM | 8)
    paths = {(bytes(e.s)[: e.len], bool(e.exact)): e.clauses for e in sc.paths[: sc.n_paths]}
    assert paths == {(b"/etc/shadow", True): 0b01, (b"/root/.ssh/", False): 0b01, (b"/etc/", False): 0b10}
    comms = {bytes(c.s).rstrip(b"\0"): (c.include, c.exclude) for c in sc.comms[: sc.n_comms]}
    assert comms == {b"sshd": (0, 0b01), b"sh": (0b10, 0)}


def test_a_path_longer_than_an_entry_is_compared_as_its_prefix():
    long = "/var/lib/" + "x" * 80 + "/secret"
    kf = {"kinds": ["open"], "clauses": [Clause("open", "r", paths=frozenset({(long, True)}))]}
    sc = security_config(kf, Config())
    e = sc.paths[0]
    assert (bytes(e.s)[: e.len], e.exact) == (long.encode()[:63], 0)


_names = st.text("abcdefgh/", min_size=1, max_size=12)
# Every clause tests a path and a comm, and at most 32 of them: none passes
# everything, so one clause's loss cannot hide behind another.
_clauses = st.lists(st.builds(
    Clause, kind=st.just("open"), rule=st.just("r"),
    paths=st.frozensets(st.tuples(_names.map(lambda s: "/" + s), st.booleans()), min_size=1, max_size=20),
    comms=st.frozensets(st.text("abcdefghij", min_size=1, max_size=15), min_size=1, max_size=30),
    comm_out=st.frozensets(st.text("abcdefghij", min_size=1, max_size=15), max_size=20),
    read=st.booleans(), write=st.booleans()), min_size=1, max_size=32)


@settings(max_examples=200, deadline=None)
@given(_clauses, st.data())
def test_tables_that_overflow_only_widen(clauses, data):
    """More clauses, paths or comms than the kernel holds: whatever the clauses
    pass, the fitted tables pass too (clauses merge, tests are dropped)."""
    kf = {"kinds": ["open"], "pods_only": False, "clauses": clauses}
    fitted = security_config(kf, Config())
    assert fitted.n_paths <= SEC_MATCH_PATHS and fitted.n_comms <= SEC_MATCH_COMMS
    for c in clauses:  # an event each clause passes: its own path and comm
        path, exact = data.draw(st.sampled_from(sorted(c.paths)))
        comm = data.draw(st.sampled_from(sorted(c.comms)))
        e = RawEvent("open", comm=comm, path=path if exact else path + "x", flags=0o102 if c.write else 0o2)
        if _passes(c, e):
            assert kernel_passes(kf, fitted, e, {}), (e, c)


def _passes(c: Clause, e: RawEvent) -> bool:
    """A clause on its own, as kernel_filter defines it."""
    read = e.flags & 3 != 1
    write = bool(e.flags & 0o1103)
    return ((c.paths is None or any(e.path == p if exact else e.path.startswith(p) for p, exact in c.paths))
            and (c.comms is None or e.comm in c.comms) and e.comm not in c.comm_out
            and (not c.read or read) and (not c.write or write))
