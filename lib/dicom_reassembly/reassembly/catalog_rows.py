"""The run's catalogue rows: one per object it stored, typed from the header JSON already in the plan.

No object is read again: the header attributes come from each work item's header JSON (parsed on the
executors by ``records.catalog_spark.header_attributes_partition``), the output columns from the ledger row
that wrote (or found) the object, and the provenance from both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..records.catalog import CATALOG_FIELDS
from ..records.catalog_spark import ATTRIBUTE_NAMES, attributes_schema, header_attributes_partition
from .plan import PENDING
from .writes import REPLACED

STORED = ("written", "skipped_existing")
_FROM_LEDGER = ("status", "transfer_syntax", "output_uri", "output_bytes", "output_checksum", "run_id",
                "header_archive", "pixel_archive")


def with_catalog_rows(plan: Any, base_dir: str) -> Callable[[Any], Any]:
    """Transform: a run's ledger -> catalogue rows (``catalog.spark_schema()``) of the objects it stored.

    ``plan`` is the run's plan; its pending rows carry each instance's header JSON. A row records when its
    ledger row finished (``recorded_at``), so the newest row of an instance is its current state. Local paths
    the run was given relative to ``base_dir`` (the driver's folder) are made absolute: the catalogue is read
    from elsewhere.
    """

    def transform(ledger: Any) -> Any:
        from pyspark.sql import functions as F

        from ..records.catalog import spark_schema

        headers = plan.filter(F.col("status") == PENDING).select("sop_instance_uid", "header_json")
        attributes = ledger.sparkSession.createDataFrame(
            headers.rdd.mapPartitions(header_attributes_partition), attributes_schema(), verifySchema=False)
        stored = (ledger.filter(F.col("status").isin(*STORED) & F.col("output_uri").isNotNull())
                  .select("sop_instance_uid", "finished_at", *_FROM_LEDGER))
        joined = stored.join(attributes, "sop_instance_uid", "left")
        columns = {n: F.col(n) for n in ("sop_instance_uid", *ATTRIBUTE_NAMES, *_FROM_LEDGER)}
        columns.update(study_year=F.year("study_date"), recorded_at=F.col("finished_at"))
        for name in ("output_uri", "header_archive", "pixel_archive"):
            path = F.col(name)
            absolute = path.rlike("^[A-Za-z][A-Za-z0-9+.-]*:") | path.startswith("/")
            columns[name] = F.when(absolute, path).otherwise(F.concat(F.lit(base_dir.rstrip("/") + "/"), path))
        types = {f.name: f.dataType for f in spark_schema().fields}
        return joined.select(*[columns[n].cast(types[n]).alias(n) for n, _ in CATALOG_FIELDS])

    return transform


def replaces_objects(ledger: Any) -> bool:
    """Whether a run's ledger replaced an earlier, different object of some instance (its header may have
    changed partition: the catalogue then looks for older rows in every partition)."""
    from pyspark.sql import functions as F

    return bool(ledger.filter((F.col("status") == "written") & F.col("reason").contains(REPLACED)).limit(1).count())
