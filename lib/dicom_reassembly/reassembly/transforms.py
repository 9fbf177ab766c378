"""The run's DataFrame steps (``with_*``): members grouped by UID, their plan, ledger columns, damage rows, and
work grouped by archive into tasks.

Heavy work happens in the plain-Python generators of ``plan`` and ``executor``, called through ``mapPartitions``;
nothing here reads member data on the driver.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..records.ledger import LEDGER_NAMES, ledger_schema
from .plan import PENDING, plan_instance, plan_schema
from .tasks import TASK_KEY

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
