"""Resident memory of this process, stage by stage (Linux ``/proc/self/status``).

A background thread samples ``RssAnon`` (memory only this process holds: tensors, the
allocator's heap) and ``VmRSS`` (that plus mapped file pages, such as memory-mapped weights)
every ``interval`` seconds; `stage` labels the samples, so each stage gets its own peak. Peaks
between two samples can be missed: the interval is reported with the numbers.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FIELDS = ("RssAnon", "VmRSS", "RssFile")


def trim_heap() -> None:
    """Hand freed heap back to the system (glibc otherwise keeps the high-water mark of earlier
    transient allocations, which the next stage's peak would include)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def read_status() -> dict[str, int]:
    """The memory fields of /proc/self/status, in bytes."""
    values: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) * 1024
    return values


class MemoryProbe:
    """Per-stage peaks of RssAnon and VmRSS, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.label = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _note(self) -> None:
        sample = read_status()
        peak = self.peaks.setdefault(self.label, dict(sample))
        for key, value in sample.items():
            peak[key] = max(peak.get(key, 0), value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._note()
            time.sleep(self.interval)

    def __enter__(self) -> "MemoryProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Label samples with ``name`` while the block runs (sampled at its start and end too)."""
        trim_heap()
        previous, self.label = self.label, name
        self._note()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._note()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.label = previous

    def overall(self, key: str = "RssAnon") -> int:
        return max(p.get(key, 0) for p in self.peaks.values())
