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

# Before toolkit is imported: one model store per test session (the embedded GGUF is assembled once).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="augur-test-home-"))
os.environ["AUGUR_HOME"] = str(_SESSION_HOME)
os.environ.pop("AUGUR_CACHE_DIR", None)
# Offline as users run it: the hub libraries must never try the network, and say so when they would.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


class NetworkBlocked(ConnectionError):
    """An OSError, like a real unreachable network, so code under test sees what it would offline."""


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


ROOT = Path(__file__).resolve().parent.parent


def run_then_kill(cmd: list[str], ready, env: dict | None = None, timeout: float = 300) -> None:
    """Start a real `augur` process and SIGKILL it as soon as `ready()` holds (a crash, mid-run)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def accelerate_launch(args: list[str], processes: int = 2, timeout: float = 900):
    """`accelerate launch --multi_gpu` of the real CLI: torchrun starts the processes; with no GPU they
    join a gloo process group on CPU, which is the same code path the GPU launch takes, minus NCCL."""
    import os
    import subprocess
    import sys

    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets when nothing is set; tests rely on it
    return subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes),
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(20000 + os.getpid() % 20000), "-m", "cli", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def launch_log(res) -> str:
    """The stderr of a failed launch worth reading: the first process to fail prints its cause first;
    the others' tracebacks (a broken barrier) and torchrun's summary come after it."""
    err = res.stderr
    return err if len(err) <= 6000 else f"{err[:4000]}\n[...]\n{err[-2000:]}"


# Fields that measure time, not results: a resumed run differs from an uninterrupted one there only.
TIMING_FIELDS = {"wall_seconds", "images_per_second", "seconds", "img_s", "wall", "rates"}


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_FIELDS}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def file_digests(root: Path, masked_text: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under `root` (our lock files aside) by relative path: its sha256, or for JSON and JSONL the
    sha256 of its content with timing fields removed, or for `masked_text` suffixes its text with every
    number of seconds or images per second masked. What 'byte for byte, timing aside' compares."""
    import hashlib
    import json
    import re

    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.startswith(".augur") and p.name.endswith(".lock"):
            continue
        rel = p.relative_to(root).as_posix()
        data = p.read_bytes()
        if p.suffix == ".json":
            data = json.dumps(_strip_timing(json.loads(data)), sort_keys=True).encode()
        elif p.suffix == ".jsonl":
            data = "\n".join(json.dumps(_strip_timing(json.loads(line)), sort_keys=True)
                             for line in data.decode().splitlines() if line.strip()).encode()
        elif p.suffix in masked_text:
            data = re.sub(rb"\d+(\.\d+)? (s\b|img/s)", b"<t>", data)
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def assert_same_files(ref: Path, got: Path, masked_text: tuple[str, ...] = ()) -> None:
    a, b = file_digests(ref, masked_text), file_digests(got, masked_text)
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"files differ from the uninterrupted run: {differ}"
