"""The ledger: one row per instance outcome, plus one per damaged archive or odd member.

Every manifest member appears in some ledger row (as its header or pixel
member); ``with_unaccounted_members`` proves it for a run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

STATUSES = (
    "written", "skipped_existing", "filtered_out", "duplicate", "conflict", "orphan_header", "orphan_pixels",
    "invalid_header", "invalid_pixels", "unreadable_archive", "not_restored", "failed",
    "received",  # stored by the network intake (listen, serve's STOW-RS), not reassembled
)

LEDGER_FIELDS: list[tuple[str, str]] = [
    ("run_id", "string"), ("sop_instance_uid", "string"), ("status", "string"), ("reason", "string"),
    ("header_archive", "string"), ("header_member", "string"),
    ("pixel_archive", "string"), ("pixel_member", "string"),
    ("output_uri", "string"), ("output_bytes", "long"), ("output_checksum", "string"),
    ("transfer_syntax", "string"), ("study_instance_uid", "string"), ("series_instance_uid", "string"),
    ("stow_status", "string"), ("stow_reason", "string"), ("finished_at", "timestamp"),
]
LEDGER_NAMES = [n for n, _ in LEDGER_FIELDS]


def ledger_schema() -> Any:
    """The ledger's Spark schema."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "long": T.LongType(), "timestamp": T.TimestampType()}
    return T.StructType([T.StructField(n, kinds[t], True) for n, t in LEDGER_FIELDS])


def ledger_row(run_id: str, status: str, reason: str | None = None, **values: Any) -> tuple:
    """A ledger row as a tuple in schema order; ``finished_at`` defaults to now."""
    if status not in STATUSES:
        raise ValueError(f"unknown ledger status {status!r}")
    values.setdefault("finished_at", datetime.now(timezone.utc))
    values.update(run_id=run_id, status=status, reason=reason)
    return tuple(values.get(n) for n in LEDGER_NAMES)


def row_dict(row: tuple) -> dict[str, Any]:
    """A ledger tuple as a dict (tests, STOW)."""
    return dict(zip(LEDGER_NAMES, row))


def with_unaccounted_members(manifest: Any, ledger: Any) -> Any:
    """Manifest members that no ledger row names, as (archive_uri, member_name). Empty means conservation holds."""
    from pyspark.sql import functions as F

    members = manifest.filter(F.col("kind") != "archive").select("archive_uri", "member_name").distinct()
    named = (ledger.select(F.col("header_archive").alias("archive_uri"), F.col("header_member").alias("member_name"))
             .union(ledger.select(F.col("pixel_archive").alias("archive_uri"), F.col("pixel_member").alias("member_name")))
             .filter(F.col("member_name").isNotNull()).distinct())
    return members.join(named, ["archive_uri", "member_name"], "left_anti")


def with_status_counts(ledger: Any) -> Any:
    """Rows per status, largest first."""
    from pyspark.sql import functions as F

    return ledger.groupBy("status").agg(F.count(F.lit(1)).alias("rows")).orderBy(F.desc("rows"), "status")
