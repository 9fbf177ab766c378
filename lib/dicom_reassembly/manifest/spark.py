"""The manifest on Spark: built by indexing archives on the executors, written in the lookup layout
(``manifest.layout``), compacted, and read back newest index first.

A write goes to ``_staging-<group>/`` (which readers skip), then its files are moved to the root: member rows
first, archive rows last. An archive's rows only count once its archive row is there, so a reader never sees part
of a write, a build that dies leaves nothing that counts, and the next build finishes a move that was cut short
(the plan ``_staging-<group>.json`` says what to move and which inputs a compaction replaces).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ..dicom.header_rules import MAX_HEADER_BYTES
from ..errors import StorageError
from ..io import listing as io_listing
from ..io import reads, uris, writes
from ..io.arrow_io import dataset_exists
from ..io.clients import ArchiveAccess
from ..run_id import new_run_id
from . import layout
from .index import FIELD_NAMES, manifest_schema

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
    return spark.read.schema(manifest_schema(stored=True)).parquet(uri).transform(with_latest_index)


def build_manifest_df(spark: Any, archives: list[dict[str, Any]], index_run: str, indexed_at: datetime,
                      tasks: int, coalesce_gap: int, max_header_bytes: int = MAX_HEADER_BYTES, *,
                      access: ArchiveAccess | None = None) -> Any:
    """Index ``archives`` on the executors, balanced by bytes over ``tasks`` tasks; the rows ``index_archive``
    yields, without ``bucket``.

    Task ``i`` of ``spark.range`` takes the ``i``-th share of a broadcast list and hands its rows to Spark as
    Arrow batches (``mapInArrow``): no per-row conversion on either side. ``access`` (the input credentials, for
    the input bucket only) reaches the executors in the task closure, as reassembly's ``TaskSettings`` does,
    never through Spark settings.
    """
    shares = balance_by_bytes(archives, tasks) if archives else []
    n = max(1, len(shares))
    work = spark.sparkContext.broadcast(shares)

    def index_tasks(batches: Any) -> Any:
        from .index import index_batches

        for batch in batches:
            for task in batch.column(0).to_pylist():
                share = work.value[task] if task < len(work.value) else []
                yield from index_batches(share, index_run, indexed_at, coalesce_gap, max_header_bytes, access)

    return spark.range(0, n, 1, n).mapInArrow(index_tasks, manifest_schema())


def indexed_archives(spark: Any, manifest_uri: str) -> list[dict[str, Any]]:
    """The archive-level rows of an existing manifest (newest index each), for incremental runs."""
    if not dataset_exists(manifest_uri):
        return []
    from pyspark.sql import functions as F

    rows = (read_manifest(spark, manifest_uri).filter(F.col("kind") == "archive")
            .select("archive_uri", "archive_role", "archive_size", "archive_etag", "error").collect())
    return [r.asDict() for r in rows]


def manifest_tasks(archives: int, configured: int, cores: int, per_task: int = 256) -> int:
    """Indexing tasks: configured, else one per ``per_task`` archives, at least two per core.

    A PySpark task costs about 0.15-0.3 CPU-seconds, JVM and Python worker, whatever it does (Spark 4.0,
    local[2]: 10 empty mapInArrow tasks 1.9 s, 40 of them 7.4 s). At 64 archives a task that was about 90 us of
    each pixel member's 180 (16,000 against 64,000 instances, 2026-12-05), a third of a header member's: 256
    archives a task cut it fourfold. On S3, where an archive's GETs take about a second, a task of 256 archives
    runs a few minutes, and a delivery of millions of archives still has thousands of tasks to balance (by bytes)
    and to retry one at a time."""
    if configured > 0:
        return configured
    return max(1, min(archives, max(2 * cores, math.ceil(archives / per_task))))


# ---------------------------------------------------------------- the lookup layout: write, move in, compact

# Columns whose values (nearly) never repeat within a row group: written without a dictionary.
_DISTINCT_COLUMNS = ("header_json", "header_sha256", "member_name", "sop_instance_uid", "header_offset", "data_offset")
# Columns no reader filters on, written without statistics (min/max, null count, column index, size statistics):
# Parquet compares each ~9 KB header with its page's and row group's bounds (documents sharing long prefixes) and
# then drops bounds over 4 KB from the footer. Lookups prune on the UID, kind and archive columns, which keep
# theirs; rows, files, order and row groups are unchanged. Parquet 1.15 (Spark 4) honours the option, 1.13 (Spark
# 3.5) ignores it. Gain: ~10 % of the executors' Java samples of a 16,000-header build (JFR), 1-2 % of their CPU in
# perf (native and kernel time included): a few us of the JVM's ~150 us a header member (2026-12-05).
_UNFILTERED_COLUMNS = ("header_json",)
# Spark's names: part-<task>-<uuid>.c<file>.<codec>.parquet, under the partition folders of role and bucket.
# The sequence of a staged file comes from its name (Spark's part-NNNNN-<uuid>.cNNN), so a move that is run
# again after a crash names every file as the first attempt did.
_STAGED = re.compile(r"_role=([ma])/_b=(\d+)/part-(\d+)-[^/]*\.c(\d+)\.[^/]*parquet$")


def with_buckets(df: Any, member_buckets: int, archive_buckets: int) -> Any:
    """Add ``bucket`` (crc32 of the key mod the role's count) and ``_role`` (``m`` or ``a``) for the layout."""
    from pyspark.sql import functions as F

    archive = F.col("kind") == "archive"
    key = F.when(archive, F.col("archive_uri")).otherwise(F.coalesce("sop_instance_uid", "archive_uri"))
    crc = F.crc32(key.cast("binary"))
    bucket = F.when(archive, F.pmod(crc, F.lit(archive_buckets))).otherwise(F.pmod(crc, F.lit(member_buckets)))
    return (df.withColumn("bucket", bucket.cast("int"))
            .withColumn("_role", F.when(archive, F.lit(layout.ARCHIVES)).otherwise(F.lit(layout.MEMBERS))))


def write_manifest(spark: Any, df: Any, manifest_uri: str, group: str, member_bytes: float, archive_bytes: float,
                   inputs: Iterable[str] = ()) -> dict[str, Any]:
    """Write ``df`` (manifest rows) into the manifest as one group of bucket files, then move them in.

    Bucket counts come from the expected bytes of member and archive rows (at least one bucket per core for
    members, so the write runs on every core). ``inputs`` are files these rows replace (a compaction): deleted
    once the new files are in. ``group`` may be a run id (``layout.group_of`` names the group). Returns the plan.
    """
    from pyspark.sql import functions as F

    group = layout.group_of(group)
    cores = spark.sparkContext.defaultParallelism
    plan = {"group": group, "member_buckets": layout.bucket_count(member_bytes, cores),
            "archive_buckets": layout.bucket_count(archive_bytes), "inputs": sorted(inputs)}
    staging = uris.join_uri(manifest_uri, f"_staging-{group}")
    writes.write_bytes(uris.join_uri(manifest_uri, f"_staging-{group}.json"), json.dumps(plan).encode(),
                       writes.WriteOptions(content_type="application/json"))
    rows = with_buckets(df.select(*FIELD_NAMES), plan["member_buckets"], plan["archive_buckets"])
    writer = (rows.repartition(plan["member_buckets"] + plan["archive_buckets"], "_role", "bucket")
              .withColumn("_b", F.col("bucket"))
              # Rows without a UID (archive rows, and members without one) first, by archive; then by UID.
              .sortWithinPartitions("_role", "_b", F.col("sop_instance_uid").asc_nulls_first(), "archive_uri",
                                    "header_offset")
              .write.option("parquet.block.size", layout.ROW_GROUP_BYTES)
              .option("parquet.page.size.row.check.min", layout.ROW_CHECK_MIN))  # also when a row group's size is checked
    for column in _DISTINCT_COLUMNS:  # a dictionary of values that never repeat is built, then thrown away
        writer = writer.option(f"parquet.enable.dictionary#{column}", "false")
    for column in _UNFILTERED_COLUMNS:  # statistics no reader uses, computed for every value
        writer = (writer.option(f"parquet.column.statistics.enabled#{column}", "false")
                  .option(f"parquet.size.statistics.enabled#{column}", "false"))
    writer.partitionBy("_role", "_b").mode("overwrite").parquet(staging)
    move_in(manifest_uri, plan)
    return plan


def move_in(manifest_uri: str, plan: dict[str, Any]) -> None:
    """Move a committed write's files from its staging folder to the root (members, then archive rows), delete
    the inputs it replaces, then the staging folder and the plan. Safe to run again after a crash part-way."""
    group = plan["group"]
    staging = uris.join_uri(manifest_uri, f"_staging-{group}")
    staged = []
    for obj in io_listing.list_objects(staging, (".parquet",)):
        m = _STAGED.search(obj.uri.replace(os.sep, "/"))
        if not m:  # rows this layout cannot place: stop before anything moves, rather than delete them unread
            raise StorageError("unexpected_staged_file", "a staged manifest file not named as Spark names them",
                               uri=obj.uri)
        staged.append((m[1] != layout.MEMBERS, obj.uri, m[1], int(m[2]), int(m[3]) * 1000 + int(m[4])))
    counts = {layout.MEMBERS: plan["member_buckets"], layout.ARCHIVES: plan["archive_buckets"]}
    for _, uri, role, bucket, seq in sorted(staged):
        writes.move(uri, uris.join_uri(manifest_uri, layout.file_name(role, counts[role], bucket, group, seq)))
    for uri in plan["inputs"]:
        writes.delete(uri)
    writes.delete_tree(staging)
    writes.delete(uris.join_uri(manifest_uri, f"_staging-{group}.json"))
    log.info("manifest write %s: %d files moved in, %d replaced", group, len(staged), len(plan["inputs"]))


def finish_pending(manifest_uri: str) -> None:
    """Finish what an earlier build left: a committed write is moved in, one that never committed is removed
    (its inputs are untouched; an index run's archives are indexed again, none of its archive rows being in)."""
    for name in io_listing.name_prefixes(manifest_uri, "_staging-", ".json"):
        plan_uri = uris.join_uri(manifest_uri, name)
        plan = json.loads(reads.read_bytes(plan_uri))
        staging = uris.join_uri(manifest_uri, f"_staging-{plan['group']}")
        if io_listing.head(uris.join_uri(staging, "_SUCCESS")) is not None:
            log.warning("manifest write %s was cut short: moving its files in", plan["group"])
            move_in(manifest_uri, plan)
        else:
            log.warning("manifest write %s never completed: removing its staged files", plan["group"])
            writes.delete_tree(staging)
            writes.delete(plan_uri)


def compact_manifest(spark: Any, manifest_uri: str, files: list[Any], group: str) -> dict[str, Any]:
    """Rewrite ``files`` (``ObjectInfo`` or ``BucketFile``: whole groups, or the unclustered files) as one
    group: each archive's newest index among them, its run marked ``+c<group>`` (``layout.compacted_run``)."""
    from pyspark.sql import functions as F

    paths = [f.uri for f in files]
    df = with_latest_index(spark.read.schema(manifest_schema()).parquet(*paths))
    run = F.concat(F.regexp_replace("index_run", r"\+c[^+]*$", ""), F.lit("+c" + group))
    archives = df.filter(F.col("kind") == "archive").count()
    return write_manifest(spark, df.withColumn("index_run", run), manifest_uri, group,
                          sum(f.size for f in files), archives * layout.ARCHIVE_ROW_BYTES, paths)


def prepare_manifest(spark: Any, manifest_uri: str) -> dict[str, Any] | None:
    """Before a build writes: finish an interrupted write, and rewrite unclustered files (the layout before
    issue 20) into buckets. Returns the rewrite's plan, if there was one."""
    finish_pending(manifest_uri)
    legacy = layout.unclustered_files(manifest_uri)
    if not legacy:
        return None
    log.info("manifest %s: %d unclustered files rewritten in buckets", manifest_uri, len(legacy))
    return compact_manifest(spark, manifest_uri, legacy, layout.group_of(new_run_id()))


def merge_small_groups(spark: Any, manifest_uri: str, max_groups: int = 8) -> dict[str, Any] | None:
    """Keep at most ``max_groups`` groups, so a lookup reads at most that many bucket files: the smallest
    groups are merged into one (the largest, by then most of the manifest, is not rewritten)."""
    groups: dict[str, list[layout.BucketFile]] = {}
    for f in layout.clustered_files(manifest_uri):
        groups.setdefault(f.group, []).append(f)
    if len(groups) <= max_groups:
        return None
    by_size = sorted(groups.values(), key=lambda fs: sum(f.size for f in fs))
    merged = [f for fs in by_size[: len(groups) - max_groups + 1] for f in fs]
    return compact_manifest(spark, manifest_uri, merged, layout.group_of(new_run_id()))
