"""Writing files and folders so that a failure never leaves a half-written one behind.

Everything the library writes goes through here: a temporary sibling is written, then renamed
over the target only once complete (`atomic_write_text`, `atomic_file`, `atomic_folder`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` (with ordinary
    permissions) when the block ends without error, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        give_default_permissions(staging)
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)


@contextmanager
def atomic_folder(directory: str | Path, may_replace: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a staging folder beside ``directory`` to fill; it becomes ``directory`` when the block
    ends without error, and is removed otherwise. An existing ``directory`` is replaced only then,
    after ``may_replace(directory)`` (which raises to refuse) agrees, and is put back if the swap fails."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        give_default_permissions(staging)
        if not directory.exists():
            staging.rename(directory)
            return
        if may_replace is not None:
            may_replace(directory)
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
        try:
            staging.rename(directory)
        except BaseException:
            old.rename(directory)  # put the previous one back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
