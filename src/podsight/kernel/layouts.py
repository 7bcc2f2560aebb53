"""Python mirror of bpf/podsight.h.

tests/kernel/test_layouts.py checks every struct here against the BTF of the
compiled objects (size and member offsets), so an edit on one side only fails
the tests instead of silently misreading maps.
"""
from __future__ import annotations

import ctypes
from ctypes import c_char, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

__all__ = [
    "HIST_SLOTS",
    "HIST_SRTT",
    "HIST_CONNECT",
    "HIST_KINDS",
    "DropCount",
    "NetCounters",
    "TcpCounters",
    "HistKey",
    "Hist",
    "DropKey",
    "DROP_REASON_WORDS",
    "TcpConfig",
    "FLOW_ROLES",
    "FlowKey",
    "FlowCounters",
    "FlowServices",
    "TLS_ROLES",
    "TlsKey",
    "TlsCounters",
    "TlsConfig",
    "SecurityEvent",
    "SecurityConfig",
    "PodRoot",
    "SEC_KINDS",
    "SEC_SYSCALLS",
    "SEC_DROPS",
    "SecClause",
    "SecMatchPath",
    "SecMatchComm",
    "SEC_CLAUSES",
    "SEC_MATCH_PATHS",
    "SEC_MATCH_PATH_LEN",
    "SEC_MATCH_COMMS",
    "SEC_REQUESTS",
    "SEC_FAMILIES",
    "CLAUSE_PATH",
    "CLAUSE_COMM",
    "CLAUSE_READ",
    "CLAUSE_WRITE",
    "SEC_ARGS_LEN",
]

HIST_SLOTS = 32
HIST_SRTT = 0
HIST_CONNECT = 1
HIST_KINDS = ("srtt", "connect")  # enum hist_kind, by value


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
        ("flow_untracked", c_uint64),
    ]


class HistKey(ctypes.Structure):
    _fields_ = [("cgroup_id", c_uint64), ("kind", c_uint32), ("pad", c_uint32)]


class Hist(ctypes.Structure):
    _fields_ = [("slots", c_uint64 * HIST_SLOTS), ("sum", c_uint64)]


class DropKey(ctypes.Structure):
    _fields_ = [("cgroup_id", c_uint64), ("reason", c_uint32), ("pad", c_uint32)]


class DropCount(ctypes.Structure):
    """Value of network_drops: a bare __u64 in C (no struct to mirror)."""

    _fields_ = [("count", c_uint64)]


DROP_REASON_WORDS = 4


class TcpConfig(ctypes.Structure):
    _fields_ = [("ignored_drop_reasons", c_uint64 * DROP_REASON_WORDS), ("flows", c_uint32), ("pad", c_uint32)]


FLOW_ROLES = ("unknown", "client", "server")  # enum flow_role, by value


class FlowKey(ctypes.Structure):
    _fields_ = [
        ("cgroup_id", c_uint64),
        ("addr", c_uint8 * 16),
        ("port", c_uint16),
        ("client_port", c_uint16),
        ("family", c_uint8),
        ("role", c_uint8),
        ("pad", c_uint16),
    ]


class FlowCounters(ctypes.Structure):
    _fields_ = [
        ("opened", c_uint64),
        ("failed", c_uint64),
        ("closed", c_uint64),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("segs_sent", c_uint64),
        ("segs_received", c_uint64),
        ("retransmits", c_uint64),
        ("srtt", Hist),
        ("connect", Hist),
    ]


class FlowServices(ctypes.Structure):
    _fields_ = [
        ("v4_net", c_uint32),
        ("v4_mask", c_uint32),
        ("v6_net", c_uint32 * 4),
        ("v6_mask", c_uint32 * 4),
    ]


TLS_ROLES = ("unknown", "client", "server")  # enum tls_role, by value


class TlsKey(ctypes.Structure):
    _fields_ = [("cgroup_id", c_uint64), ("role", c_uint32), ("pad", c_uint32)]


