"""Run one measurement of a benchmark in a fresh Python process and read its result back.

Memory peaks and timings of one configuration must not include what an earlier one left behind,
so the benchmarks re-run themselves with ``--one ...``; the child prints ``RESULT <json>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

PREFIX = "RESULT "


def emit(result: dict[str, Any]) -> None:
    """What the child prints last: its result as one JSON line."""
    print(PREFIX + json.dumps(result))


def run_fresh(script: str, arguments: list[str], what: str) -> dict[str, Any] | None:
    """Run ``script arguments`` in a new interpreter; its result, or None (with its error printed)."""
    out = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    if out.returncode:
        print(f"{what} failed:\n{out.stderr[-4000:]}", file=sys.stderr)
        return None
    return json.loads(next(line[len(PREFIX):] for line in out.stdout.splitlines() if line.startswith(PREFIX)))
