"""The algorithm tests catch what they claim to: tests/mutants.py breaks each defining property in turn (in a copy
of the code) and runs the test that should fail. A mutant that survives, or whose code moved, fails this."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_mutant_of_a_defining_property_is_caught():
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "mutants.py")], cwd=ROOT, capture_output=True, text=True,
                         timeout=1800)
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0 and lines[-1] == "0 missed", res.stdout + res.stderr[-2000:]
    assert sum(line.startswith("caught: ") for line in lines) >= 20, res.stdout
