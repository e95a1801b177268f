"""Linters as tests (mkosi style): ruff and mypy run clean on the whole tree.

The rule sets are in pyproject.toml, with the reason for each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_ruff_finds_nothing():
    res = _run("ruff", "check", "--no-cache", ".")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_finds_nothing():
    res = _run("mypy", "--no-error-summary")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_reports_a_planted_finding(tmp_path):
    """The linter test can fail: an unused import is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    res = _run("ruff", "check", "--no-cache", "--isolated", "--select", "F", str(bad))
    assert res.returncode == 1 and "F401" in res.stdout
