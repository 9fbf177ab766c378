"""The catalogue: one typed row per stored object, for cohort queries (issue 20) and DICOMweb search (``serve``).

A Parquet dataset partitioned Hive-style by ``modality`` and ``study_year`` (``modality=CT/study_year=2022/``):
cohort questions name a modality and a period, so both prune whole folders, and there are few of them
(tens of modalities times tens of years). Inside a file, rows are sorted by study date and series, so row-group
statistics prune further. Two writers share it, with the same schema and partitioning: ``listen``/``serve``
append rows with pyarrow (``write_catalog_rows``); ``reassemble`` writes with Spark (``catalog_spark``) and
compacts the partitions it touched. A null partition value is written as Spark writes it,
``__HIVE_DEFAULT_PARTITION__``, so Spark, pyarrow, DuckDB and Athena read the same table.

One row per object in its current state: readers take the newest row of each instance within its partition
(``current_rows_sql``; ``create_current_view`` for DuckDB, ``catalog_spark.read_catalog`` for Spark, the Glue
view for Athena), so a row appended before its partition is compacted is never seen twice; deduplicating
within a partition, not across the table, keeps a filter on ``modality`` or ``study_year`` pruning folders
through the view. ``series_sql`` rolls the current rows up per series.

Rows come from a header in either form the project holds: a pydicom Dataset (``attributes_from_dataset``)
or a DICOM JSON dict (``attributes_from_json``); ``build_catalog_row`` adds the output and provenance columns.
``criteria_values`` keeps what selection criteria read (``selection.criteria.selectable_values``), so
``cohort`` applies the criteria's own semantics to the catalogue.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import unquote

from ..dicom.dicom_json import as_int
from ..errors import NotFoundError
from ..io import arrow_io, listing, uris
from ..selection.criteria import SUPPORTED_VRS, selectable_values

log = logging.getLogger(__name__)

# (column, kind): kinds map onto Arrow, Spark and DuckDB types below.
CATALOG_FIELDS: list[tuple[str, str]] = [
    # identity
    ("sop_instance_uid", "string"), ("sop_class_uid", "string"), ("study_instance_uid", "string"),
    ("series_instance_uid", "string"), ("patient_id", "string"),
    # study and series (modality and study_year are the partition columns)
    ("modality", "string"), ("study_date", "date"), ("study_year", "int"), ("series_number", "int"),
    ("instance_number", "int"), ("body_part_examined", "string"), ("manufacturer", "string"),
    # pixels
    ("rows", "int"), ("columns", "int"), ("number_of_frames", "int"), ("bits_allocated", "int"),
    ("photometric_interpretation", "string"), ("transfer_syntax", "string"),
    # output
    ("output_uri", "string"), ("output_bytes", "long"), ("output_checksum", "string"),
    # provenance
    ("run_id", "string"), ("header_archive", "string"), ("pixel_archive", "string"),
    # state, and the attributes DICOMweb search matches on
    ("status", "string"), ("recorded_at", "timestamp"),
    ("patient_name", "string"), ("accession_number", "string"), ("study_description", "string"),
    ("series_description", "string"),
    # what selection criteria read: every top-level DA, CS and AS element, by tag GGGGEEEE
    ("criteria_values", "map"),
]
CATALOG_NAMES = [n for n, _ in CATALOG_FIELDS]
PARTITION_COLUMNS = ("modality", "study_year")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

# Header attributes by column: (tag as GGGGEEEE, value kind).
CATALOG_TAGS: dict[str, tuple[str, str]] = {
    "sop_instance_uid": ("00080018", "str"), "sop_class_uid": ("00080016", "str"),
    "study_instance_uid": ("0020000D", "str"), "series_instance_uid": ("0020000E", "str"),
    "patient_id": ("00100020", "str"), "patient_name": ("00100010", "pn"),
    "modality": ("00080060", "str"), "study_date": ("00080020", "date"),
    "series_number": ("00200011", "int"), "instance_number": ("00200013", "int"),
    "body_part_examined": ("00180015", "str"), "manufacturer": ("00080070", "str"),
    "rows": ("00280010", "int"), "columns": ("00280011", "int"), "number_of_frames": ("00280008", "int"),
    "bits_allocated": ("00280100", "int"), "photometric_interpretation": ("00280004", "str"),
    "accession_number": ("00080050", "str"), "study_description": ("00081030", "str"),
    "series_description": ("0008103E", "str"),
}


def arrow_schema(with_partitions: bool = True) -> Any:
    """The catalogue's Arrow schema; without the partition columns, the schema of its files."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "int": pa.int32(), "long": pa.int64(), "date": pa.date32(),
             "timestamp": pa.timestamp("us", tz="UTC"), "map": pa.map_(pa.string(), pa.list_(pa.string()))}
    return pa.schema([(n, kinds[k]) for n, k in CATALOG_FIELDS if with_partitions or n not in PARTITION_COLUMNS])


