"""Python mirror of bpf/podsight.h.

tests/kernel/test_layouts.py checks every struct here against the BTF of the
compiled objects (size and member offsets), so an edit on one side only fails
the tests instead of silently misreading maps.
"""
from __future__ import annotations

import ctypes
from ctypes import c_uint32, c_uint64

__all__ = [
    "HIST_SLOTS",
    "HIST_SRTT",
    "HIST_CONNECT",
    "NetCounters",
    "TcpCounters",
    "HistKey",
    "Hist",
    "DropKey",
    "TcpConfig",
    "MIRRORED",
]

HIST_SLOTS = 32
HIST_SRTT = 0
HIST_CONNECT = 1


class NetCounters(ctypes.Structure):
    _fields_ = [
        ("rx_bytes", c_uint64),
        ("rx_packets", c_uint64),
        ("tx_bytes", c_uint64),
        ("tx_packets", c_uint64),
    ]


class TcpCounters(ctypes.Structure):
    _fields_ = [
        ("opened_outbound", c_uint64),
        ("opened_inbound", c_uint64),
        ("failed_outbound", c_uint64),
        ("failed_inbound", c_uint64),
        ("closed", c_uint64),
        ("retransmits", c_uint64),
        ("resets_sent", c_uint64),
        ("resets_received", c_uint64),
    ]


class HistKey(ctypes.Structure):
    _fields_ = [("cgroup_id", c_uint64), ("kind", c_uint32), ("pad", c_uint32)]


class Hist(ctypes.Structure):
    _fields_ = [("slots", c_uint64 * HIST_SLOTS), ("sum", c_uint64)]


class DropKey(ctypes.Structure):
    _fields_ = [("cgroup_id", c_uint64), ("reason", c_uint32), ("pad", c_uint32)]


class TcpConfig(ctypes.Structure):
    _fields_ = [("srtt_sample_interval_ns", c_uint64)]


# C struct name → mirror, for the layout test.
MIRRORED = {
    "net_counters": NetCounters,
    "tcp_counters": TcpCounters,
    "hist_key": HistKey,
    "hist": Hist,
    "drop_key": DropKey,
    "tcp_config": TcpConfig,
}
