"""The catalogue in DuckDB, in process: SQL queries, cohorts and statistics over its Parquet files.

``open_catalog`` gives a connection with two views: ``catalog`` (current rows, ``catalog.current_rows_sql``) and
``series`` (the per-series rollup). A filter on ``modality`` or ``study_year`` prunes whole partitions; one on
``study_date`` or ``series_instance_uid`` prunes row groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ConfigError
from ..selection.sql import criteria_sql
from . import catalog
from .cohort import LIST_COLUMNS

log = logging.getLogger(__name__)

COHORT_ORDER = "study_instance_uid, series_instance_uid, instance_number NULLS LAST, sop_instance_uid"
STATS_LEVELS = {"modality": "modality", "study": "study_instance_uid", "patient": "patient_id"}
STATS_COLUMNS = ("level", "key", "patients", "studies", "series", "instances", "frames", "bytes", "modalities",
                 "first_study_date", "last_study_date")


def open_catalog(uri: str) -> Any:
    """A DuckDB connection with the views ``catalog`` and ``series`` over the catalogue at ``uri``."""
    import duckdb

    con = duckdb.connect()
    catalog.create_current_view(con, uri, name="catalog", series="series")
    return con


def run_sql(con: Any, sql: str) -> Any:
    """Execute a user's SQL; a DuckDB error (syntax, unknown column) is ConfigError ``bad_query``, one line."""
    import duckdb

    try:
        return con.execute(sql)
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError("bad_query", first[:300]) from None


def iter_rows(cursor: Any, batch: int = 10_000) -> Iterator[tuple]:
    """A cursor's rows, fetched in batches (a large result never sits whole in memory)."""
    while True:
        rows = cursor.fetchmany(batch)
        if not rows:
            return
        yield from rows


def cohort_sql(criteria: Sequence[Any] = (), where: str | None = None) -> str:
    """The cohort's query: instances that meet every criterion (and ``where``, SQL over ``catalog`` and ``series``)."""
    condition = criteria_sql(criteria)
    if where:
        condition = f"({condition}) AND ({where})"
    columns = ", ".join(LIST_COLUMNS)
    return f"SELECT {columns} FROM catalog WHERE {condition} ORDER BY {COHORT_ORDER}"


def _level_sql(level: str, key: str) -> str:
    return (f"SELECT '{level}' AS level, CAST({key} AS VARCHAR) AS key, count(DISTINCT patient_id) AS patients, "
            "count(DISTINCT study_instance_uid) AS studies, count(DISTINCT series_instance_uid) AS series, "
            "count(*) AS instances, CAST(sum(coalesce(number_of_frames, 1)) AS BIGINT) AS frames, "
            "CAST(sum(output_bytes) AS BIGINT) AS bytes, "
            "string_agg(DISTINCT modality, ' ' ORDER BY modality) AS modalities, "
            f"min(study_date) AS first_study_date, max(study_date) AS last_study_date FROM catalog GROUP BY {key}")


def stats_sql(levels: Sequence[str] = tuple(STATS_LEVELS)) -> str:
    """Counts and sizes per modality, per study and per patient (one row per key, ``level`` says which)."""
    order = " ".join(f"WHEN '{lv}' THEN {i}" for i, lv in enumerate(STATS_LEVELS))
    union = " UNION ALL ".join(_level_sql(lv, STATS_LEVELS[lv]) for lv in levels)
    return f"SELECT * FROM ({union}) ORDER BY CASE level {order} END, key NULLS LAST"
