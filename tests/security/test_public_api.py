"""The package's public surface is exactly what the agent wires in."""
from __future__ import annotations

import podsight.security as security


def test_all_is_exact_and_importable():
    assert sorted(security.__all__) == security.__all__
    assert set(security.__all__) == {
        "BUILTIN_DEFAULT", "DEFAULT_RULES_PATH", "EVENT_KINDS", "IDENTITY_KEYS", "RawEvent", "Rule", "RuleError",
        "RuleSet", "SCHEMA_PATH", "SEVERITIES", "build_event", "check_files", "config_lists", "event_json",
        "host_identity", "kernel_filter", "load_rules", "main_rules_check", "redact_args", "redact_text",
    }
    for name in security.__all__:
        assert getattr(security, name) is not None


def test_shipped_data_files_exist():
    assert security.DEFAULT_RULES_PATH.is_file()
    assert security.SCHEMA_PATH.is_file()
