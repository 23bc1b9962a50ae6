"""The project's own checks, run with the tests: ruff over the code, mypy over the public API."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff comes with the dev extras (pip install -e '.[dev]')")
    result = _run("ruff", "check", "msp_callback", "tests", "benchmarks", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api_type_checks():
    pytest.importorskip("mypy", reason="mypy comes with the dev extras (pip install -e '.[dev]')")
    result = _run("mypy", "tests/typing_public_api.py")
    assert result.returncode == 0, result.stdout + result.stderr
