"""Fixtures the security tests share."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

@pytest.fixture
def token_file():
    """A service-account token where the kubelet mounts it (the pods here share the host's files)."""
    created = not TOKEN_DIR.exists()
    TOKEN_DIR.mkdir(parents=True, exist_ok=True)
    token = TOKEN_DIR / "token"
    had = token.exists()
    if not had:
        token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl\n")
    try:
        yield token
    finally:
        if not had:
            token.unlink()
        if created:
            shutil.rmtree("/var/run/secrets", ignore_errors=True)
