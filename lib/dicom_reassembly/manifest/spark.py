"""The manifest on Spark: built by indexing archives on the executors, read back newest index first."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from ..dicom.header_rules import MAX_HEADER_BYTES
from ..io.arrow_io import dataset_exists
from ..io.clients import ArchiveAccess
from .index import index_archive, manifest_schema

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


def build_manifest_df(spark: Any, archives: list[dict[str, Any]], index_run: str, indexed_at: datetime,
                      tasks: int, coalesce_gap: int, max_header_bytes: int = MAX_HEADER_BYTES, *,
                      access: ArchiveAccess | None = None) -> Any:
    """Index ``archives`` on the executors, balanced by bytes over ``tasks`` tasks.

    ``access`` (the input credentials, for the input bucket only) reaches the executors in the task closure, as
    reassembly's ``TaskSettings`` does, never through Spark settings.
    """
    buckets = balance_by_bytes(archives, tasks) if archives else []
    keyed = [(i, a) for i, bucket in enumerate(buckets) for a in bucket]
    n = max(1, len(buckets))

    def index_partition(items: Any) -> Any:
        for _, archive in items:
            yield from index_archive(archive, index_run, indexed_at, coalesce_gap, max_header_bytes, access)

    rdd = (spark.sparkContext.parallelize(keyed, n)
           .partitionBy(n, lambda k: k)
           .mapPartitions(index_partition))
    # Rows come from index_archive in schema order and types (tests/test_row_types.py): checking each in Python
    # costs a share of the hot path.
    return spark.createDataFrame(rdd, manifest_schema(), verifySchema=False)


def indexed_archives(spark: Any, manifest_uri: str) -> list[dict[str, Any]]:
    """The archive-level rows of an existing manifest (newest index each), for incremental runs."""
    if not dataset_exists(manifest_uri):
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
