"""Shared helpers for the test suite: address conversion and small Maps built by hand."""
from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps"


def ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


@pytest.fixture(scope="session")
def demo_capture() -> Path:
    return PCAPS / "demo.pcap"


@pytest.fixture(scope="session")
def demo_cluster() -> Path:
    return PCAPS / "demo-cluster.yaml"


def fastpath_command() -> list[str]:
    """The installed console script when present, else the module (same code either way)."""
    return [sys.executable, "-m", "fastpath"]


@pytest.fixture
def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    return env


@pytest.fixture(autouse=True, scope="session")
def private_cluster_cache(tmp_path_factory) -> None:
    """The suite (and the commands it runs) caches parsed dumps in a folder of its own."""
    os.environ["FASTPATH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cluster-cache"))
