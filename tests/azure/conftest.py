"""Fixtures for the Azure tests: a real Azurite on 127.0.0.1, containers, chains, the CLI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azure.azurite import Azurite, FaultProxy, azurite_binary
from tests.azure.helpers import service

# Short retries and waits: the fault tests wait out backoffs, nothing else should.
FAST_RETRIES = {"VHDFS_BLOB_RETRIES": "4", "VHDFS_BLOB_BACKOFF": "0.05"}


def _need_azurite() -> Path:
    binary = azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed: run scripts/setup (or point VHDFS_AZURITE at it)")
    return binary


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """The session's Azurite (data in memory)."""
    with Azurite(_need_azurite(), tmp_path_factory.mktemp("azurite"), in_memory=True) as server:
        yield server


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test alone, with its data on disk: it may be stopped and restarted."""
    with Azurite(_need_azurite(), tmp_path / "azurite-data") as server:
        yield server


@pytest.fixture
def env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a user whose account is the session's Azurite (in-process too)."""
    values = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, **FAST_RETRIES}
    for name in ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


@pytest.fixture
def container(azurite: Azurite) -> str:
    """A new container of this test."""
    name = f"t{uuid.uuid4().hex[:20]}"
    service(azurite.endpoint).create_container(name)
    return name


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    server = FaultProxy(azurite.port)
    try:
        yield server
    finally:
        server.close()


