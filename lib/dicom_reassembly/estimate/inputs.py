"""The analysis's inputs: the manifest (newest index per archive), one ledger run and the catalogue, registered
in an engine (DuckDB, or Spark when a session is given) as the relations ``manifest``, ``ledger`` and
``catalog``. Nothing is loaded here: the files are listed, the views defined, and only the archives' newest
index runs (one row per archive) are computed up front.

``manifest`` carries only the columns the analysis shows (``MANIFEST_COLUMNS``: never ``header_json``), so
every query reads those column chunks of the Parquet files and nothing else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, NotFoundError
from ..io import arrow_io
from ..io import uris as io_uris
from .engine import DuckDBEngine, Engine, SparkEngine

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
DEFAULT_MANIFEST = "out/demo/manifest"
DEFAULT_LEDGER = "out/demo/ledger"
CATALOG_SUFFIX = "_catalog"  # reassemble's default catalogue: <ledger>_catalog
MANIFEST_COLUMNS = (
    "archive_uri", "archive_role", "archive_size", "index_run", "member_name", "size", "kind", "sop_instance_uid",
    "error", "error_detail", "modality", "study_date", "patient_age",
)
LEDGER_COLUMNS = (
    "run_id", "sop_instance_uid", "status", "reason", "header_archive", "header_member", "pixel_archive",
    "pixel_member", "output_bytes",
)
_LONG_COLUMNS = {"archive_size", "size", "output_bytes"}


def resolve_input(value: str | None, default: str, root: str) -> str:
    """An input path from an environment value (or ``default``); relative local paths are taken from ``root``."""
    path = (value or "").strip() or default
    if io_uris.is_s3(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(root, path))


def default_catalog(ledger_uri: str) -> str:
    """Where reassemble writes the catalogue of a ledger unless told: ``<ledger>_catalog``."""
    return ledger_uri.rstrip("/") + CATALOG_SUFFIX


def _ledger_partitioning() -> Any:
    """``run_id=...`` folders, always read as strings (inferred types would turn an all-digit id into a number)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    return pads.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")


def ledger_run_files(uri: str) -> dict[str, list[str]]:
    """The Parquet files of each run of a ledger (its ``run_id=`` partitions); {} when there is no ledger."""
    import pyarrow.dataset as pads

    if not arrow_io.dataset_exists(uri):
        return {}
    runs: dict[str, list[str]] = {}
    for fragment in arrow_io.open_dataset(uri, _ledger_partitioning()).get_fragments():
        run = pads.get_partition_keys(fragment.partition_expression).get("run_id")
        if run is not None:
            runs.setdefault(str(run), []).append(fragment.path)
    return runs


def ledger_runs(uri: str) -> list[str]:
    """The run ids present in a ledger (from its ``run_id=`` partitions), oldest first; [] when there is none."""
    return sorted(ledger_run_files(uri))


def _projection(engine: Engine, relation: str, wanted: Iterable[str], alias: str = "") -> str:
    """``wanted`` columns of ``relation``, typed nulls for those its files do not have (older datasets)."""
    present = set(engine.columns(relation))
    return ", ".join(f"{alias}{c}" if c in present else f"CAST(NULL AS {_type(c)}) AS {c}" for c in wanted)


def _type(column: str) -> str:
    return "BIGINT" if column in _LONG_COLUMNS else "STRING"


def register_manifest(engine: Engine, uri: str) -> None:
    """``manifest``: the rows of each archive's newest index run (decided by its own ``kind = 'archive'`` rows,
    so a run that died before writing an archive's row never wins), with ``MANIFEST_COLUMNS`` only."""
    try:
        dataset = arrow_io.open_manifest(uri)
    except NotFoundError as exc:
        raise NotFoundError("manifest_not_found", "no Parquet manifest here (run `make demo` or set MANIFEST)",
                            uri=uri) from exc
    engine.register_parquet("manifest_files", uri, dataset.files)
    engine.materialize("manifest_newest_runs",
                       "SELECT archive_uri, max(index_run) AS index_run FROM manifest_files "
                       "WHERE kind = 'archive' AND index_run IS NOT NULL GROUP BY archive_uri")
    engine.view("manifest", f"SELECT {_projection(engine, 'manifest_files', MANIFEST_COLUMNS, 'm.')} "
                            "FROM manifest_files m JOIN manifest_newest_runs n "
                            "ON m.archive_uri = n.archive_uri AND m.index_run = n.index_run")


