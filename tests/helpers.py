"""What tests share besides fixtures (those are in conftest.py): real CLI processes killed at a known point,
`accelerate launch` of the CLI, the one-line error check, and the byte-for-byte comparison of two run folders."""

from __future__ import annotations

from pathlib import Path


class NetworkBlocked(ConnectionError):
    """An OSError, like a real unreachable network, so code under test sees what it would offline."""


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

