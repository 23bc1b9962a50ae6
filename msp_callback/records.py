"""The library's JSON records (plan, export record, sensitivity result): one writer and one
reader, every record carrying its format version, and a damaged or foreign file reported with
its name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic_files import atomic_write_text


def stamp(data: dict[str, Any], version: int) -> dict[str, Any]:
    """``data`` with its ``format_version`` first."""
    return {"format_version": version, **data}


def unstamp(data: Any, kind: str, version: int, error: type[Exception], default: int | None = None) -> dict[str, Any]:
    """``data`` without its ``format_version``, after checking it is a mapping of this version
    (``default``: the version assumed when none is recorded, for files from before versioning)."""
    if not isinstance(data, dict):
        raise error(f"a {kind} is a JSON object, got {type(data).__name__}")
    data = dict(data)
    found = data.pop("format_version", default)
    if found != version:
        raise error(f"{kind} format version {found} is not supported (expected {version})")
    return data


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2))


def read_json(path: str | Path, kind: str, error: type[Exception]) -> Any:
    """The JSON in ``path``; a missing or damaged file raises ``error`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} file {path} not found")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as problem:
        raise error(f"{path} is not a valid {kind} file (damaged JSON: {problem})") from None


def load_record(path: str | Path, kind: str, error: type[Exception], build: Any) -> Any:
    """``build(data)`` for the JSON in ``path``, any failure reported as ``error`` naming the file."""
    data = read_json(path, kind, error)
    try:
        return build(data)
    except error as problem:
        raise error(f"{path}: {problem}") from None
    except (KeyError, TypeError, ValueError) as problem:
        raise error(f"{path} is not a valid {kind} file ({type(problem).__name__}: {problem})") from None
