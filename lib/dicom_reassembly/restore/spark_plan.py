"""Wave-2 planning on Spark: the manifest read and every header evaluated on the executors, not in one process.

``plan_restore(..., spark=session)`` uses ``SparkManifest`` where the local path uses pyarrow; both answer the same
three questions (each archive's newest index, whether any header names a pixel archive, which pixel archives hold
a selected instance) by the same rules: the criteria are ``selection.criteria.first_failure`` on each header, a
``BulkDataURI`` names an archive by ``plan.ref_candidates``, and an unlocated UID is looked up in the manifest's pixel
rows. At 3 x 10^9 headers the JSON parsing alone is days in one process and minutes on a cluster.

``write_plan``/``read_plan``: the plan as files, so a Spark job (``jobs/plan_restore.py``, run by spark-submit or as
an EMR step) can hand it back to the campaign. ``plan.json`` is written last: a plan folder without it is incomplete.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from ..errors import NotFoundError
from ..io import reads, writes
from ..io import uris as io_uris
from .plan import PlannedObject, RestorePlan, Selection

log = logging.getLogger(__name__)
PAIRS = "archive_uri string, index_run string"
EVALUATED = ("row_key string, sop_instance_uid string, outcome string, "
             "candidates array<struct<rank:int, kind:string, value:string>>")


def _evaluate(rows: Iterator[Any], criteria: Any) -> Iterator[tuple]:
    """Executor side: each header row -> (row key, UID, invalid | filtered | selected, what its ref could name)."""
    from ..selection.criteria import first_failure
    from .plan import _header_pixel_ref, _parse_header, ref_candidates

    for row in rows:
        key, uid = f"{row['archive_uri']}\x00{row['data_offset']}", row["sop_instance_uid"]
        header = _parse_header(row["header_json"])
        if row["error"] or header is None or not uid:
            yield key, uid, "invalid", None  # never reassembled, so its pixels are not needed
        elif first_failure(criteria, header) is not None:
            yield key, uid, "filtered", None
        else:
            ref = row["pixel_ref"] or _header_pixel_ref(header)
            yield key, uid, "selected", ref_candidates(ref) if ref else []


def _candidates(rows: Iterator[Any]) -> Iterator[tuple]:
    from .plan import ref_candidates

    for row in rows:
        key = f"{row['archive_uri']}\x00{row['data_offset']}"
        yield key, row["sop_instance_uid"], "selected", ref_candidates(row["pixel_ref"])


class SparkManifest:
    """The manifest on Spark, answering what ``plan._ArrowManifest`` answers with pyarrow."""

    def __init__(self, spark: Any, uri: str) -> None:
        from ..io.arrow_io import dataset_exists
        from ..manifest.index import manifest_schema

        if not dataset_exists(uri):
            raise NotFoundError("manifest_not_found", "no manifest dataset here", uri=uri)
        self.spark = spark
        self.uri = uri
        self.rows = spark.read.schema(manifest_schema()).parquet(uri)  # every index run: pairs pick the newest

    def newest_archive_rows(self) -> list[dict[str, Any]]:
        from pyspark.sql import functions as F

        archives = self.rows.filter((F.col("kind") == "archive") & F.col("index_run").isNotNull())
        newest = archives.groupBy("archive_uri").agg(F.max("index_run").alias("index_run"))
        return [r.asDict() for r in archives.join(newest, ["archive_uri", "index_run"])
                .select("archive_uri", "index_run", "archive_size", "archive_etag", "error").collect()]

    def _headers(self, pairs: list[tuple[str, str]]) -> Any:
        from pyspark.sql import functions as F

        return (self.rows.filter(F.col("kind") == "header")
                .join(F.broadcast(self.spark.createDataFrame(pairs, PAIRS)), ["archive_uri", "index_run"]))

    def _located(self, selected: Any, pixel_uris: Sequence[str]) -> Any:
        """(row_key, sop_instance_uid, archive) for the selected rows whose ref names a listed pixel archive."""
        from pyspark.sql import functions as F

        listed = self.spark.createDataFrame([(u, io_uris.basename(u)) for u in pixel_uris], "archive string, name string")
        unique = (listed.groupBy("name").agg(F.count(F.lit(1)).alias("n"), F.first("archive").alias("archive"))
                  .filter(F.col("n") == 1).select(F.col("name").alias("value"), "archive"))
        cands = selected.select("row_key", "sop_instance_uid", F.explode("candidates").alias("c")).select(
            "row_key", "sop_instance_uid", "c.rank", "c.kind", "c.value")
        hits = (cands.filter(F.col("kind") == "uri").join(listed.select(F.col("archive").alias("value"), "archive"),
                                                          "value")
                .unionByName(cands.filter(F.col("kind") == "name").join(unique, "value")))
        return hits.groupBy("row_key", "sop_instance_uid").agg(F.min_by("archive", "rank").alias("archive"))

    def any_archive_ref(self, indexed: dict[str, str], pixel_uris: Sequence[str], suffixes: tuple[str, ...]) -> bool:
        from pyspark.sql import functions as F

        if "pixel_ref" not in self.spark.read.parquet(self.uri).columns:
            return True  # an older manifest: let the full evaluation look at the header JSON
        refs = self._headers(sorted(indexed.items())).filter(F.col("pixel_ref").isNotNull())
        if suffixes:
            lower = F.lower(F.col("pixel_ref"))
            named = F.lit(False)
            for suffix in suffixes:
                named = named | lower.contains(suffix.lower())
            refs = refs.filter(named)
        rows = refs.select("archive_uri", "data_offset", "sop_instance_uid", "pixel_ref").rdd.mapPartitions(_candidates)
        selected = self.spark.createDataFrame(rows, EVALUATED)
        return bool(self._located(selected, pixel_uris).limit(1).count())

    def needed_pixel_archives(self, spec: Any, indexed: dict[str, str],
                              pixel_uris: Sequence[str]) -> tuple[set[str], Selection]:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        pixel_set = set(pixel_uris)
        criteria = list(getattr(spec, "criteria", spec))  # the criteria alone reach the executors: no credentials
        headers = self._headers(sorted((u, r) for u, r in indexed.items() if u not in pixel_set)).select(
            "archive_uri", "data_offset", "sop_instance_uid", "header_json", "error", "pixel_ref")
        evaluated = self.spark.createDataFrame(headers.rdd.mapPartitions(lambda rows: _evaluate(rows, criteria)),
                                               EVALUATED).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            outcomes = {r["outcome"]: int(r["count"]) for r in evaluated.groupBy("outcome").count().collect()}
            selected = evaluated.filter(F.col("outcome") == "selected")
            located = self._located(selected, pixel_uris).persist(StorageLevel.MEMORY_AND_DISK)
            needed = {r["archive"] for r in located.select("archive").distinct().collect()}
            by_ref = located.count()
            unlocated = selected.join(located, "row_key", "left_anti").select("sop_instance_uid").distinct()
            unlocated_n = unlocated.count()
            found_n = 0
            pixel_pairs = sorted((u, r) for u, r in indexed.items() if u in pixel_set)
            if unlocated_n and pixel_pairs:
                pixels = (self.rows.filter(F.col("kind") == "pixels")
                          .join(self.spark.createDataFrame(pixel_pairs, PAIRS), ["archive_uri", "index_run"])
                          .join(unlocated, "sop_instance_uid").select("sop_instance_uid", "archive_uri")
                          .persist(StorageLevel.MEMORY_AND_DISK))
                needed |= {r["archive_uri"] for r in pixels.select("archive_uri").distinct().collect()}
                found_n = pixels.select("sop_instance_uid").distinct().count()
                pixels.unpersist()
            located.unpersist()
        finally:
            evaluated.unpersist()
        sel = Selection(header_rows=sum(outcomes.values()), selected=outcomes.get("selected", 0),
                        filtered_out=outcomes.get("filtered", 0), invalid_headers=outcomes.get("invalid", 0),
                        located_by_ref=by_ref, located_by_manifest=found_n, unlocated=unlocated_n - found_n)
        log.info("restore plan (Spark): %d headers, %d selected, %d filtered out, %d pixel archives needed, "
                 "%d unlocated", sel.header_rows, sel.selected, sel.filtered_out, len(needed), sel.unlocated)
        return needed, sel


def write_plan(plan: RestorePlan, uri: str) -> None:
    """The plan as ``objects.parquet`` and ``plan.json`` (selection and notes) under ``uri``; the JSON last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ("uri", "size", "role", "wave", "state", "reason", "storage_class")
    table = pa.Table.from_pylist([{n: getattr(o, n) for n in names} for o in plan.objects], schema=pa.schema([
        ("uri", pa.string()), ("size", pa.int64()), ("role", pa.string()), ("wave", pa.int32()),
        ("state", pa.string()), ("reason", pa.string()), ("storage_class", pa.string())]))
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    writes.write_bytes(io_uris.join_uri(uri, "objects.parquet"), buf.getvalue(),
                       writes.WriteOptions(content_type="application/vnd.apache.parquet"))
    meta = {"selection": asdict(plan.selection) if plan.selection is not None else None, "notes": plan.notes,
            "objects": len(plan.objects)}
    writes.write_bytes(io_uris.join_uri(uri, "plan.json"), json.dumps(meta, sort_keys=True).encode("utf-8"),
                       writes.WriteOptions(content_type="application/json"))


def read_plan(uri: str) -> RestorePlan:
    """A plan ``write_plan`` wrote; NotFoundError ``plan_not_found`` when it is missing or incomplete."""
    import pyarrow.parquet as pq

    try:
        meta = json.loads(reads.read_bytes(io_uris.join_uri(uri, "plan.json")))
        table = pq.read_table(io.BytesIO(reads.read_bytes(io_uris.join_uri(uri, "objects.parquet"))))
    except NotFoundError as exc:
        raise NotFoundError("plan_not_found", "no complete restore plan here", uri=uri) from exc
    objects = [PlannedObject(**row) for row in table.to_pylist()]
    selection = Selection(**meta["selection"]) if meta.get("selection") else None
    return RestorePlan(objects, selection, list(meta.get("notes") or []))
