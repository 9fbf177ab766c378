"""The manifest on Spark: built by indexing archives on the executors, read back newest index first."""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime, timezone
from typing import Any

from ..dicom.header_rules import MAX_HEADER_BYTES
from ..io import listing as io_listing
from ..io import uris
from .index import manifest_schema

log = logging.getLogger(__name__)


def balance_by_bytes(archives: list[dict[str, Any]], tasks: int) -> list[list[dict[str, Any]]]:
    """Spread archives over ``tasks`` buckets, largest first onto the lightest bucket."""
    import heapq

    tasks = max(1, min(tasks, len(archives)))
    heap = [(0, i) for i in range(tasks)]
    buckets: list[list[dict[str, Any]]] = [[] for _ in range(tasks)]
    for a in sorted(archives, key=lambda a: (-a["size"], a["uri"])):
        load, i = heapq.heappop(heap)
        buckets[i].append(a)
        heapq.heappush(heap, (load + max(a["size"], 1), i))
    return buckets


def new_index_run() -> tuple[str, datetime]:
    """An index run id that sorts by time, and its timestamp."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S%fZ"), now


def with_latest_index(df: Any) -> Any:
    """Keep, for each archive, only the rows of its newest index run."""
    from pyspark.sql import functions as F

    latest = (df.filter(F.col("kind") == "archive")
              .groupBy("archive_uri").agg(F.max("index_run").alias("_latest")))
    return (df.join(latest, "archive_uri")
            .filter(F.col("index_run") == F.col("_latest")).drop("_latest"))


def read_manifest(spark: Any, uri: str) -> Any:
    """The manifest as a DataFrame, newest index per archive."""
    return spark.read.schema(manifest_schema()).parquet(uri).transform(with_latest_index)


def manifest_exists(uri: str) -> bool:
    """True when a manifest dataset has been written at ``uri``."""
    if uris.is_s3(uri):
        return any(True for _ in io_listing.list_objects(uri, (".parquet",)))
    return os.path.isdir(uri) and any(f.endswith(".parquet") for _, _, fs in os.walk(uri) for f in fs)


def build_manifest_df(spark: Any, archives: list[dict[str, Any]], index_run: str, indexed_at: datetime,
                      tasks: int, coalesce_gap: int, max_header_bytes: int = MAX_HEADER_BYTES, *, s3: Any = None,
                      s3_bucket: str | None = None) -> Any:
    """Index ``archives`` on the executors, balanced by bytes over ``tasks`` tasks; the rows ``index_archive``
    yields, without ``bucket``.

    Task ``i`` of ``spark.range`` takes the ``i``-th share of a broadcast list and hands its rows to Spark as
    Arrow batches (``mapInArrow``): no per-row conversion on either side. ``s3``/``s3_bucket``
    (input_s3_parameters) reach the executors in the task closure, as reassembly's WriteContext does, never
    through Spark settings; they apply to the input bucket only.
    """
    shares = balance_by_bytes(archives, tasks) if archives else []
    n = max(1, len(shares))
    work = spark.sparkContext.broadcast(shares)

    def index_tasks(batches: Any) -> Any:
        from ..io import clients
        from .index import index_batches

        if s3 is not None:
            clients.set_archive_s3_settings(s3, s3_bucket)
        for batch in batches:
            for task in batch.column(0).to_pylist():
                share = work.value[task] if task < len(work.value) else []
                yield from index_batches(share, index_run, indexed_at, coalesce_gap, max_header_bytes)

    return spark.range(0, n, 1, n).mapInArrow(index_tasks, manifest_schema())


def indexed_archives(spark: Any, manifest_uri: str) -> list[dict[str, Any]]:
    """The archive-level rows of an existing manifest (newest index each), for incremental runs."""
    if not manifest_exists(manifest_uri):
        return []
    from pyspark.sql import functions as F

    rows = (read_manifest(spark, manifest_uri).filter(F.col("kind") == "archive")
            .select("archive_uri", "archive_role", "archive_size", "archive_etag", "error").collect())
    return [r.asDict() for r in rows]


def manifest_tasks(archives: int, configured: int, cores: int, per_task: int = 16) -> int:
    """Indexing tasks: configured, else one per ``per_task`` archives, at least two per core."""
    if configured > 0:
        return configured
    return max(1, min(archives, max(2 * cores, math.ceil(archives / per_task))))
