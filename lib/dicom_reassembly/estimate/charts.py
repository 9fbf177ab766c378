"""The analysis notebook's charts: each a ``matplotlib.figure.Figure`` built without pyplot (Agg canvas, no
global figure state), which Jupyter displays when a cell returns it.

They draw aggregates only (counts per label, histogram bins from ``histograms``): nothing here reads a dataset.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .analysis import MEMBER_KINDS, MISSING, CostTables
from .histograms import Histogram

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


def _hist(ax: Any, hist: Histogram, title: str, xlabel: str, ylabel: str = "count") -> None:
    """Overlaid histograms from bin counts (log x axis when the bins are log-spaced); x is bytes or a count."""
    if not hist.counts:
        _no_data(ax, title)
        return
    if hist.log:
        ax.set_xscale("log")
    for label, counts in hist.counts.items():
        empty = hist.empty.get(label, 0)
        note = f"; {empty} empty, not shown" if empty else ""
        # One weighted value per bin, at its left edge: the bars numpy would draw from the values themselves.
        ax.hist(hist.edges[:-1], bins=hist.edges, weights=counts, alpha=0.6, label=f"{label} ({sum(counts)}{note})")
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if xlabel == "bytes":  # 400 kB rather than 400000: six-digit tick labels ran into each other
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
    if ax.get_xscale() == "linear":  # whole numbers unless bytes: 1.5 instances per series means nothing
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=xlabel != "bytes"))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")


def _bars(ax: Any, labels: list[str], values: list[float], title: str, xlabel: str,
          colors: list[str] | None = None) -> None:
    if not labels:
        _no_data(ax, title)
        return
    from matplotlib.ticker import MaxNLocator

    pos = list(range(len(labels)))
    ax.barh(pos, values, color=colors)
    top = max(values, default=0)
    if top > 0:  # room for the value printed after the longest bar, inside the axes
        ax.set_xlim(0, top * 1.22)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 6))
    ax.set_yticks(pos, labels)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    for p, v in zip(pos, values, strict=True):
        # Counts in full (99,800, not 9.98e+04); amounts (USD) to four significant digits.
        text = f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4g}"
        ax.annotate(text, (v, p), xytext=(3, 0), textcoords="offset points", va="center", fontsize="small")


def plot_members_per_archive(archives: pd.DataFrame | Histogram) -> Figure:
    """Members per archive: stacked bars by kind for a few archives (``archives_table``), or the histogram by role
    (``analysis.members_per_archive`` decides)."""
    if isinstance(archives, Histogram):
        fig, (ax,) = _figure(width=8, height=4.0)
        _hist(ax, archives, "Members per archive, by role", "members", ylabel="archives")
        return fig
    fig, (ax,) = _figure(width=8, height=max(3.0, 0.3 * len(archives) + 1))
    if not len(archives):
        _no_data(ax, "Members per archive")
        return fig
    names = [str(a) for a in archives.index]
    left = [0] * len(archives)
    for kind in MEMBER_KINDS:
        values = archives[kind].tolist()
        ax.barh(names, values, left=left, label=kind)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("members")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the bars fill the axes
    ax.set_title("Members per archive, by kind")
    return fig


def plot_size_distributions(histograms: Mapping[str, Histogram]) -> Figure:
    """Histograms (``analysis.size_histograms``): archive sizes by role, member sizes by kind, header sizes."""
    fig, axes = _figure(len(histograms), width=4.6)
    for ax, (title, hist) in zip(axes, histograms.items(), strict=True):
        _hist(ax, hist, title, "bytes")
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


def plot_modality_years(table: pd.DataFrame) -> Figure:
    """Instances per study year, stacked by modality (``outputs.modality_year_counts``)."""
    fig, (ax,) = _figure(width=9, height=4.2)
    years = [c for c in table.columns if c != "total"]
    if not len(table) or not years:
        _no_data(ax, "Instances per study year and modality", "empty catalogue")
        return fig
    pos = list(range(len(years)))
    bottom = [0] * len(years)
    for modality, row in table[years].iterrows():
        values = row.tolist()
        ax.bar(pos, values, bottom=bottom, label=str(modality),
               color="tab:gray" if modality == MISSING else None)
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    rotate = len(years) > 8
    ax.set_xticks(pos, years, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize="small")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Instances per study year and modality")
    ax.set_xlabel("study year")
    ax.set_ylabel("instances")
    ax.legend(title="modality", fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_series(histograms: Mapping[str, Histogram]) -> Figure:
    """Per-series rollups (``outputs.series_histograms``): slices (instances) per series, bytes per series."""
    fig, axes = _figure(len(histograms), width=5.2)
    for ax, (title, hist) in zip(axes, histograms.items(), strict=True):
        _hist(ax, hist, title, "bytes" if "bytes" in title.lower() else "instances", ylabel="series")
    return fig