def register_ledger(engine: Engine, uri: str, run_id: str | None,
                    files: dict[str, list[str]]) -> None:
    """``ledger``: the rows of one run (no rows when ``run_id`` is None), with ``LEDGER_COLUMNS``."""
    if run_id is None:
        nulls = ", ".join(f"CAST(NULL AS {_type(c)}) AS {c}" for c in LEDGER_COLUMNS)
        engine.view("ledger", f"SELECT {nulls} FROM (SELECT 1 AS one) AS nothing WHERE 1 = 0")
        return
    engine.register_parquet("ledger_files", uri, files[run_id])
    cols = [c for c in LEDGER_COLUMNS if c != "run_id"]
    engine.view("ledger", f"SELECT {engine.literal(run_id)} AS run_id, "
                          f"{_projection(engine, 'ledger_files', cols)} FROM ledger_files")


@dataclass
class Inputs:
    """The registered inputs: query them with ``frame``; archive URIs are shown relative to ``prefix``."""

    manifest_uri: str
    ledger_uri: str
    engine: Engine
    run_id: str | None
    runs: list[str] = field(default_factory=list)
    prefix: str = ""
    catalog_uri: str | None = None
    has_catalog: bool = False
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def frame(self, sql: str) -> pd.DataFrame:
        """An aggregate query's result."""
        return self.engine.frame(sql)

    def shorten(self, values: pd.Series) -> pd.Series:
        """Archive URIs without the common prefix, for display."""
        p = self.prefix
        if not p:
            return values
        return values.map(lambda u: u[len(p):] if isinstance(u, str) and u.startswith(p) else u)

    def close(self) -> None:
        """Release the engine's resources (DuckDB's connection and spill folder; Spark's cached tables)."""
        self.engine.close()


def _common_prefix(first: Any, last: Any) -> str:
    """The longest common prefix ending with '/' of the smallest and largest URI: that of all of them."""
    if not isinstance(first, str) or not isinstance(last, str):
        return ""
    prefix = os.path.commonprefix([first, last])
    return prefix[: prefix.rfind("/") + 1]


def open_inputs(manifest_uri: str, ledger_uri: str, run_id: str | None = None, catalog_uri: str | None = None, *,
                spark: Any = None, shorten: bool = True, memory_limit: str | None = None,
                threads: int | None = None) -> Inputs:
    """Register the manifest, one ledger run (the newest unless ``run_id``) and the catalogue (default
    ``<ledger>_catalog``; ``has_catalog`` False when there is none) in DuckDB, or in ``spark`` when given.

    ``memory_limit`` and ``threads`` bound DuckDB (its defaults: 80 % of RAM, every core).
    """
    run_files = ledger_run_files(ledger_uri)
    runs = sorted(run_files)
    if run_id is not None and run_id not in run_files:
        raise ConfigError("ledger_run_not_found", f"no run {run_id!r} (runs: {', '.join(runs) or 'none'})",
                          uri=ledger_uri)
    if run_id is None and runs:
        run_id = runs[-1]
    engine: Engine = SparkEngine(spark) if spark is not None else DuckDBEngine(memory_limit, threads)
    try:
        with arrow_io.manifest_errors(manifest_uri):
            register_manifest(engine, manifest_uri)
        register_ledger(engine, ledger_uri, run_id, run_files)
        catalog_uri = catalog_uri or default_catalog(ledger_uri)
        has_catalog = arrow_io.dataset_exists(catalog_uri)
        if has_catalog:
            engine.register_catalog("catalog", catalog_uri)
        prefix = ""
        if shorten:
            ends = engine.frame("SELECT min(archive_uri) AS first, max(archive_uri) AS last FROM manifest")
            prefix = _common_prefix(ends["first"].iloc[0], ends["last"].iloc[0])
    except BaseException:
        engine.close()
        raise
    log.info("manifest %s, ledger run %s of %s, catalogue %s (%s) on %s", manifest_uri, run_id, ledger_uri,
             catalog_uri, "present" if has_catalog else "none", engine.name)
    return Inputs(manifest_uri, ledger_uri, engine, run_id, runs, prefix, catalog_uri, has_catalog)
