"""Kubernetes client configuration: errors name the file and the reason."""
from __future__ import annotations

import pytest

from podsight.identity.kubeconfig import KubeConfigError, in_cluster_available, load_client_config
from tests.support.apiserver import write_kubeconfig


def test_kubeconfig_file(tmp_path):
    kc = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1", token="t")
    config = load_client_config(str(kc))
    assert config.cluster.server == "http://127.0.0.1:1" and config.user.token == "t"


def test_missing_file_names_it(tmp_path):
    with pytest.raises(KubeConfigError, match=r"/nope\.yaml: kubeconfig file not found"):
        load_client_config(str(tmp_path / "nope.yaml"))


def test_broken_yaml_names_file_and_line(tmp_path):
    kc = tmp_path / "kc"
    kc.write_text("apiVersion: v1\nclusters: [\n")
    with pytest.raises(KubeConfigError, match=r"/kc:3: not valid YAML: expected the node content"):
        load_client_config(str(kc))


def test_missing_section_is_named(tmp_path):
    kc = tmp_path / "kc"
    kc.write_text("apiVersion: v1\ncurrent-context: x\ncontexts: []\n")
    with pytest.raises(KubeConfigError, match=r"kc: .*clusters"):
        load_client_config(str(kc))


def test_unknown_context_is_named(tmp_path):
    kc = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1")
    kc.write_text(kc.read_text().replace("current-context: podsight-test", "current-context: other"))
    with pytest.raises(KubeConfigError, match=r"kc: Context 'other' not found"):
        load_client_config(str(kc))


def test_not_in_a_pod_without_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not in_cluster_available(str(tmp_path))
    with pytest.raises(KubeConfigError, match="not running in a pod"):
        load_client_config(None, service_account_dir=str(tmp_path))


def test_forced_in_cluster_without_token_names_the_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match=f"in-cluster config from {tmp_path}"):
        load_client_config(None, in_cluster=True, service_account_dir=str(tmp_path))
