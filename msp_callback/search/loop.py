"""The generation loop both searches share: generation 0, then steps, a callback after each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class GenerationLoop:
    """``initialize()`` makes generation 0 and ``step()`` the next one (subclasses); `run` drives
    them to ``generations``. ``generation`` is -1 before initialisation."""

    generation: int
    evaluations: int
    cache: dict[tuple[int, ...], float]
    settings: dict[str, Any]
    _MATCHED: tuple[str, ...] = ()

    def _score(self, evaluate: Callable[[list[list[int]]], Sequence[float]] | None, new: Sequence[Sequence[int]]) -> int:
        """Score the distinct, never-scored ``new`` individuals into ``cache``; returns their number."""
        if not new:
            return 0
        if evaluate is None:
            raise RuntimeError(f"{type(self).__name__} needs an evaluate function to score individuals")
        fitnesses = list(evaluate([list(ind) for ind in new]))
        if len(fitnesses) != len(new):
            raise ValueError(f"evaluate returned {len(fitnesses)} fitnesses for {len(new)} individuals")
        for ind, fit in zip(new, fitnesses):
            self.cache[tuple(ind)] = float(fit)
        self.evaluations += len(new)
        return len(new)

    def _check_saved_settings(self, saved: dict[str, Any]) -> None:
        """A checkpoint's settings must match this search's (``generations`` may differ, so a
        finished search can be extended); a mismatch raises ValueError."""
        diffs = [f"{k}: saved {saved.get(k)!r}, here {self.settings[k]!r}"
                 for k in self._MATCHED if saved.get(k) != self.settings[k]]
        if diffs:
            raise ValueError("checkpoint belongs to a different search: " + "; ".join(diffs))

    @property
    def n(self) -> int:
        return self.settings["n"]

    @property
    def m(self) -> int:
        return self.settings["m"]

    @property
    def generations(self) -> int:
        return self.settings["generations"]

    def initialize(self) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    @property
    def best(self) -> tuple[list[int], float]:
        raise NotImplementedError

    @property
    def initialized(self) -> bool:
        return self.generation >= 0

    @property
    def done(self) -> bool:
        return self.generation >= self.generations

    def run(self, callback: Callable[[Any], None] | None = None) -> tuple[list[int], float]:
        """Initialise if needed, then step until ``generations``; ``callback(self)`` after each
        generation (including generation 0 when it is created here). Returns `best`."""
        if not self.initialized:
            self.initialize()
            if callback is not None:
                callback(self)
        while not self.done:
            self.step()
            if callback is not None:
                callback(self)
        return self.best
