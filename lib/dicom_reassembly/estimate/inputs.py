"""The analysis notebook's inputs: the manifest and the ledger read with pyarrow into pandas frames, projecting
only the columns shown (never ``header_json``), so no JVM is needed.
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

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
DEFAULT_MANIFEST = "out/demo/manifest"
DEFAULT_LEDGER = "out/demo/ledger"
MANIFEST_COLUMNS = (
    "archive_uri", "archive_role", "archive_size", "index_run", "member_name", "size", "kind", "sop_instance_uid",
    "error", "error_detail", "modality", "study_date", "patient_age",
)
LEDGER_COLUMNS = (
    "run_id", "sop_instance_uid", "status", "reason", "header_archive", "header_member", "pixel_archive",
    "pixel_member", "output_bytes",
)


def resolve_input(value: str | None, default: str, root: str) -> str:
    """An input path from an environment value (or ``default``); relative local paths are taken from ``root``."""
    path = (value or "").strip() or default
    if io_uris.is_s3(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(root, path))


def read_manifest_frame(uri: str, columns: Iterable[str] = MANIFEST_COLUMNS) -> pd.DataFrame:
    """The manifest's newest index per archive as pandas, with only ``columns`` read."""
    cols = list(dict.fromkeys(["archive_uri", "index_run", "kind", *columns]))
    try:
        table = arrow_io.read_manifest_table(uri, cols)
    except NotFoundError as exc:
        raise NotFoundError("manifest_not_found", "no Parquet manifest here (run `make demo` or set MANIFEST)",
                            uri=uri) from exc
    return table.to_pandas()


def _ledger_partitioning() -> Any:
    """``run_id=...`` folders, always read as strings (inferred types would turn an all-digit id into a number)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    return pads.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")


def ledger_runs(uri: str) -> list[str]:
    """The run ids present in a ledger (from its ``run_id=`` partitions), oldest first; [] when there is none."""
    import pyarrow.dataset as pads

    if not arrow_io.dataset_exists(uri):
        return []
    runs: set[str] = set()
    for fragment in arrow_io.open_dataset(uri, _ledger_partitioning()).get_fragments():
        run = pads.get_partition_keys(fragment.partition_expression).get("run_id")
        if run is not None:
            runs.add(str(run))
    return sorted(runs)


def read_ledger_frame(uri: str, run_id: str | None = None,
                      columns: Iterable[str] = LEDGER_COLUMNS) -> tuple[pd.DataFrame, str | None]:
    """One run of the ledger (the newest unless ``run_id``) and its id; an empty frame when there is no ledger."""
    import pandas as pd
    import pyarrow.dataset as pads

    cols = list(dict.fromkeys(["run_id", *columns]))
    runs = ledger_runs(uri)
    if run_id is None:
        if not runs:
            log.info("no ledger run under %s", uri)
            return pd.DataFrame({c: pd.Series(dtype="object") for c in cols}), None
        run_id = runs[-1]
    elif run_id not in runs:
        raise ConfigError("ledger_run_not_found", f"no run {run_id!r} (runs: {', '.join(runs) or 'none'})", uri=uri)
    ds = arrow_io.open_dataset(uri, _ledger_partitioning())
    table = ds.to_table(columns=[c for c in cols if c in ds.schema.names], filter=pads.field("run_id") == run_id)
    return table.to_pandas(), run_id


def _common_prefix(uris: Iterable[str]) -> str:
    """The longest common prefix ending with '/', so names stay whole."""
    values = [u for u in uris if isinstance(u, str)]
    if not values:
        return ""
    prefix = os.path.commonprefix(values)
    return prefix[: prefix.rfind("/") + 1]


def _strip_prefix(series: pd.Series, prefix: str) -> pd.Series:
    if not prefix:
        return series
    return series.map(lambda u: u[len(prefix):] if isinstance(u, str) and u.startswith(prefix) else u)


@dataclass
class Inputs:
    """The loaded manifest and ledger run; archive URIs are shown relative to ``prefix``."""

    manifest_uri: str
    ledger_uri: str
    manifest: pd.DataFrame
    ledger: pd.DataFrame
    run_id: str | None
    runs: list[str] = field(default_factory=list)
    prefix: str = ""


def read_inputs(manifest_uri: str, ledger_uri: str, run_id: str | None = None, shorten: bool = True) -> Inputs:
    """Read the manifest (newest index) and one ledger run; optionally shorten archive URIs for display."""
    manifest = read_manifest_frame(manifest_uri)
    ledger, run = read_ledger_frame(ledger_uri, run_id)
    prefix = _common_prefix(manifest["archive_uri"].dropna().unique()) if shorten else ""
    if prefix:
        manifest["archive_uri"] = _strip_prefix(manifest["archive_uri"], prefix)
        for col in ("header_archive", "pixel_archive"):
            if col in ledger:
                ledger[col] = _strip_prefix(ledger[col], prefix)
    log.info("manifest %s: %d rows; ledger run %s: %d rows", manifest_uri, len(manifest), run, len(ledger))
    return Inputs(manifest_uri, ledger_uri, manifest, ledger, run, ledger_runs(ledger_uri), prefix)
