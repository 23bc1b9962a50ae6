"""Writing files so that a failure never leaves a half-written one behind."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary sibling, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def give_default_permissions(path: str | Path) -> None:
    """Give a file, or a folder and the files in it, the permissions plain ``open`` / ``mkdir``
    would have (``mkstemp`` and ``mkdtemp`` make them private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    if path.is_dir():
        path.chmod(0o777 & ~umask)
        for child in path.iterdir():
            child.chmod(0o666 & ~umask)
    else:
        path.chmod(0o666 & ~umask)
