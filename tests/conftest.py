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


def killed_at(cmd: list[str], point: str, env: dict | None = None, timeout: float = 600) -> None:
    """Run a real `augur` process that SIGKILLs itself at the named kill point (toolkit/core/faults.py): a
    crash at a known moment, not a race between a polling test and a process that may finish first."""
    import os
    import subprocess

    res = subprocess.run(cmd, cwd=ROOT, env={**(env or os.environ), "AUGUR_KILL_AT": point}, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == -9, (point, res.returncode, res.stderr[-2000:])


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


def assert_one_line_error(res, *fragments: str, code: int | None = None):
    """A CLI result (click's CliRunner) that failed as bad input must: one `Error:` line naming the fragments,
    no traceback, a non-zero exit (`code` when given)."""
    assert res.exit_code != 0 and (code is None or res.exit_code == code), (res.exit_code, res.output)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], lines[0]


# Fields that describe a process, not its results (time, throughput, what a cache served, the summary line
# that prints them): a resumed run differs from an uninterrupted one there only.
TIMING_FIELDS = {"wall_seconds", "images_per_second", "seconds", "img_s", "wall", "rates", "generation_seconds",
                 "tokens_per_second", "new_tokens", "used_tokens", "cached_requests", "cached", "line"}


def strip_timing(obj):
    """`obj` (rows, a record) without its timing fields (TIMING_FIELDS), at any depth."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_FIELDS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def file_digests(root: Path, masked_text: tuple[str, ...] = (), own_path: bool = False) -> dict[str, str]:
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
        if own_path and p.suffix in (".json", ".jsonl", ".md", ".html", ".txt"):
            data = data.replace(str(root).encode(), b"<root>")
        if p.suffix == ".json":
            data = json.dumps(strip_timing(json.loads(data)), sort_keys=True).encode()
        elif p.suffix == ".jsonl":
            data = "\n".join(json.dumps(strip_timing(json.loads(line)), sort_keys=True)
                             for line in data.decode().splitlines() if line.strip()).encode()
        elif p.suffix in masked_text:
            data = re.sub(rb"\d+(\.\d+)? (s\b|img/s|tok/s|new tokens)|\d+/\d+ requests cached", b"<t>", data)
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def assert_same_files(ref: Path, got: Path, masked_text: tuple[str, ...] = (), own_path: bool = False) -> None:
    """`got` holds the files `ref` does, byte for byte but for timing (and, with own_path, the folder's own path)."""
    a, b = file_digests(ref, masked_text, own_path), file_digests(got, masked_text, own_path)
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"files differ from the uninterrupted run: {differ}"