def spark_schema() -> Any:
    """The catalogue's Spark schema."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(), "date": T.DateType(),
             "timestamp": T.TimestampType(), "map": T.MapType(T.StringType(), T.ArrayType(T.StringType()))}
    return T.StructType([T.StructField(n, kinds[k], True) for n, k in CATALOG_FIELDS])


def _as_date(value: Any) -> date | None:
    """A DA value (YYYYMMDD, or the old YYYY.MM.DD) as a date, or None when it is not one."""
    text = str(value).strip().replace(".", "")
    try:
        return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def _typed(value: Any, kind: str) -> Any:
    if value is None or value == "":
        return None
    if kind == "int":
        return as_int(value)
    if kind == "date":
        return _as_date(value)
    text = str(value).strip()
    return text or None


def _attributes(first: Callable[[str, str], Any]) -> dict[str, Any]:
    """Typed attribute columns from ``first(tag, kind)``, the first value of an element or None."""
    out = {col: _typed(first(tag, kind), kind) for col, (tag, kind) in CATALOG_TAGS.items()}
    if out["number_of_frames"] is None and out["rows"] is not None:
        out["number_of_frames"] = 1  # single-frame IODs carry no NumberOfFrames (PS3.3 C.7.6.6)
    return out


def attributes_from_dataset(ds: Any) -> dict[str, Any]:
    """The catalogue's header columns from a pydicom Dataset."""

    def first(tag: str, kind: str) -> Any:
        elem = ds.get(int(tag, 16))
        if elem is None or elem.value is None or elem.VM == 0:
            return None
        value = elem.value[0] if elem.VM > 1 else elem.value
        return str(value) if kind == "pn" else value

    out = _attributes(first)
    # The DA, CS and AS elements as the JSON model holds them, so criteria read the same values either way.
    model = {f"{elem.tag:08X}": {"vr": elem.VR, "Value": [str(v) for v in (elem.value if elem.VM > 1 else [elem.value])
                                                         if v is not None] if elem.VM else []}
             for elem in ds if elem.VR in SUPPORTED_VRS}
    out["criteria_values"] = selectable_values(model)
    return out


def attributes_from_json(header: Mapping[str, Any]) -> dict[str, Any]:
    """The catalogue's header columns from a DICOM JSON dict (keys GGGGEEEE, upper case)."""
    from ..dicom.dicom_json import first_value

    out = _attributes(lambda tag, _kind: first_value(dict(header), tag))
    out["criteria_values"] = selectable_values(header)
    return out


def build_catalog_row(attributes: Mapping[str, Any], *, transfer_syntax: str | None, output_uri: str | None,
                      output_bytes: int | None, output_checksum: str | None, run_id: str,
                      status: str, header_archive: str | None = None, pixel_archive: str | None = None,
                      recorded_at: datetime | None = None) -> dict[str, Any]:
    """One catalogue row as a dict with every column, in schema order."""
    values = dict(attributes)
    study_date = values.get("study_date")
    values.update(
        study_year=study_date.year if isinstance(study_date, date) else None, transfer_syntax=transfer_syntax,
        output_uri=output_uri, output_bytes=output_bytes, output_checksum=output_checksum, run_id=run_id,
        header_archive=header_archive, pixel_archive=pixel_archive, status=status,
        recorded_at=recorded_at or datetime.now(timezone.utc))
    return {n: values.get(n) for n in CATALOG_NAMES}


