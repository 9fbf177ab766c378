"""What was written, from the catalogue (``records.catalog``, newest row per instance): instances per modality
and study year, and per-series rollups (instances, that is slices, and bytes per series).

The catalogue is optional: ``Inputs.has_catalog`` says whether one was found, and these functions need one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotFoundError
from .analysis import MISSING
from .histograms import Histogram, histogram
from .inputs import Inputs

if TYPE_CHECKING:
    import pandas as pd

# One row per series: its instances (slices) and output bytes.
SERIES = ("SELECT series_instance_uid, count(*) AS instances, CAST(sum(output_bytes) AS BIGINT) AS bytes "
          "FROM catalog WHERE series_instance_uid IS NOT NULL GROUP BY series_instance_uid")


def _require(data: Inputs) -> None:
    if not data.has_catalog:
        raise NotFoundError("catalog_not_found", "no catalogue here (reassemble writes <ledger>_catalog)",
                            uri=data.catalog_uri or "")


def catalog_overview(data: Inputs) -> pd.DataFrame:
    """Instances, series, studies, patients and bytes in the catalogue."""
    import pandas as pd

    _require(data)
    got = data.frame(
        "SELECT count(*) AS instances, count(DISTINCT series_instance_uid) AS series, "
        "count(DISTINCT study_instance_uid) AS studies, count(DISTINCT patient_id) AS patients, "
        "CAST(sum(output_bytes) AS BIGINT) AS bytes, "
        "CAST(sum(CASE WHEN study_date IS NULL THEN 1 ELSE 0 END) AS BIGINT) AS undated FROM catalog").iloc[0]
    rows = {"location": data.catalog_uri, "instances": got["instances"], "series": got["series"],
            "studies": got["studies"], "patients": got["patients"], "output bytes": got["bytes"],
            "instances without a study date": got["undated"]}
    values = {k: (v if isinstance(v, str) else 0 if pd.isna(v) else int(v)) for k, v in rows.items()}
    return pd.DataFrame({"value": pd.Series(values, dtype="object")}).rename_axis("catalogue")


def modality_year_counts(data: Inputs) -> pd.DataFrame:
    """Instances per modality (rows, most first) and study year (columns, then ``(missing)``), with a total."""
    import pandas as pd

    _require(data)
    got = data.frame("SELECT modality, year(study_date) AS year, count(*) AS n FROM catalog "
                     "GROUP BY modality, year(study_date)")
    got["modality"] = got["modality"].astype("object").where(got["modality"].notna() & (got["modality"] != ""),
                                                              MISSING)
    got["year"] = [MISSING if pd.isna(y) else str(int(y)) for y in got["year"]]
    table = got.pivot_table(index="modality", columns="year", values="n", aggfunc="sum", fill_value=0)
    years = sorted(c for c in table.columns if c != MISSING) + [c for c in table.columns if c == MISSING]
    table = table[years].astype("int64")
    table["total"] = table.sum(axis=1)
    table = table.sort_values("total", ascending=False, kind="stable")
    table.columns.name = "study year"
    return table


def series_histograms(data: Inputs) -> dict[str, Histogram]:
    """Bins of the per-series rollups: instances (slices) per series, and bytes per series."""
    _require(data)
    return {
        "Slices (instances) per series": histogram(
            data.engine, f"SELECT 'series' AS series, instances AS value FROM ({SERIES}) AS s", ("series",)),
        "Bytes per series": histogram(
            data.engine, f"SELECT 'series' AS series, bytes AS value FROM ({SERIES}) AS s", ("series",)),
    }
