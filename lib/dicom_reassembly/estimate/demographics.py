"""Modality, study date and patient age of the delivery's instances, from the manifest's key-tag columns.

One header per SOP Instance UID: of several copies, the one in the first archive (by URI) and member. The engine
counts instances per distinct raw value of each attribute (one query, grouping sets); the values are few
(modalities, calendar days, AS ages), so the parsing stays here in Python, the same for both engines: study
dates as ``YYYYMMDD`` (or the old ``YYYY.MM.DD``), ages as DICOM AS (``nnnD|W|M|Y``).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .analysis import MISSING
from .inputs import Inputs

if TYPE_CHECKING:
    import pandas as pd

_AS = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AS_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
ATTRIBUTES = ("modality", "study_date", "patient_age")


def parse_age(value: Any) -> float:
    """A DICOM AS value (``nnnD|W|M|Y``) in years; NaN when missing or not an AS value."""
    if not isinstance(value, str):
        return math.nan
    match = _AS.match(value)
    if not match:
        return math.nan
    return int(match.group(1)) * _AS_YEARS[match.group(2).upper()]


def value_counts(data: Inputs) -> pd.DataFrame:
    """Instances per distinct value of each attribute: columns ``attribute``, ``value`` (null when missing), ``n``.

    Computed once per ``Inputs`` (every table below reads it).
    """
    if "demographics" in data.cache:
        return data.cache["demographics"]
    e = data.engine
    first = e.struct("archive_uri", "member_name", *ATTRIBUTES)
    fields = ", ".join(f"f.f{i + 2} AS {a}" for i, a in enumerate(ATTRIBUTES))
    which = " ".join(f"WHEN grouping({a}) = 0 THEN '{a}'" for a in ATTRIBUTES)
    out = data.frame(
        f"WITH first_copy AS (SELECT min({first}) AS f FROM manifest WHERE kind = 'header' GROUP BY sop_instance_uid), "
        f"instances AS (SELECT {fields} FROM first_copy) "
        f"SELECT CASE {which} END AS attribute, coalesce({', '.join(ATTRIBUTES)}) AS value, count(*) AS n "
        f"FROM instances GROUP BY GROUPING SETS ({', '.join(f'({a})' for a in ATTRIBUTES)})")
    out["n"] = out["n"].astype("int64")
    data.cache["demographics"] = out
    return out


def _counts(data: Inputs, attribute: str) -> pd.Series:
    """Instances per raw value of ``attribute`` (index: the value, None when missing)."""
    import pandas as pd

    rows = value_counts(data)
    rows = rows[rows["attribute"] == attribute]
    return pd.Series(rows["n"].values, index=pd.Index(rows["value"].astype("object").values), dtype="int64")


def modality_counts(data: Inputs) -> pd.DataFrame:
    """Instances per modality; headers without one count as ``(missing)``."""
    counts = _counts(data, "modality")
    labels = [v if isinstance(v, str) and v != "" else MISSING for v in counts.index]
    out = counts.groupby(labels).sum().rename("instances").rename_axis("modality").to_frame()
    out["_label"] = out.index
    return out.sort_values(["instances", "_label"], ascending=[False, True])[["instances"]]


def study_date_counts(data: Inputs, freq: str = "year") -> pd.DataFrame:
    """Instances per study year or month (``freq``: year|month); unparsable or missing dates count apart."""
    import pandas as pd

    if freq not in ("year", "month"):
        raise ConfigError("bad_freq", f"freq must be year or month, got {freq!r}")
    counts = _counts(data, "study_date")
    raw = pd.Series(counts.index, dtype="object").map(lambda v: v.strip().replace(".", "") if isinstance(v, str) else v)
    dates = pd.to_datetime(raw, format="%Y%m%d", errors="coerce")
    labels = dates.dt.strftime("%Y" if freq == "year" else "%Y-%m")
    valid = labels.notna().values
    out = counts[valid].groupby(labels[valid].values).sum().sort_index()
    missing = int(counts[~valid].sum())
    if missing:
        out = pd.concat([out, pd.Series({MISSING: missing})])
    return out.astype("int64").rename("instances").rename_axis(freq).to_frame()


def _ages(data: Inputs) -> tuple[pd.Series, int]:
    """Instances per age in years (index: years, sorted), and the instances without a valid age."""
    counts = _counts(data, "patient_age")
    years = counts.index.map(parse_age).astype("float64")
    valid = ~years.isna()
    by_years = counts[valid].groupby(years[valid]).sum().sort_index()
    return by_years, int(counts[~valid].sum())


def age_distribution(data: Inputs, bin_years: int = 10) -> pd.DataFrame:
    """Instances per patient-age band (AS parsed to years); missing or invalid ages count apart."""
    import pandas as pd

    if bin_years < 1:
        raise ConfigError("bad_bin", "bin_years must be >= 1")
    by_years, missing = _ages(data)
    top = int(by_years.index.max() // bin_years + 1) * bin_years if len(by_years) else bin_years
    edges = list(range(0, top + bin_years, bin_years))
    labels = [f"{lo}-{lo + bin_years - 1}" for lo in edges[:-1]]
    bands = pd.cut(pd.Series(by_years.index), bins=edges, right=False, labels=labels)
    counts = pd.Series(by_years.values).groupby(bands.values, observed=False).sum().reindex(labels, fill_value=0)
    if missing:
        counts = pd.concat([counts, pd.Series({MISSING: missing})])
    return counts.astype("int64").rename("instances").rename_axis("age (years)").to_frame()


def _weighted_quantile(values: Any, weights: Any, q: float) -> float:
    """The ``q`` quantile of values repeated ``weights`` times, interpolated linearly as pandas does."""
    import numpy as np

    ends = np.cumsum(weights)  # value i covers positions [ends[i-1], ends[i]) of the sorted, repeated values
    pos = (ends[-1] - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    v_lo = values[int(np.searchsorted(ends, lo, side="right"))]
    v_hi = values[int(np.searchsorted(ends, hi, side="right"))]
    return float(v_lo + (v_hi - v_lo) * (pos - lo))


def age_summary(data: Inputs) -> pd.DataFrame:
    """Patient age in years: count, min, median, mean, max of the parsable values."""
    import numpy as np
    import pandas as pd

    by_years, _ = _ages(data)
    values, weights = by_years.index.to_numpy(dtype="float64"), by_years.to_numpy(dtype="int64")
    n = int(weights.sum())
    stats = {"count": float(n), "min": math.nan, "median": math.nan, "mean": math.nan, "max": math.nan}
    if n:
        stats.update(min=float(values[0]), median=_weighted_quantile(values, weights, 0.5),
                     mean=float(np.dot(values, weights) / n), max=float(values[-1]))
    return pd.Series(stats).round(2).to_frame("years")
