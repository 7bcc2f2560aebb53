"""Drop reason names come from this kernel's own skb:kfree_skb format, and
the ignored ones become the bitmap tcp.bpf.c tests."""
from __future__ import annotations

import logging

import pytest

from podsight.kernel import mounts
from podsight.kernel.drop_reasons import drop_reasons
from podsight.kernel.families.tcp import tcp_config


@pytest.mark.root  # tracefs is root's, and may need mounting
def test_names_and_numbers_from_this_kernel():
    reasons = drop_reasons(mounts.tracefs_root())
    names = set(reasons.values())
    assert {"NOT_SPECIFIED", "NETFILTER_DROP", "QUEUE_PURGE"} <= names, names
    assert len(names) == len(reasons)  # one name per number


# Not root: pure, on a given table of reasons.
def test_ignored_reasons_become_this_kernels_bits(caplog):
    reasons = {2: "NOT_SPECIFIED", 70: "QUEUE_PURGE", 300: "SUBSYS_THING"}
    with caplog.at_level(logging.WARNING, logger="podsight.probes"):
        tc = tcp_config(["QUEUE_PURGE", "NOT_ON_THIS_KERNEL", "SUBSYS_THING"], reasons)
    assert list(tc.ignored_drop_reasons) == [0, 1 << 6, 0, 0]
    assert "NOT_ON_THIS_KERNEL is not a drop reason of this kernel" in caplog.text
    assert "SUBSYS_THING (300) is beyond the first 256 reasons and stays counted" in caplog.text
    assert list(tcp_config([], reasons).ignored_drop_reasons) == [0, 0, 0, 0]
