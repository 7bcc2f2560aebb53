"""Configuration: precedence, errors that name the place, and docs that match the code."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from podsight.config import Config, ConfigError, Duration, load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_are_valid():
    assert load_config(None, env={}) == Config()


def test_file_then_env_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1000\nprobes:\n  tcp:\n    srtt_sample_interval: 250ms\nlog_level: debug\n")
    cfg = load_config(f, env={"PODSIGHT_LISTEN": "127.0.0.1:2000", "PODSIGHT_PROBES__TCP__ENABLED": "false"},
                      overrides={"listen": "127.0.0.1:3000"})
    assert cfg.listen == "127.0.0.1:3000"
    assert cfg.probes.tcp.enabled is False
    assert cfg.probes.tcp.srtt_sample_interval == pytest.approx(0.25)
    assert cfg.log_level == "debug"


@pytest.mark.parametrize("env,needle", [
    ({"PODSIGHT_NOPE": "1"}, "environment PODSIGHT_NOPE: nope: unknown key"),
    ({"PODSIGHT_SECURITY__RATE_LIMIT__BURST": "0"}, "security.rate_limit.burst"),
    ({"PODSIGHT_SECURITY__RINGBUF_SIZE_KB": "100"}, "power of two"),
    ({"PODSIGHT_PROBES__TCP__MAX_TRACKED_CONNECTIONS": "10"}, "probes.tcp.max_tracked_connections"),
    ({"PODSIGHT_LABELS__LEVEL": "node"}, "labels.level: expected one of container, pod"),
    ({"PODSIGHT_PROBES__TLS__HANDSHAKE_TIMEOUT": "500ms"}, "probes.tls.handshake_timeout: expected at least 1s, got 0.5s"),
    ({"PODSIGHT_PROBES__TLS__RESCAN_INTERVAL": "0"}, "probes.tls.rescan_interval: expected at least 100ms"),
])
def test_env_errors_name_the_variable(env, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, env=env)


def test_drop_reason_names_are_checked_before_anything_attaches(tmp_path):
    assert Config().probes.tcp.ignored_drop_reasons == ["QUEUE_PURGE"]
    f = tmp_path / "c.yaml"
    f.write_text("probes:\n  tcp:\n    ignored_drop_reasons:\n      - QUEUE_PURGE\n      - queue purge\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}:5: probes.tcp.ignored_drop_reasons[1]: expected a kernel "
                                                    "drop reason name like QUEUE_PURGE, got 'queue purge'")):
        load_config(f, env={})
    # Every reason counted: an empty list.
    assert load_config(None, env={"PODSIGHT_PROBES__TCP__IGNORED_DROP_REASONS": "[]"}).probes.tcp.ignored_drop_reasons == []


def test_runtime_path_variables_are_not_config():
    assert load_config(None, env={"PODSIGHT_BPF_DIR": "/x", "PODSIGHT_LIBBPF": "/y", "PODSIGHT_CONFIG": "/z"}) == Config()


@pytest.mark.parametrize("text,value", [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (2, 2)])
def test_durations(text, value):
    assert Duration.parse(text) == pytest.approx(value)


def test_readme_lists_every_key_with_its_default(tmp_path):
    block = re.search(r"Every key with its default:\n\n```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    f = tmp_path / "readme.yaml"
    f.write_text(block)
    assert load_config(f, env={}) == Config()

    def keys(obj, prefix=""):
        for fld in dataclasses.fields(obj):
            v = getattr(obj, fld.name)
            yield from keys(v, f"{prefix}{fld.name}.") if dataclasses.is_dataclass(v) else [prefix + fld.name]

    leaves = set(keys(Config()))

    def doc_keys(d, prefix=""):
        for k, v in d.items():  # a mapping-valued key (cidr_sets) is a leaf
            nested = isinstance(v, dict) and v and prefix + k not in leaves
            yield from doc_keys(v, f"{prefix}{k}.") if nested else [prefix + k]

    assert set(doc_keys(yaml.safe_load(block))) == leaves
