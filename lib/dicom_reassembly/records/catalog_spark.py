"""The catalogue from Spark: header attributes on the executors, rows written and compacted, current rows read.

``write_catalog`` appends a run's rows to the shared table (``catalog``'s schema and partitioning) and compacts
the partitions that now hold an older row of an instance it wrote, or too many files, so the files converge to
one row per instance:

1. partitions that only hold older rows of instances now written elsewhere (a header whose modality or
   study date changed) are rewritten without them, and their old files deleted;
2. the new rows are written together with the rewritten rows of the touched partitions that need compacting
   (older rows of the same instances left out), then exactly the files that were read are deleted.

Files appended meanwhile by another writer (``listen``) are never read nor deleted, so nothing is lost. Between
a write and its deletes a partition briefly holds two rows of an instance; every reader takes the newest row
per instance within its partition (``catalog.current_rows_sql``), so none sees both. Step 1 runs before step 2,
so an instance that moved partition is, for that moment, missing rather than duplicated. A run that dies
between the two leaves what every reader still reads correctly; the next compaction of the partition tidies it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from ..dicom.dicom_json import parse_header
from ..errors import ReassemblyError
from ..io import writes
from .catalog import (
    CATALOG_NAMES,
    CATALOG_TAGS,
    PARTITION_COLUMNS,
    CatalogFile,
    attributes_from_json,
    current_rows_sql,
    list_catalog_files,
    series_sql,
    spark_schema,
)

log = logging.getLogger(__name__)

MAX_FILES_PER_PARTITION = 32  # more than this in a touched partition and it is compacted (listen appends small files)
ROWS_PER_FILE = 1_000_000
BYTES_PER_TASK = 256 * 1024 * 1024
# The header columns computed on the executors; sop_instance_uid is the key they are joined on.
ATTRIBUTE_NAMES = [n for n in CATALOG_TAGS if n != "sop_instance_uid"] + ["criteria_values"]
_SPARK_KINDS = {"str": "string", "pn": "string", "int": "int", "date": "date"}


def attributes_schema() -> Any:
    """Spark schema of ``header_attributes_partition``'s rows: the UID, then ``ATTRIBUTE_NAMES``."""
    from pyspark.sql import types as T

    types = {f.name: f.dataType for f in spark_schema().fields}
    return T.StructType([T.StructField("sop_instance_uid", T.StringType(), False),
                         *[T.StructField(n, types[n], True) for n in ATTRIBUTE_NAMES]])


def header_attributes_partition(rows: Iterable[Any]) -> Iterator[tuple]:
    """Executor side: (sop_instance_uid, header_json) rows in, typed catalogue attributes out, one per row.

    The headers passed the header rules when the manifest was built; one that no longer parses still gets its
    row (attributes null, logged), so a stored object is never left out of the catalogue.
    """
    for row in rows:
        uid = row["sop_instance_uid"]
        try:
            attrs = attributes_from_json(parse_header(row["header_json"], max_bytes=1 << 62))
        except (ReassemblyError, TypeError) as exc:
            log.warning("catalogue: header of %s not parsed (%s); its row has no header attributes", uid, exc)
            attrs = {}
        yield (uid, *(attrs.get(n) for n in ATTRIBUTE_NAMES))


def _by_partition(files: list[CatalogFile]) -> dict[tuple[Any, Any], list[CatalogFile]]:
    out: dict[tuple[Any, Any], list[CatalogFile]] = defaultdict(list)
    for f in files:
        out[f.partition].append(f)
    return out


def _read_files(spark: Any, uri: str, files: list[CatalogFile]) -> Any:
    """The rows of these catalogue files, partition columns from their paths."""
    return spark.read.schema(spark_schema()).option("basePath", uri).parquet(*[f.uri for f in files])


def _newest_per_partition(df: Any) -> Any:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest = Window.partitionBy(*PARTITION_COLUMNS, "sop_instance_uid").orderBy(F.desc("recorded_at"), F.desc("run_id"))
    return df.withColumn("_rank", F.row_number().over(newest)).filter(F.col("_rank") == 1).drop("_rank")


