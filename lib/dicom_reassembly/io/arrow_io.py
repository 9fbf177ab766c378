"""Parquet through pyarrow, without Spark: one S3 filesystem and one "newest index per archive" rule.

The CLI commands (lookup, restore plan, cost, stow) and the analysis notebook read the manifest and the
ledgers here. The manifest is appended to on re-runs; for each archive only the rows of its newest index run
count, and that run is decided by the archive's own ``kind == 'archive'`` rows (a run that died before writing
an archive's row never wins). ``manifest.with_latest_index`` applies the same rule in Spark.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigError, NotFoundError, StorageError
from . import uris
from .listing import list_dataset_files

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# The key that pairs an archive with one of its runs; neither a URI nor a run id holds a NUL.
_SEP = "\x00"


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for ``uri``: an S3FileSystem for s3:// URIs, ``(None, uri)`` for local paths.

    The endpoint is taken from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` and the region from
    ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (default us-east-1), as boto3 does; credentials come from the
    default AWS chain.
    """
    if not uris.is_s3(uri):
        return None, uri
    from pyarrow import fs

    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        # pyarrow wants host[:port] and the scheme apart; boto3's variable holds a URL.
        parts = urlsplit(endpoint)
        kwargs["endpoint_override"] = parts.netloc or endpoint
        kwargs["scheme"] = parts.scheme or "https"
    return fs.S3FileSystem(**kwargs), uri[len(uris.S3_PREFIX):]


def dataset_exists(uri: str) -> bool:
    """True when a Parquet dataset (at least one ``.parquet`` file) has been written at ``uri``: files under
    ``_``/``.`` names (a staged write that never moved in, ``_temporary``) do not count, as readers skip them."""
    return any(o.uri.endswith(".parquet") for o in list_dataset_files(uri, recursive=True))


def open_dataset(uri: str, partitioning: Any = None) -> pads.Dataset:
    """A Parquet dataset (a folder of files, or one file), local or on S3. pyarrow's errors pass through."""
    import pyarrow.dataset as pads

    filesystem, path = arrow_filesystem(uri)
    return pads.dataset(path, filesystem=filesystem, format="parquet", partitioning=partitioning)


@contextlib.contextmanager
def manifest_errors(uri: str) -> Iterator[None]:
    """Turn pyarrow failures while reading a manifest (a damaged file, a lost connection) into a typed error."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise StorageError("manifest_unreadable", f"{type(exc).__name__}: {str(exc)[:200]}", uri=uri) from exc


def open_manifest(uri: str, required: Iterable[str] = ()) -> pads.Dataset:
    """The manifest dataset at ``uri``, checked to hold ``archive_uri``, ``index_run``, ``kind`` and ``required``.

    Raises NotFoundError ``manifest_not_found`` (no Parquet there), StorageError ``manifest_unreadable`` and
    ConfigError ``manifest_bad_schema``.
    """
    import pyarrow as pa

    try:
        dataset = open_dataset(uri)
    except FileNotFoundError as exc:
        raise NotFoundError("manifest_not_found", "no manifest dataset here", uri=uri) from exc
    except (pa.ArrowException, OSError) as exc:
        raise StorageError("manifest_unreadable", f"{type(exc).__name__}: {str(exc)[:200]}", uri=uri) from exc
    if not dataset.files:
        raise NotFoundError("manifest_not_found", "no manifest dataset here", uri=uri)
    names = set(dataset.schema.names)
    missing = [c for c in dict.fromkeys(["archive_uri", "index_run", "kind", *required]) if c not in names]
    if missing:
        raise ConfigError("manifest_bad_schema", f"manifest lacks columns {', '.join(missing)}", uri=uri)
    return dataset


def newest_archive_rows(dataset: pads.Dataset, columns: Sequence[str] = ()) -> pa.Table:
    """Each archive's ``kind == 'archive'`` row of its newest index run, with ``archive_uri``, ``index_run``
    and ``columns``. Only archive-level rows are read (one per archive and run)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    cols = list(dict.fromkeys(["archive_uri", "index_run", *columns]))
    rows = dataset.to_table(columns=cols, filter=pads.field("kind") == "archive")
    rows = rows.filter(pc.is_valid(rows.column("index_run")))
    newest = rows.group_by("archive_uri").aggregate([("index_run", "max")])
    keep = pc.is_in(_pair_keys(rows), value_set=_pair_keys(newest, "index_run_max"))
    return rows.filter(keep)


def newest_index_runs(dataset: pads.Dataset) -> dict[str, str]:
    """``{archive_uri: index_run}``: each archive's newest index run, from its archive-level rows."""
    rows = newest_archive_rows(dataset)
    return dict(zip(rows.column("archive_uri").to_pylist(), rows.column("index_run").to_pylist(), strict=True))


def iter_newest_batches(dataset: pads.Dataset, runs: Mapping[str, str], columns: Sequence[str],
                        filter: Any = None) -> Iterator[pa.RecordBatch]:
    """Batches of the rows matching ``filter`` whose (archive_uri, index_run) is in ``runs``, with ``columns``.

    Streams, so a manifest of billions of rows is summarised in bounded memory. Runs that are nobody's newest
    are skipped by the scan itself (a pushed-down ``index_run`` filter); the pairing is then checked per row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if not runs:
        return
    wanted = pa.array([f"{a}{_SEP}{r}" for a, r in runs.items()], pa.string())
    scan = pads.field("index_run").isin(sorted(set(runs.values())))
    if filter is not None:
        scan = scan & filter
    read = list(dict.fromkeys([*columns, "archive_uri", "index_run"]))
    for batch in dataset.to_batches(columns=read, filter=scan):
        kept = batch.filter(pc.is_in(_pair_keys(batch), value_set=wanted))
        if kept.num_rows:
            yield kept.select(list(columns))


def read_manifest_table(uri: str, columns: Sequence[str], filter: Any = None) -> pa.Table:
    """The manifest rows matching ``filter``, only those of each archive's newest index run, with ``columns``.

    Rows of a run that never wrote the archive's own row (a run that died) are not returned. Errors are typed
    as in ``open_manifest``.
    """
    import pyarrow as pa

    dataset = open_manifest(uri, columns)
    with manifest_errors(uri):
        runs = newest_index_runs(dataset)
        schema = pa.schema([dataset.schema.field(c) for c in columns])
        return pa.Table.from_batches(list(iter_newest_batches(dataset, runs, columns, filter)), schema=schema)


def _pair_keys(table: Any, run_column: str = "index_run") -> Any:
    """``archive_uri NUL index_run`` per row (null when either is null), to match pairs in one vectorised test."""
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(table.column("archive_uri"), table.column(run_column), _SEP)
