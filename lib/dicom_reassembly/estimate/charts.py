"""The analysis notebook's charts: each a ``matplotlib.figure.Figure`` built without pyplot (Agg canvas, no
global figure state), which Jupyter displays when a cell returns it.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .analysis import MEMBER_KINDS, MISSING, ROLES, CostTables

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def _figure(ncols: int = 1, width: float = 6.0, height: float = 3.6) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _no_data(ax: Any, title: str, what: str = "no data") -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _hist(ax: Any, series: Mapping[str, Any], title: str, xlabel: str) -> None:
    """Overlaid histograms of positive values, log-spaced when they span more than two decades."""
    import numpy as np

    present = {k: [x for x in v if x is not None and x == x] for k, v in series.items()}
    data = {k: np.asarray([x for x in v if x > 0], dtype="float64") for k, v in present.items()}
    empty = {k: len(present[k]) - len(v) for k, v in data.items()}
    data = {k: v for k, v in data.items() if len(v)}
    if not data:
        _no_data(ax, title)
        return
    lo = min(v.min() for v in data.values())
    hi = max(v.max() for v in data.values())
    if hi / lo > 100:
        bins = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 30)
        ax.set_xscale("log")
    else:
        bins = np.linspace(lo, hi + (1 if hi == lo else 0), 30)
    for label, values in data.items():
        note = f"; {empty[label]} empty, not shown" if empty[label] else ""
        ax.hist(values, bins=bins, alpha=0.6, label=f"{label} ({len(values)}{note})")
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if xlabel == "bytes":  # 400 kB rather than 400000: six-digit tick labels ran into each other
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    if ax.get_xscale() == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize="small")


def _bars(ax: Any, labels: list[str], values: list[float], title: str, xlabel: str,
          colors: list[str] | None = None) -> None:
    if not labels:
        _no_data(ax, title)
        return
    from matplotlib.ticker import MaxNLocator

    pos = list(range(len(labels)))
    ax.barh(pos, values, color=colors)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 6))
    ax.set_yticks(pos, labels)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for p, v in zip(pos, values, strict=True):
        ax.annotate(f"{v:,.4g}", (v, p), xytext=(3, 0), textcoords="offset points", va="center", fontsize="small")


def plot_members_per_archive(archives: pd.DataFrame) -> Figure:
    """Members per archive: stacked bars by kind for a few archives, a histogram by role for many."""
    few = len(archives) <= 40
    fig, (ax,) = _figure(width=8, height=max(3.0, 0.3 * len(archives) + 1) if few else 4.0)
    if not len(archives):
        _no_data(ax, "Members per archive")
        return fig
    if few:
        names = [str(a) for a in archives.index]
        left = [0] * len(archives)
        for kind in MEMBER_KINDS:
            values = archives[kind].tolist()
            ax.barh(names, values, left=left, label=kind)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set_xlabel("members")
        ax.legend(fontsize="small")
        ax.set_title("Members per archive, by kind")
    else:
        _hist(ax, {role: archives.loc[archives["role"] == role, "members"].tolist() for role in ROLES},
              "Members per archive, by role", "members")
    return fig


def plot_size_distributions(manifest: pd.DataFrame) -> Figure:
    """Histograms: archive sizes by role, member sizes by kind, header (JSON) sizes."""
    fig, axes = _figure(3, width=4.6)
    arch = manifest[manifest["kind"] == "archive"].drop_duplicates("archive_uri")
    _hist(axes[0], {r: arch.loc[arch["archive_role"] == r, "archive_size"].tolist() for r in ROLES},
          "Archive sizes", "bytes")
    _hist(axes[1], {k: manifest.loc[manifest["kind"] == k, "size"].tolist() for k in ("pixels", "other")},
          "Pixel and other member sizes", "bytes")
    _hist(axes[2], {"header": manifest.loc[manifest["kind"] == "header", "size"].tolist()},
          "Header (JSON) sizes", "bytes")
    return fig


_STATUS_COLORS = {"written": "tab:green", "skipped_existing": "tab:olive", "filtered_out": "tab:gray"}


def plot_status_counts(counts: pd.DataFrame, run_id: str | None = None) -> Figure:
    """Ledger rows per status (written in green, problems in red)."""
    fig, (ax,) = _figure(width=7, height=max(2.5, 0.35 * len(counts) + 1.2))
    title = f"Outcomes per status (run {run_id})" if run_id else "Outcomes per status"
    if not len(counts):
        _no_data(ax, title, "no ledger run")
        return fig
    labels = [str(s) for s in counts.index]
    _bars(ax, labels, counts["rows"].tolist(), title, "ledger rows",
          [_STATUS_COLORS.get(s, "tab:red") for s in labels])
    return fig


def plot_demographics(modalities: pd.DataFrame, dates: pd.DataFrame, ages: pd.DataFrame) -> Figure:
    """Three bar charts: instances per modality, per study year/month, per patient-age band."""
    fig, axes = _figure(3, width=4.6, height=3.8)
    for ax, frame, title in ((axes[0], modalities, "Modality"), (axes[1], dates, f"Study {dates.index.name}"),
                             (axes[2], ages, "Patient age (years)")):
        if not len(frame) or not frame["instances"].sum():
            _no_data(ax, title)
            continue
        labels = [str(x) for x in frame.index]
        ax.bar(range(len(labels)), frame["instances"].tolist(),
               color=["tab:gray" if x == MISSING else "tab:blue" for x in labels])
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0, ha="right"
                      if len(labels) > 6 else "center", fontsize="small")
        ax.set_title(title)
        ax.set_ylabel("instances")
    return fig


def plot_cost(tables: CostTables) -> Figure:
    """One-time cost per line (largest first) and monthly destination storage per class."""
    fig, axes = _figure(2, width=6.5, height=4.5)
    cost_col = [c for c in tables.lines.columns if c.startswith("cost (")][0]
    lines = tables.lines[tables.lines[cost_col] > 0].sort_values(cost_col, ascending=False)
    _bars(axes[0], [textwrap.shorten(f"{g}: {i}", 50, placeholder="...") for g, i in
                    zip(lines["group"], lines["item"], strict=True)],
          lines[cost_col].tolist(), "One-time cost by line", cost_col)
    month_col = [c for c in tables.storage.columns if c.startswith("per month")][0]
    _bars(axes[1], [str(c) for c in tables.storage.index], tables.storage[month_col].tolist(),
          "Destination storage per month", month_col)
    return fig