def _write(spark: Any, df: Any, uri: str, tasks: int) -> None:
    """Append ``df`` under ``uri``, partitioned, each file sorted by study date and series (row-group pruning)."""
    order = [*PARTITION_COLUMNS, "study_date", "series_instance_uid", "instance_number", "sop_instance_uid"]
    key = "spark.sql.parquet.outputTimestampType"
    saved = spark.conf.get(key, None)
    spark.conf.set(key, "TIMESTAMP_MICROS")  # as pyarrow writes it: one physical type for both writers
    try:
        (df.select(*CATALOG_NAMES).repartitionByRange(max(1, tasks), *order).sortWithinPartitions(*order)
         .write.mode("append").partitionBy(*PARTITION_COLUMNS).option("maxRecordsPerFile", ROWS_PER_FILE)
         .parquet(uri))
    finally:
        if saved is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, saved)


def _delete(files: list[CatalogFile]) -> None:
    for f in files:
        writes.delete(f.uri)


def write_catalog(spark: Any, rows: Any, uri: str, *, anywhere: bool = False) -> dict[str, int]:
    """Append ``rows`` (``catalog.spark_schema()``, one per instance) to the catalogue at ``uri``, and compact.

    Older rows of the same instances are looked for in the partitions the rows go to, or in every partition
    when ``anywhere`` (some rows replace an object whose header may have moved it to another partition).
    Returns counts: rows written, partitions compacted, files replaced.
    """
    from pyspark import StorageLevel

    rows = rows.select(*CATALOG_NAMES).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n_rows = rows.count()
        if not n_rows:
            return {"rows": 0, "partitions_compacted": 0, "files_replaced": 0}
        touched = {(r[0], r[1]) for r in rows.select(*PARTITION_COLUMNS).distinct().collect()}
        existing = _by_partition(list_catalog_files(uri))
        scanned = [f for p, fs in existing.items() if anywhere or p in touched for f in fs]
        holding: set[tuple[Any, Any]] = set()
        if scanned:
            older = _read_files(spark, uri, scanned).select("sop_instance_uid", *PARTITION_COLUMNS)
            holding = {(r[0], r[1]) for r in older.join(rows.select("sop_instance_uid"), "sop_instance_uid", "left_semi")
                       .select(*PARTITION_COLUMNS).distinct().collect()}
        crowded = {p for p in touched if len(existing.get(p, ())) > MAX_FILES_PER_PARTITION}
        compact = holding | crowded
        new_uids = rows.select("sop_instance_uid")

        def rewritten(parts: set[tuple[Any, Any]]) -> tuple[Any, list[CatalogFile]]:
            files = [f for p in parts for f in existing.get(p, ())]
            kept = _read_files(spark, uri, files).join(new_uids, "sop_instance_uid", "left_anti")
            return _newest_per_partition(kept), files

        elsewhere = compact - touched
        replaced: list[CatalogFile] = []
        if elsewhere:  # step 1: older rows of instances that moved partition
            df, files = rewritten(elsewhere)
            _write(spark, df, uri, _tasks(files, 0))
            _delete(files)
            replaced += files
        here = compact & touched
        out = rows
        files = []
        if here:  # step 2: the new rows with the rewritten partitions they land in
            df, files = rewritten(here)
            out = rows.unionByName(df)
        _write(spark, out, uri, _tasks(files, n_rows))
        _delete(files)
        replaced += files
        log.info("catalogue %s: %d row(s) written, %d partition(s) compacted (%d file(s) replaced)", uri, n_rows,
                 len(compact), len(replaced))
        return {"rows": n_rows, "partitions_compacted": len(compact), "files_replaced": len(replaced)}
    finally:
        rows.unpersist()


def _tasks(files: list[CatalogFile], new_rows: int) -> int:
    return max(1, math.ceil(sum(f.size for f in files) / BYTES_PER_TASK) + math.ceil(new_rows / ROWS_PER_FILE))


def read_catalog(spark: Any, uri: str) -> Any:
    """The catalogue's current rows (newest per instance within its partition) as a DataFrame."""
    files = list_catalog_files(uri)
    if not files:
        return spark.createDataFrame([], spark_schema())
    name = f"catalog_files_{abs(hash(uri)) % 10**8}"
    _read_files(spark, uri, files).createOrReplaceTempView(name)
    return spark.sql(current_rows_sql(name, quote="`"))


def read_series(spark: Any, uri: str) -> Any:
    """The per-series rollup of the catalogue's current rows."""
    name = f"catalog_current_{abs(hash(uri)) % 10**8}"
    read_catalog(spark, uri).createOrReplaceTempView(name)
    return spark.sql(series_sql(name))
