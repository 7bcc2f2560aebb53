"""Load-time settings derived from rules (pure, no kernel)."""
from __future__ import annotations

from hypothesis import given, strategies as st

from podsight.config import Config
from podsight.kernel.probes import fit_prefixes, security_config

PATHS = st.lists(st.from_regex(r"/[a-z]{1,6}(/[a-z.]{1,8}){0,4}/?", fullmatch=True), min_size=1, max_size=30)


@given(PATHS, st.sampled_from([1, 4, 16]), st.sampled_from([8, 31]))
def test_fitted_prefixes_never_pass_less(prefixes, slots, width):
    fitted = fit_prefixes(prefixes, slots, width)
    assert 1 <= len(fitted) <= slots and all(len(p) <= width for p in fitted)
    for p in prefixes:
        # Anything a rule prefix matches, some fitted prefix matches too.
        assert any(p.encode().startswith(f) for f in fitted), (p, fitted)


def test_merges_the_closest_pairs_first():
    fitted = fit_prefixes(["/usr/local/bin/", "/usr/local/sbin/", "/etc/", "/bin/"], 3, 31)
    assert fitted == [b"/bin/", b"/etc/", b"/usr/local/"]


def test_security_config_from_kernel_filter():
    kf = {"pods_only": True, "open": {"path_prefixes": ["/etc/", "/root/.ssh/"], "write_only": False},
          "chmod": {"mode_bits_any": 0o6000}}
    sc = security_config(kf, Config())
    assert (sc.n_prefixes, sc.open_all, sc.open_write_only, sc.chmod_mode_any, sc.include_host) == (2, 0, 0, 0o6000, 0)
    assert sc.prefixes[1].value == b"/root/.ssh/" and sc.prefix_len[1] == len("/root/.ssh/")
    everything = security_config({"pods_only": False, "open": {"path_prefixes": None}}, Config())
    assert everything.open_all == 1 and everything.include_host == 1
