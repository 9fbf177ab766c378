"""The Spark side of both jobs: small DataFrame transforms and the functions that chain them.

Heavy work (tar walking, DICOM assembly, writes) happens in plain-Python
generators from ``manifest`` and ``reassembly``, called through ``mapPartitions``.
Nothing here reads member data on the driver.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .ledger import LEDGER_NAMES, ledger_schema
from .manifest import spark as manifest_spark
from .reassembly import PENDING, WriteContext, plan_instance, plan_schema, reassemble_partition

# Above this many pixel archives in one run, tasks take archives by hash instead of by size: balancing
# collects each archive's wanted bytes to the driver (about 200 bytes each).
MAX_BALANCED_ARCHIVES = 200_000
TASK_KEY = "task_key"
MEMBER_COLUMNS = ["archive_uri", "archive_size", "member_name", "data_offset", "size", "error", "error_detail"]
HEADER_COLUMNS = [*MEMBER_COLUMNS, "header_json", "header_sha256", "study_instance_uid", "series_instance_uid", "modality"]


def with_members_by_uid(manifest: Any) -> Any:
    """One row per UID: its header members and pixel members, as lists of structs.

    Members with unusable UIDs stay out: no UID can join them.
    """
    from pyspark.sql import functions as F

    usable = manifest.filter(F.col("kind").isin("header", "pixels")
                             & (F.col("error").isNull() | (F.col("error") != "invalid_uid")))
    headers = (usable.filter(F.col("kind") == "header").groupBy("sop_instance_uid")
               .agg(F.collect_list(F.struct(*HEADER_COLUMNS)).alias("headers")))
    pixels = (usable.filter(F.col("kind") == "pixels").groupBy("sop_instance_uid")
              .agg(F.collect_list(F.struct(*MEMBER_COLUMNS)).alias("pixels")))
    return headers.join(pixels, "sop_instance_uid", "full_outer")


def with_instance_plan(select: Callable[[str], str | None] | None, pending_restore: dict[str, int]) -> Callable[[Any], Any]:
    """Transform: UIDs with their members -> plan rows (terminal outcomes and pending work).

    The common case, one clean header and one clean pixel member with no
    selection to apply, is planned in the JVM: its header JSON never makes a
    round trip through Python before reassembly. Every other UID goes through
    ``plan_instance``. ``pending_restore`` counts the archives per role still in
    Glacier (see ``count_pending_restore``).
    """
    pixels_pending = pending_restore.get("images", 0) > 0
    headers_pending = pending_restore.get("text", 0) > 0

    def transform(by_uid: Any) -> Any:
        from pyspark.sql import functions as F

        def plan(row: Any) -> Any:
            headers = [h.asDict() for h in (row["headers"] or [])]
            pixels = [p.asDict() for p in (row["pixels"] or [])]
            return plan_instance(row["sop_instance_uid"], headers, pixels, select, pixels_pending, headers_pending)

        h, p = F.col("headers")[0], F.col("pixels")[0]
        simple = (F.coalesce(F.size("headers"), F.lit(0)) == 1) & (F.coalesce(F.size("pixels"), F.lit(0)) == 1) \
            & h["error"].isNull() & p["error"].isNull() & F.lit(select is None)
        columns = {
            "sop_instance_uid": F.col("sop_instance_uid"), "status": F.lit(PENDING), "reason": F.lit(None),
            "header_archive": h["archive_uri"], "header_member": h["member_name"], "header_json": h["header_json"],
            "pixel_archive": p["archive_uri"], "pixel_archive_size": p["archive_size"], "pixel_member": p["member_name"],
            "pixel_offset": p["data_offset"], "pixel_size": p["size"], "dup_pixels": F.lit(None),
            "study_instance_uid": h["study_instance_uid"], "series_instance_uid": h["series_instance_uid"],
            "modality": h["modality"],
        }
        fast = by_uid.filter(simple).select(*[columns[f.name].cast(f.dataType).alias(f.name) for f in plan_schema().fields])
        rest = by_uid.filter(~simple)
        return fast.unionByName(by_uid.sparkSession.createDataFrame(rest.rdd.flatMap(plan), plan_schema()))

    return transform


def with_archive_locality(partitions: int, task_keys: Any = None) -> Callable[[Any], Any]:
    """Transform: pending work grouped by pixel archive into tasks, each archive's members in offset order.

    ``task_keys`` (pixel_archive, task_key) places each archive in the task
    ``plan_reassembly_tasks`` chose for it; without it, archives are hashed.
    Each row also carries its archive's wanted bytes and last wanted byte, so an
    executor can choose one streaming read or ranged reads from the first row,
    without holding the archive's rows (the window is computed in the JVM, which spills).
    """

    def transform(work: Any) -> Any:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        if task_keys is None:
            keyed, by = work.repartition(partitions, "pixel_archive"), ["pixel_archive"]
        else:
            keyed = work.join(F.broadcast(task_keys), "pixel_archive", "left").repartition(partitions, TASK_KEY)
            # The task key is a function of the archive, so the window reuses the task partitioning as it is.
            by = [TASK_KEY, "pixel_archive"]
        archive = Window.partitionBy(*by)
        return (keyed.withColumn("archive_wanted", F.sum("pixel_size").over(archive))
                .withColumn("archive_end", F.max(F.col("pixel_offset") + F.col("pixel_size")).over(archive))
                .sortWithinPartitions("pixel_archive", "pixel_offset")
                .drop(TASK_KEY))  # a no-op when archives were hashed

    return transform


def with_ledger_columns(run_id: str, finished_at: datetime) -> Callable[[Any], Any]:
    """Transform: terminal plan rows -> ledger rows."""

    def transform(plan: Any) -> Any:
        from pyspark.sql import functions as F

        cols = []
        for name, field in zip(LEDGER_NAMES, ledger_schema().fields):
            if name == "run_id":
                cols.append(F.lit(run_id).alias(name))
            elif name == "finished_at":
                cols.append(F.lit(finished_at).cast("timestamp").alias(name))
            elif name in plan.columns:
                cols.append(F.col(name).cast(field.dataType).alias(name))
            else:
                cols.append(F.lit(None).cast(field.dataType).alias(name))
        return plan.select(*cols)

    return transform


def with_manifest_damage(manifest: Any) -> Any:
    """Manifest rows that are damage, not members to join: damaged archives, odd members, bad UIDs."""
    from pyspark.sql import functions as F

    is_header_side = (F.col("kind") == "header") | ((F.col("kind") != "pixels") & (F.col("archive_role") == "text"))
    status = (F.when(F.col("kind") == "archive",
                     F.when(F.col("error") == "not_restored", "not_restored").otherwise("unreadable_archive"))
              .when(is_header_side, "invalid_header").otherwise("invalid_pixels"))
    reason = F.concat_ws(": ", F.col("error"), F.col("error_detail"))
    damaged = manifest.filter(
        ((F.col("kind") == "archive") & F.col("error").isNotNull())
        | (F.col("kind") == "other")
        | (F.col("kind").isin("header", "pixels") & (F.col("error") == "invalid_uid")))
    member = F.col("member_name")
    return damaged.select(
        F.col("sop_instance_uid"), status.alias("status"), reason.alias("reason"),
        F.when(is_header_side, F.col("archive_uri")).alias("header_archive"),
        F.when(is_header_side, member).alias("header_member"),
        F.when(~is_header_side, F.col("archive_uri")).alias("pixel_archive"),
        F.when(~is_header_side, member).alias("pixel_member"),
    )


def count_pending_restore(manifest: Any) -> dict[str, int]:
    """Archives per role (text, images) the manifest could not index because they are still in Glacier."""
    from pyspark.sql import functions as F

    rows = (manifest.filter((F.col("kind") == "archive") & (F.col("error") == "not_restored"))
            .groupBy("archive_role").count().collect())
    return {r["archive_role"]: int(r["count"]) for r in rows}


def reassemble_ledger(plan: Any, manifest: Any, ctx: WriteContext, finished_at: datetime, partitions: int,
                      task_keys: Any = None) -> Any:
    """The whole run's ledger as one lazy DataFrame: terminal outcomes, damage, and written instances.

    Evaluating it writes the objects, so it is evaluated exactly once (by the ledger write).
    """
    from pyspark.sql import functions as F

    terminal = plan.filter(F.col("status") != PENDING).transform(with_ledger_columns(ctx.run_id, finished_at))
    damage = manifest.transform(with_manifest_damage).transform(with_ledger_columns(ctx.run_id, finished_at))
    work = plan.filter(F.col("status") == PENDING).transform(with_archive_locality(partitions, task_keys))
    written = plan.sparkSession.createDataFrame(
        work.rdd.mapPartitions(lambda rows: reassemble_partition(rows, ctx)), ledger_schema(),
        verifySchema=False)  # rows come from ledger_row, typed by construction (tests/test_row_types.py)
    return terminal.unionByName(damage).unionByName(written)


def skipped_archives(plan: Any, manifest: Any) -> dict[str, int]:
    """Image archives (and bytes) that no pending instance needs: never opened by this run."""
    from pyspark.sql import functions as F

    images = (manifest.filter((F.col("kind") == "archive") & (F.col("archive_role") == "images"))
              .select("archive_uri", "archive_size").distinct())
    needed = plan.filter(F.col("status") == PENDING).select(F.col("pixel_archive").alias("archive_uri")).distinct()
    unneeded = images.join(needed, "archive_uri", "left_anti")
    row = unneeded.agg(F.count(F.lit(1)).alias("n"), F.sum("archive_size").alias("b")).collect()[0]
    total = images.agg(F.count(F.lit(1)).alias("n")).collect()[0]
    return {"archives_total": int(total["n"] or 0), "archives_skipped": int(row["n"] or 0), "bytes_skipped": int(row["b"] or 0)}


def plan_reassembly_tasks(plan: Any, configured: int, task_bytes: int,
                          max_balanced: int = MAX_BALANCED_ARCHIVES) -> tuple[int, Any]:
    """How many reassembly tasks, and which task each pixel archive goes to.

    Tasks: configured, else sized by the pixel bytes to read. Sized from the
    data, not from the executors registered when the driver starts: under
    dynamic allocation that is one executor, and the job would never give the
    cluster enough work to scale out. Never more tasks than pixel archives,
    since an archive is never split.

    Archives are spread over the tasks by wanted bytes, largest first onto the
    lightest task: hashing leaves tasks uneven (a few big archives can share
    one), and the run waits for its slowest task. Returns (tasks, task_keys):
    task_keys is a small DataFrame (pixel_archive, task_key) for
    ``with_archive_locality``, or None when there is one task or more than
    ``max_balanced`` archives (their list is collected to the driver).
    """
    from pyspark.sql import functions as F

    per_archive = (plan.filter(F.col("status") == PENDING).groupBy("pixel_archive")
                   .agg(F.sum("pixel_size").alias("b")))
    row = per_archive.agg(F.count(F.lit(1)).alias("n"), F.sum("b").alias("b")).collect()[0]
    archives, wanted = int(row["n"] or 0), int(row["b"] or 0)
    if configured > 0:
        tasks = configured
    else:
        cores = plan.sparkSession.sparkContext.defaultParallelism
        tasks = max(1, min(archives, max(2 * cores, math.ceil(wanted / task_bytes))))
    if tasks < 2 or archives < 2 or archives > max_balanced:
        return tasks, None
    keys = partition_keys(plan.sparkSession, tasks)
    if keys is None:
        return tasks, None
    sizes = [{"uri": r["pixel_archive"], "size": int(r["b"] or 0)} for r in per_archive.collect()]
    placed = [(a["uri"], keys[i]) for i, bucket in enumerate(manifest_spark.balance_by_bytes(sizes, tasks)) for a in bucket]
    return tasks, plan.sparkSession.createDataFrame(placed, f"pixel_archive string, {TASK_KEY} long")


def partition_keys(spark: Any, partitions: int) -> list[int] | None:
    """For each of ``partitions`` partitions, a long that ``repartition(partitions, col)`` sends there.

    Spark places a row by a hash of the column; asking Spark for the hashes of
    the first longs finds a key for every partition (None if some partition
    got none, which the tests never saw: 64 tries each).
    """
    from pyspark.sql import functions as F

    rows = (spark.range(0, 64 * partitions).select(F.pmod(F.hash("id"), F.lit(partitions)).alias("p"), "id")
            .groupBy("p").agg(F.min("id").alias("id")).collect())
    found = {int(r["p"]): int(r["id"]) for r in rows}
    return [found[p] for p in range(partitions)] if len(found) == partitions else None
