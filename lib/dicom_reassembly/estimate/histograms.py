"""Histograms counted where the data is: the engine bins the values, only the bin counts reach pandas.

The bins are those the notebook has always drawn (30 edges, log-spaced when the positive values span more than
two decades), computed with numpy from the values' minimum and maximum; the engine then places each value with
the same comparisons as ``numpy.histogram`` (``[e_i, e_i+1)``, the last bin closed), so the counts are exactly
those of ``numpy.histogram`` over the values. Non-positive values are counted apart ("empty"), not drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .engine import Engine

EDGES = 30


@dataclass
class Histogram:
    """Bin counts per series over shared ``edges``; ``empty`` counts each series' values not above zero."""

    edges: list[float]
    counts: dict[str, list[int]]
    empty: dict[str, int] = field(default_factory=dict)
    log: bool = False

    def total(self, series: str) -> int:
        """Values drawn for ``series``."""
        return sum(self.counts.get(series, []))


def bin_edges(lo: float, hi: float, n: int = EDGES) -> tuple[list[float], bool]:
    """The notebook's bin edges for positive values in [lo, hi], and whether they are log-spaced.

    The ends are pinned to ``lo`` and at least ``hi``: ``10 ** log10(lo)`` can land above ``lo`` and would
    leave the smallest value out of every bin.
    """
    import numpy as np

    if hi / lo > 100:
        edges = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, n)
        log = True
    else:
        edges = np.linspace(lo, hi + (1 if hi == lo else 0), n)
        log = False
    out = [float(e) for e in edges]
    out[0] = float(lo)
    out[-1] = max(out[-1], float(hi))
    return out, log


def _bin_case(engine: Engine, edges: Sequence[float], value: str) -> str:
    """The bin index of ``value`` (known to lie within the edges) by comparisons with the edges themselves."""
    # Edges travel as text cast to DOUBLE: both engines parse the shortest repr back to the same double.
    whens = " ".join(f"WHEN {value} < CAST({engine.literal(repr(e))} AS DOUBLE) THEN {i}"
                     for i, e in enumerate(edges[1:-1]))
    return f"CASE {whens} ELSE {len(edges) - 2} END"


def histogram(engine: Engine, values_sql: str, series: Sequence[str]) -> Histogram:
    """Histogram of ``values_sql``, a query of ``(series, value)`` rows, for each label in ``series`` (in order)."""
    stats = engine.frame(
        f"SELECT series, sum(CASE WHEN value > 0 THEN 1 ELSE 0 END) AS positive, "
        f"sum(CASE WHEN value <= 0 THEN 1 ELSE 0 END) AS empty, "
        f"min(CASE WHEN value > 0 THEN value END) AS lo, max(CASE WHEN value > 0 THEN value END) AS hi "
        f"FROM ({values_sql}) AS v GROUP BY series")
    stats = stats[stats["series"].isin(list(series))]
    empty = {str(s): int(e or 0) for s, e in zip(stats["series"], stats["empty"].fillna(0))}
    shown = stats[stats["positive"].fillna(0) > 0]
    counts: dict[str, list[int]] = {}
    if not len(shown):
        return Histogram([], counts, empty)
    edges, log = bin_edges(float(shown["lo"].min()), float(shown["hi"].max()))
    labels = ", ".join(engine.literal(s) for s in series)
    binned = engine.frame(
        f"SELECT series, {_bin_case(engine, edges, 'value')} AS bin, count(*) AS n FROM ({values_sql}) AS v "
        f"WHERE value > 0 AND series IN ({labels}) GROUP BY series, {_bin_case(engine, edges, 'value')}")
    for s in series:
        if s in set(shown["series"]):
            counts[s] = [0] * (len(edges) - 1)
    for s, b, n in zip(binned["series"], binned["bin"], binned["n"]):
        counts[str(s)][int(b)] = int(n)
    return Histogram(edges, counts, empty, log)
