"""The catalogue: one typed row per written object, for cohort queries (issue 20) and DICOMweb search (``serve``).

A Parquet dataset partitioned Hive-style by ``modality`` and ``study_year`` (``modality=CT/study_year=2022/``),
appended to by every writer (``listen`` and ``serve`` today, ``reassemble`` later). It is never rewritten in
place: an object's current state is its newest row by ``recorded_at``, and readers take that row
(``CURRENT_VIEW_SQL`` for DuckDB). A null partition value is written as Spark writes it,
``__HIVE_DEFAULT_PARTITION__``, so Spark, pyarrow and DuckDB read the same table.

Rows come from a header in either form the project holds: a pydicom Dataset (``attributes_from_dataset``)
or a DICOM JSON dict (``attributes_from_json``); ``build_catalog_row`` adds the output and provenance columns.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timezone
from typing import Any

from ..dicom.dicom_json import as_int
from ..errors import NotFoundError
from ..io import arrow_io, listing, uris

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
             "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(n, kinds[k]) for n, k in CATALOG_FIELDS if with_partitions or n not in PARTITION_COLUMNS])


def spark_schema() -> Any:
    """The catalogue's Spark schema (for the Spark writer of issue 20)."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(), "date": T.DateType(),
             "timestamp": T.TimestampType()}
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

    return _attributes(first)


def attributes_from_json(header: Mapping[str, Any]) -> dict[str, Any]:
    """The catalogue's header columns from a DICOM JSON dict (keys GGGGEEEE, upper case)."""
    from ..dicom.dicom_json import first_value

    return _attributes(lambda tag, _kind: first_value(dict(header), tag))


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


# DuckDB: the newest row of each instance. {source} is a relation with the catalogue's columns.
CURRENT_VIEW_SQL = """
CREATE OR REPLACE VIEW {name} AS
SELECT * REPLACE (NULLIF(CAST(modality AS VARCHAR), '{hive_null}') AS modality)
FROM {source}
QUALIFY row_number() OVER (PARTITION BY sop_instance_uid ORDER BY recorded_at DESC) = 1
"""


def duckdb_source_sql(uri: str) -> str:
    """A DuckDB relation over every Parquet file of a local catalogue, partition columns included."""
    pattern = uris.join_uri(uri, "**", "*.parquet").replace("'", "''")
    return f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"


def create_current_view(con: Any, uri: str, name: str = "catalog") -> None:
    """Create (or refresh) the DuckDB view ``name``: the catalogue at ``uri``, newest row per instance.

    Local catalogues are read by DuckDB's own Parquet reader; an S3 one through a pyarrow dataset
    (DuckDB's httpfs extension is not needed). An empty or missing catalogue gives an empty view.
    """
    import pyarrow as pa

    has_files = False
    if uris.is_s3(uri):
        try:
            dataset = arrow_io.open_dataset(uri, partitioning="hive")
            has_files = bool(dataset.files)
        except (FileNotFoundError, OSError):
            dataset = None
        if has_files:
            con.register(f"{name}_files", dataset)
    else:
        try:
            has_files = any(True for _ in listing.list_objects(uri, (".parquet",)))
        except NotFoundError:  # a missing folder is an empty catalogue
            has_files = False
    if not has_files:
        con.register(f"{name}_files", pa.Table.from_pylist([], schema=arrow_schema()))
        source = f"{name}_files"
    else:
        source = f"{name}_files" if uris.is_s3(uri) else duckdb_source_sql(uri)
    con.execute(CURRENT_VIEW_SQL.format(name=name, source=source, hive_null=HIVE_NULL))
