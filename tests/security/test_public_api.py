"""The package's public surface is exactly what the agent wires in."""
from __future__ import annotations

import importlib
import json

import jsonschema

import podsight.security as security

# Where each public name is implemented: the agent (runtime.py, the exporters)
# imports these modules directly, so the package must re-export the same objects.
HOMES = {
    "events": ("SCHEMA_PATH", "build_event", "event_json"),
    "kernel_filter": ("kernel_filter",),
    "model": ("EVENT_KINDS", "IDENTITY_KEYS", "RawEvent", "host_identity"),
    "redact": ("redact_args", "redact_text"),
    "rules": ("BUILTIN_DEFAULT", "DEFAULT_RULES_PATH", "Rule", "RuleError", "RuleSet", "SEVERITIES",
              "check_files", "config_lists", "load_rules", "main_rules_check"),
}


def test_all_is_exact_and_importable():
    assert sorted(security.__all__) == security.__all__
    assert set(security.__all__) == {
        "BUILTIN_DEFAULT", "DEFAULT_RULES_PATH", "EVENT_KINDS", "IDENTITY_KEYS", "RawEvent", "Rule", "RuleError",
        "RuleSet", "SCHEMA_PATH", "SEVERITIES", "build_event", "check_files", "config_lists", "event_json",
        "host_identity", "kernel_filter", "load_rules", "main_rules_check", "redact_args", "redact_text",
    }


def test_every_name_is_the_object_the_agent_uses():
    assert sorted(n for names in HOMES.values() for n in names) == security.__all__
    for module, names in HOMES.items():
        home = importlib.import_module(f"podsight.security.{module}")
        for name in names:
            assert getattr(security, name) is getattr(home, name), f"podsight.security.{name} is not {module}.{name}"


def test_constants_agree_with_the_event_schema():
    schema = json.loads(security.SCHEMA_PATH.read_text())
    assert list(security.EVENT_KINDS) == schema["properties"]["event"]["enum"]
    assert list(security.SEVERITIES) == schema["properties"]["severity"]["enum"]
    assert set(security.IDENTITY_KEYS) <= set(schema["required"])
    assert security.host_identity("node-a", "system.slice/ssh.service") == {
        **{k: "" for k in security.IDENTITY_KEYS}, "node": "node-a", "host_cgroup": "system.slice/ssh.service",
        "in_pod": False,
    }


def test_shipped_data_files_load():
    jsonschema.Draft202012Validator.check_schema(json.loads(security.SCHEMA_PATH.read_text()))
    shipped = security.load_rules([security.DEFAULT_RULES_PATH])
    builtin = security.load_rules([security.BUILTIN_DEFAULT])  # the name a config uses for the same file
    assert len(shipped.rules) == 9
    assert [r.name for r in builtin.rules] == [r.name for r in shipped.rules]
    assert security.check_files([security.DEFAULT_RULES_PATH]) == []


def test_redaction_hides_the_secret():
    assert security.redact_args(["mysql", "--password=hunter2secret"]) == ["mysql", "--password=***"]
    assert "hunter2secret" not in security.redact_text("curl -H 'Authorization: Bearer hunter2secret'")
