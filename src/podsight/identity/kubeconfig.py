"""Where the Kubernetes API is and how to authenticate: kubeconfig file or in-cluster.

Only reads files and the environment; opens no connection, so a bad file fails
the agent at start while an unreachable API server never does.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

__all__ = ["KubeConfigError", "SERVICE_ACCOUNT_DIR", "in_cluster_available", "load_client_config"]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(ValueError):
    """The Kubernetes client configuration cannot be used; says which file and why."""


def in_cluster_available(service_account_dir: str = SERVICE_ACCOUNT_DIR) -> bool:
    """True in a pod with a mounted service account token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and Path(service_account_dir, "token").is_file()


def load_client_config(kubeconfig: str | None = None, in_cluster: bool | None = None,
                       service_account_dir: str = SERVICE_ACCOUNT_DIR):
    """Return a lightkube ``SingleConfig``.

    ``kubeconfig`` wins when given; otherwise ``in_cluster`` (None: detect)
    selects the pod's service account, whose token file lightkube re-reads on
    401 so rotated tokens keep working.
    """
    # Imported here so that `podsight check` and unit tests of pure modules do
    # not pay for the client library.
    from lightkube import KubeConfig
    from lightkube.core.exceptions import ConfigError

    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise KubeConfigError(f"{kubeconfig}: kubeconfig file not found")
        try:
            config = KubeConfig.from_file(path).get()
        except ConfigError as e:
            raise KubeConfigError(f"{kubeconfig}: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            # lightkube indexes the YAML directly; a missing section shows up
            # as a KeyError naming it.
            raise KubeConfigError(f"{kubeconfig}: not a usable kubeconfig (missing or malformed {e})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise KubeConfigError(f"{kubeconfig}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
        if config.user is None:
            raise KubeConfigError(f"{kubeconfig}: context {config.context_name!r} has no user")
        if not config.cluster.server:
            raise KubeConfigError(f"{kubeconfig}: cluster of context {config.context_name!r} has no server")
        return config
    if in_cluster is None:
        in_cluster = in_cluster_available(service_account_dir)
        if not in_cluster:
            raise KubeConfigError(
                "no kubeconfig given and not running in a pod "
                f"(KUBERNETES_SERVICE_HOST unset or no token in {service_account_dir})")
    if in_cluster:
        if not os.environ.get("KUBERNETES_SERVICE_HOST") or not os.environ.get("KUBERNETES_SERVICE_PORT"):
            raise KubeConfigError("in-cluster config: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT unset")
        try:
            return KubeConfig.from_service_account(service_account_dir).get()
        except ConfigError as e:
            raise KubeConfigError(f"in-cluster config from {service_account_dir}: {e}") from None
    raise KubeConfigError("Kubernetes API disabled: no kubeconfig given and in_cluster=False")
