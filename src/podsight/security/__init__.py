"""Security rules: language, matching, redaction and JSON events.

Pure user space: nothing here touches the kernel; the only I/O is reading
rule files (``load_rules``/``check_files``) and printing in
``main_rules_check``.  The loader decodes ring-buffer records into
``RawEvent`` and calls ``RuleSet.match`` then ``event_json``.
"""
from __future__ import annotations

from .events import SCHEMA_PATH, build_event, event_json
from .kernel_filter import kernel_filter
from .model import EVENT_KINDS, IDENTITY_KEYS, RawEvent, host_identity
from .redact import redact_args, redact_text
from .rules import (
    BUILTIN_DEFAULT,
    DEFAULT_RULES_PATH,
    SEVERITIES,
    Rule,
    RuleError,
    RuleSet,
    check_files,
    config_lists,
    load_rules,
    main_rules_check,
)

__all__ = [
    "BUILTIN_DEFAULT",
    "DEFAULT_RULES_PATH",
    "EVENT_KINDS",
    "IDENTITY_KEYS",
    "RawEvent",
    "Rule",
    "RuleError",
    "RuleSet",
    "SCHEMA_PATH",
    "SEVERITIES",
    "build_event",
    "check_files",
    "config_lists",
    "event_json",
    "host_identity",
    "kernel_filter",
    "load_rules",
    "main_rules_check",
    "redact_args",
    "redact_text",
]
