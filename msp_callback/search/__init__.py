"""Search over per-block N:M levels (the MSP evolutionary search)."""

from ..budget import round_to_budget, trace_levels
from .evolution import (
    INITIALISATIONS,
    EvolutionarySearch,
    check_individual,
    crossover,
    mutate,
    random_population,
    repair,
    sensitivity_population,
    trace_population,
)

__all__ = [
    "EvolutionarySearch",
    "INITIALISATIONS",
    "check_individual",
    "crossover",
    "mutate",
    "random_population",
    "repair",
    "round_to_budget",
    "sensitivity_population",
    "trace_levels",
    "trace_population",
]