class TlsCounters(ctypes.Structure):
    _fields_ = [("succeeded", c_uint64), ("failed", c_uint64), ("untracked", c_uint64)]


class TlsConfig(ctypes.Structure):
    _fields_ = [("handshake_timeout_ns", c_uint64)]


SEC_COMM_LEN = 16
SEC_PATH_LEN = 256
SEC_ARGS_LEN = 512
SEC_CLAUSES = 32
SEC_MATCH_PATHS = 48
SEC_MATCH_PATH_LEN = 64
SEC_MATCH_COMMS = 96
SEC_REQUESTS = 16
SEC_FAMILIES = 4
CLAUSE_PATH, CLAUSE_COMM, CLAUSE_READ, CLAUSE_WRITE = 1, 2, 4, 8
# enum sec_kind / sec_syscall / sec_drop, by value.
SEC_KINDS = ("exec", "open", "chmod", "ptrace", "connect")
SEC_SYSCALLS = ("execve", "openat", "openat2", "chmod", "fchmodat", "fchmodat2", "fchmod", "ptrace", "connect",
                "open", "creat")
SEC_DROPS = ("rate_limited", "ringbuf_full", "pending_full", "guard_limited")


class SecurityEvent(ctypes.Structure):
    _fields_ = [
        ("ts_ns", c_uint64),
        ("cgroup_id", c_uint64),
        ("ret", c_int64),
        ("ptrace_request", c_int64),
        ("start_ns", c_uint64),
        ("parent_start_ns", c_uint64),
        ("kind", c_uint32),
        ("syscall", c_uint32),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("ppid", c_uint32),
        ("uid", c_uint32),
        ("gid", c_uint32),
        ("flags", c_uint32),
        ("mode", c_uint32),
        ("target_pid", c_uint32),
        ("family", c_uint16),
        ("dst_port", c_uint16),
        ("args_len", c_uint32),
        ("clauses", c_uint32),
        ("pad", c_uint32),
        ("dst_addr", c_uint8 * 16),
        ("comm", c_char * SEC_COMM_LEN),
        ("parent_comm", c_char * SEC_COMM_LEN),
        ("path", c_char * SEC_PATH_LEN),
        ("cwd", c_char * SEC_PATH_LEN),
        ("exe", c_char * SEC_PATH_LEN),
        ("args", c_char * SEC_ARGS_LEN),
    ]


class SecClause(ctypes.Structure):
    _fields_ = [("kind", c_uint32), ("need", c_uint32), ("mode_any", c_uint32), ("pad", c_uint32)]


class SecMatchPath(ctypes.Structure):
    _fields_ = [("clauses", c_uint32), ("len", c_uint16), ("exact", c_uint8), ("pad", c_uint8),
                ("s", c_char * SEC_MATCH_PATH_LEN)]


class SecMatchComm(ctypes.Structure):
    _fields_ = [("include", c_uint32), ("exclude", c_uint32), ("s", c_char * SEC_COMM_LEN)]


class SecurityConfig(ctypes.Structure):
    _fields_ = [
        ("rate_per_sec", c_uint64),
        ("burst", c_uint64),
        ("guard_per_sec", c_uint64),
        ("guard_burst", c_uint64),
        ("include_host", c_uint32),
        ("n_clauses", c_uint32),
        ("n_paths", c_uint32),
        ("n_comms", c_uint32),
        ("kind_clauses", c_uint32 * 8),
        ("n_requests", c_uint32),
        ("n_families", c_uint32),
        ("requests", c_int64 * SEC_REQUESTS),
        ("families", c_uint32 * SEC_FAMILIES),
        ("clauses", SecClause * SEC_CLAUSES),
        ("paths", SecMatchPath * SEC_MATCH_PATHS),
        ("comms", SecMatchComm * SEC_MATCH_COMMS),
    ]


class PodRoot(ctypes.Structure):
    _fields_ = [("cgroup_id", c_uint64), ("level", c_uint32), ("pad", c_uint32)]
