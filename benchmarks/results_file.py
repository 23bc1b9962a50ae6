"""A benchmark's results file: JSON with the run's description and its ``rows``. Rows are added as
they are measured; a rerun of a row (same key) replaces it. Written atomically: a killed benchmark
leaves the previous file whole."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))

from msp_callback.atomic_files import atomic_write_text  # noqa: E402


def read(path: Path) -> dict[str, Any]:
    """The results so far, or an empty record."""
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def add_row(path: Path, record: dict[str, Any], row: dict[str, Any],
            key: Callable[[dict[str, Any]], Any] = lambda r: r["row"]) -> None:
    """Put ``row`` into ``record`` in place of any row with the same ``key``, and write it to ``path``."""
    record["rows"] = [r for r in record["rows"] if key(r) != key(row)] + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2))