def write_catalog_rows(uri: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows to the catalogue at ``uri`` (local folder or s3:// prefix): new files, one per partition.

    Returns the number of rows written. Existing files are never touched.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    rows = list(rows)
    if not rows:
        return 0
    table = pa.Table.from_pylist([{n: r.get(n) for n in CATALOG_NAMES} for r in rows], schema=arrow_schema())
    filesystem, path = arrow_io.arrow_filesystem(uri)
    partitioning = pads.partitioning(pa.schema([(c, arrow_schema().field(c).type) for c in PARTITION_COLUMNS]),
                                     flavor="hive")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    pads.write_dataset(table, path, filesystem=filesystem, format="parquet", partitioning=partitioning,
                       basename_template=f"part-{stamp}-{uuid.uuid4().hex[:12]}-{{i}}.parquet",
                       existing_data_behavior="overwrite_or_ignore")
    log.debug("catalogue %s: %d row(s) appended", uri, len(rows))
    return len(rows)


@dataclass(frozen=True)
class CatalogFile:
    """One committed Parquet file of the catalogue and its partition."""

    uri: str
    size: int
    modality: str | None
    study_year: int | None

    @property
    def partition(self) -> tuple[str | None, int | None]:
        return self.modality, self.study_year


def _partition_value(text: str) -> str | None:
    value = unquote(text)  # pyarrow and Spark both percent-encode what a folder name cannot hold
    return None if value == HIVE_NULL else value


def list_catalog_files(uri: str) -> list[CatalogFile]:
    """The catalogue's committed Parquet files with their partitions; a missing catalogue has none.

    Files under a folder whose name starts with ``_`` or ``.`` are a writer's work in progress (Spark's
    ``_temporary``) and are left out, as Spark and pyarrow leave them out.
    """
    base = uri.rstrip("/") + "/"
    found: list[CatalogFile] = []
    try:
        objects = [o for o in listing.list_objects(uri, (".parquet",)) if not o.error]
    except NotFoundError:
        return []
    for obj in objects:
        rel = obj.uri[len(base):] if obj.uri.startswith(base) else obj.uri.rsplit("/", 1)[-1]
        segments = rel.split("/")
        if any(seg.startswith(("_", ".")) for seg in segments):
            continue
        values = dict(seg.split("=", 1) for seg in segments[:-1] if "=" in seg)
        year = _partition_value(values.get("study_year", HIVE_NULL))
        found.append(CatalogFile(obj.uri, obj.size, _partition_value(values.get("modality", HIVE_NULL)),
                                 int(year) if year is not None and year.lstrip("-").isdigit() else None))
    return found


def current_rows_sql(source: str, quote: str = "") -> str:
    """SQL for the newest row of each instance within its partition, in the SQL DuckDB, Spark and Athena share.

    ``source`` is a relation with the catalogue's columns; ``quote`` quotes identifiers (a backtick for Spark).
    A filter on a partition column passes through the window (it partitions by them), so it still prunes.
    """
    columns = ", ".join(f"{quote}{n}{quote}" for n in CATALOG_NAMES)
    return (f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY modality, study_year, "
            f"sop_instance_uid ORDER BY recorded_at DESC, run_id DESC) AS row_rank FROM {source}) newest "
            f"WHERE row_rank = 1")


# Per series, from the current rows: a slice is a frame (a single-frame object is one slice).
SERIES_FIELDS: list[tuple[str, str]] = [
    ("series_instance_uid", "string"), ("modality", "string"), ("study_year", "int"),
    ("study_instance_uid", "string"), ("patient_id", "string"), ("study_date", "date"), ("series_number", "int"),
    ("body_part_examined", "string"), ("manufacturer", "string"), ("instance_count", "long"),
    ("slice_count", "long"), ("total_bytes", "long"),
]


def series_sql(source: str) -> str:
    """SQL for the per-series rollup of current rows (``source``), in the SQL DuckDB, Spark and Athena share."""
    return ("SELECT series_instance_uid, modality, study_year, min(study_instance_uid) AS study_instance_uid, "
            "min(patient_id) AS patient_id, min(study_date) AS study_date, min(series_number) AS series_number, "
            "min(body_part_examined) AS body_part_examined, min(manufacturer) AS manufacturer, "
            "count(*) AS instance_count, CAST(sum(coalesce(number_of_frames, 1)) AS BIGINT) AS slice_count, "
            f"CAST(sum(output_bytes) AS BIGINT) AS total_bytes FROM {source} "
            "GROUP BY series_instance_uid, modality, study_year")


def duckdb_source_sql(files: list[str], typed: str) -> str:
    """A DuckDB relation over these Parquet files of a local catalogue, partition columns typed from the paths.

    ``typed`` is a relation with every catalogue column and no row: unioned by name, it gives files written
    before a column existed that column (null), and every column its type.
    """
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return (f"(SELECT * FROM {typed} UNION ALL BY NAME SELECT * REPLACE (NULLIF(modality, '{HIVE_NULL}') AS modality) "
            f"FROM read_parquet([{listed}], hive_partitioning = true, "
            "hive_types = {'modality': VARCHAR, 'study_year': INTEGER}, union_by_name = true))")


def create_current_view(con: Any, uri: str, name: str = "catalog", series: str | None = None) -> None:
    """Create (or refresh) the DuckDB view ``name``: the catalogue at ``uri``, newest row per instance.

    ``series`` names a second view, the per-series rollup. Local catalogues are read by DuckDB's own Parquet
    reader over the committed files; an S3 one through a pyarrow dataset (DuckDB's httpfs extension is not
    needed). An empty or missing catalogue gives empty views.
    """
    import pyarrow as pa

    typed = f"{name}_columns"
    con.register(typed, pa.Table.from_pylist([], schema=arrow_schema()))
    source = typed
    if uris.is_s3(uri):
        try:
            dataset = arrow_io.open_dataset(uri, partitioning=_arrow_partitioning())
            if dataset.files:
                con.register(f"{name}_files", dataset)
                source = f"(SELECT * FROM {typed} UNION ALL BY NAME SELECT * FROM {name}_files)"
        except (FileNotFoundError, OSError):
            pass
    else:
        files = [f.uri for f in list_catalog_files(uri)]
        if files:
            source = duckdb_source_sql(files, typed)
    con.execute(f"CREATE OR REPLACE VIEW {name} AS {current_rows_sql(source)}")
    if series:
        con.execute(f"CREATE OR REPLACE VIEW {series} AS {series_sql(name)}")


def _arrow_partitioning() -> Any:
    import pyarrow as pa
    import pyarrow.dataset as pads

    return pads.HivePartitioning(pa.schema([(c, arrow_schema().field(c).type) for c in PARTITION_COLUMNS]),
                                 null_fallback=HIVE_NULL)


# The DuckDB view over a relation {source}, as ``create_current_view`` makes it (kept for readers that format it).
CURRENT_VIEW_SQL = "CREATE OR REPLACE VIEW {name} AS " + current_rows_sql("{source}")
