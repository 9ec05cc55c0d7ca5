"""Test set-up: the network is blocked for every test, and Augur's state lives in temp folders.

Offline is a feature we prove: any attempt to open an internet socket fails the code under test.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from helpers import NetworkBlocked

# Before toolkit is imported: one model store per test session (the embedded GGUF is assembled once).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="augur-test-home-"))
os.environ["AUGUR_HOME"] = str(_SESSION_HOME)
os.environ.pop("AUGUR_CACHE_DIR", None)
# One thread count for every process a test starts: the count changes float sums, and a test comparing two
# processes' bytes must not depend on the load the automatic choice (core/threads.py) sees at each start.
# The choice itself is tested with this variable removed (test_workstation.py).
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                              else (os.cpu_count() or 1)))
# Offline as users run it: the hub libraries must never try the network, and say so when they would. And an
# empty Hugging Face cache of the session's own: models in the user's cache would otherwise be found by hub
# cards (toolkit/models/hf_cache.py) and become `render --model auto`'s choice.
os.environ["HF_HOME"] = str(_SESSION_HOME / "hf-home")
os.environ["HF_HUB_CACHE"] = str(_SESSION_HOME / "hf-home" / "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _blocked(*args, **kwargs):
    raise NetworkBlocked(f"network access attempted in a test: {args[1:] if len(args) > 1 else args}")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guard(method):
    def guarded(self, address, *a, **kw):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkBlocked(f"network access attempted in a test: {address!r}")
        return method(self, address, *a, **kw)

    return guarded


def pytest_sessionfinish(session, exitstatus):
    """The session's model store (~0.5 GB: assembled GGUF, exported MiniLM, stand-ins) goes with the session."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", _guard(_real_connect))
    mp.setattr(socket.socket, "connect_ex", _guard(_real_connect_ex))
    mp.setattr(socket, "create_connection", _blocked)
    mp.setattr(socket, "getaddrinfo", _blocked)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test starts with an empty generation cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUGUR_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def llm():
    from toolkit.stages.extrapolate.config import DomainsConfig
    from toolkit.stages.extrapolate.stage import open_llm

    return open_llm(DomainsConfig())


@pytest.fixture(scope="session")
def embedder():
    from toolkit.stages.extrapolate.stage import open_embedder

    return open_embedder()


@pytest.fixture(scope="session")
def gguf_path(llm) -> Path:
    return llm.path


@pytest.fixture(scope="session")
def tiny() -> Path:
    """The built-in tiny LCM pipeline's folder (built once per session)."""
    from toolkit import models

    return models.ensure("tiny-lcm")[1]


@pytest.fixture
def prompts(tmp_path, request) -> Path:
    """A prompts file of the test module's ROWS."""
    from toolkit.core.files import write_jsonl

    p = tmp_path / "prompts.jsonl"
    write_jsonl(p, request.module.ROWS)
    return p
