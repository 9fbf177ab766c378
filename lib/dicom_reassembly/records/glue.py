"""AWS Glue tables for the catalogue, the manifest and the ledger, so Athena and EMR's Spark SQL see them.

``register`` creates the database if needed, then creates or updates (in ``database``, names after ``prefix``):

- ``catalog_files``: the catalogue's Parquet files, partitioned by ``modality`` and ``study_year``;
- ``catalog`` and ``series``: Athena views over it, the current rows and the per-series rollup, in the SQL
  DuckDB and Spark use (``catalog.current_rows_sql``, ``catalog.series_sql``): query these, not the files;
- ``ledger``: partitioned by ``run_id``;
- ``manifest``: its files (every index run), and ``manifest_current``, a view of each archive's newest index run.

Partitions. The catalogue's and the ledger's are registered from a listing, and a rerun of ``register`` adds new
ones and drops vanished ones: the catalogue has few (modalities times years), its null values sit in
``__HIVE_DEFAULT_PARTITION__`` folders that projection cannot name, and an ``injected`` projection would refuse
``study_year >= 2022``; run ids cannot be projected at all. A partition column whose values are integers from a
known range is projected (``integer`` range), so new values need no call. (The manifest's UID buckets are in its
file names, not in Hive folders: Athena reads all of its files and prunes by row-group statistics.)

Athena views made through the Glue API (``VIRTUAL_VIEW``, ``/* Presto View: base64 */``) are how Athena itself
stores them; that format is not documented by AWS. Spark reads the tables from their location and schema
(``spark_table_ddl``); it cannot read Athena views, so Spark users take ``catalog_spark.read_catalog``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..errors import ConfigError, NotFoundError, StorageError
from ..io import arrow_io, listing, uris
from . import catalog
from .ledger import LEDGER_FIELDS

log = logging.getLogger(__name__)

PARQUET_SD = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                  "Parameters": {"serialization.format": "1"}},
}
_KIND_HIVE = {"string": "string", "int": "int", "long": "bigint", "date": "date", "timestamp": "timestamp",
              "map": "map<string,array<string>>"}
_HIVE_PRESTO = {"string": "varchar", "int": "integer", "bigint": "bigint", "smallint": "smallint",
                "tinyint": "tinyint", "float": "real", "double": "double", "boolean": "boolean", "date": "date",
                "timestamp": "timestamp", "binary": "varbinary"}
BATCH_CREATE = 100  # Glue's limits per call
BATCH_DELETE = 25


@dataclass
class Dataset:
    """A Parquet dataset as Glue needs it: location, columns (Hive types), partition keys and partitions."""

    location: str
    columns: list[tuple[str, str]]
    partition_keys: list[tuple[str, str]] = field(default_factory=list)
    partitions: list[tuple[list[str], str]] = field(default_factory=list)  # (values in key order, location)


def glue_location(uri: str) -> str:
    """A dataset's location as Glue stores it: ``s3://bucket/prefix/``, or ``file:/abs/path/`` for a local folder."""
    if uris.is_s3(uri):
        return uri.rstrip("/") + "/"
    return "file:" + os.path.abspath(uri).rstrip("/") + "/"


def hive_type(arrow_type: Any) -> str:
    """The Hive type of an Arrow type (what a Parquet file's schema holds)."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_dictionary(t):
        return hive_type(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return {8: "tinyint", 16: "smallint", 32: "int", 64: "bigint"}[t.bit_width]
    if pa.types.is_float32(t):
        return "float"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_map(t):
        return f"map<{hive_type(t.key_type)},{hive_type(t.item_type)}>"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{f.name}:{hive_type(f.type)}" for f in t) + ">"
    raise ConfigError("unsupported_type", f"no Hive type for Arrow type {t}")


def presto_type(hive: str) -> str:
    """The Presto/Trino name of a Hive type, as an Athena view's definition needs it."""
    if hive.startswith("array<"):
        return f"array({presto_type(hive[6:-1])})"
    if hive.startswith("map<"):
        key, value = _split_top(hive[4:-1])
        return f"map({presto_type(key)},{presto_type(value)})"
    if hive.startswith("struct<"):
        return "row(" + ",".join(f"{n} {presto_type(t)}" for n, t in
                                 (f.split(":", 1) for f in _split_top(hive[7:-1], all_parts=True))) + ")"
    return _HIVE_PRESTO.get(hive, hive)


def _split_top(text: str, all_parts: bool = False) -> list[str]:
    """Split at the commas that are not inside <...> (or (...))."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "<(" and 1 or (-1 if ch in ">)" else 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
            if not all_parts:
                break
    parts.append(text[start:])
    return parts


def read_partitions(uri: str, keys: Sequence[str]) -> list[tuple[list[str], str]]:
    """The Hive partitions of the dataset at ``uri`` (values of ``keys`` in order, folder location), from a listing.

    Folders of a writer's work in progress (a name starting with ``_`` or ``.``) are left out.
    """
    base = uri.rstrip("/") + "/"
    found: dict[str, list[str]] = {}
    try:
        objects = [o for o in listing.list_objects(uri, (".parquet",)) if not o.error]
    except NotFoundError:
        return []
    for obj in objects:
        rel = obj.uri[len(base):] if obj.uri.startswith(base) else ""
        folders = rel.split("/")[:-1]
        if any(seg.startswith(("_", ".")) for seg in rel.split("/")):
            continue
        values = dict(seg.split("=", 1) for seg in folders if "=" in seg)
        if len(folders) == len(keys) and all(k in values for k in keys):
            found.setdefault("/".join(folders), [unquote(values[k]) for k in keys])
    return [(values, glue_location(uris.join_uri(uri, folder))) for folder, values in sorted(found.items())]


def read_dataset(uri: str, columns: Sequence[tuple[str, str]] | None = None) -> Dataset:
    """The dataset at ``uri``: columns from ``columns`` (name, Hive type) or from its first file's schema,
    partition keys from its folder names (string, or int when every value is one)."""
    import pyarrow.parquet as pq

    files = [o for o in listing.list_objects(uri, (".parquet",)) if not o.error
             and not any(seg.startswith(("_", ".")) for seg in o.uri[len(uri.rstrip("/")) + 1:].split("/"))]
    if not files:
        raise NotFoundError("dataset_not_found", "no Parquet files", uri=uri)
    rel = files[0].uri[len(uri.rstrip("/")) + 1:].split("/")[:-1]
    keys = [seg.split("=", 1)[0] for seg in rel if "=" in seg]
    if columns is None:
        filesystem, path = arrow_io.arrow_filesystem(files[0].uri)
        schema = pq.read_schema(path, filesystem=filesystem)
        columns = [(f.name, hive_type(f.type)) for f in schema if f.name not in keys]
    partitions = read_partitions(uri, keys) if keys else []
    types = []
    for i, key in enumerate(keys):
        values = [v[i] for v, _ in partitions]
        types.append((key, "int" if values and all(v.isdigit() for v in values) else "string"))
    return Dataset(glue_location(uri), list(columns), types, partitions)


def catalog_dataset(uri: str) -> Dataset:
    """The catalogue, with its schema from ``catalog`` (not a file's: every column, whoever wrote the files)."""
    columns = [(n, _KIND_HIVE[k]) for n, k in catalog.CATALOG_FIELDS if n not in catalog.PARTITION_COLUMNS]
    keys = [(c, _KIND_HIVE[dict(catalog.CATALOG_FIELDS)[c]]) for c in catalog.PARTITION_COLUMNS]
    return Dataset(glue_location(uri), columns, keys, read_partitions(uri, catalog.PARTITION_COLUMNS))


def ledger_dataset(uri: str) -> Dataset:
    """The ledger, partitioned by run id, with its schema from ``ledger``."""
    columns = [(n, _KIND_HIVE[k]) for n, k in LEDGER_FIELDS if n != "run_id"]
    return Dataset(glue_location(uri), columns, [("run_id", "string")], read_partitions(uri, ["run_id"]))


def projection(dataset: Dataset) -> dict[str, str]:
    """Partition projection parameters when every partition key is an integer range, else none."""
    if not dataset.partition_keys or any(t != "int" for _, t in dataset.partition_keys) or not dataset.partitions:
        return {}
    params = {"projection.enabled": "true"}
    template = dataset.location
    for i, (key, _) in enumerate(dataset.partition_keys):
        values = [int(v[i]) for v, _ in dataset.partitions]
        params.update({f"projection.{key}.type": "integer", f"projection.{key}.range": f"{min(values)},{max(values)}"})
        template += f"{key}=${{{key}}}/"
    params["storage.location.template"] = template
    return params


def build_table_input(name: str, dataset: Dataset, parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """Glue ``TableInput`` for an external Parquet table."""
    return {
        "Name": name, "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE", **(parameters or {})},
        "PartitionKeys": [{"Name": n, "Type": t} for n, t in dataset.partition_keys],
        "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in dataset.columns],
                              "Location": dataset.location, **PARQUET_SD},
    }


def build_partition_inputs(dataset: Dataset) -> list[dict[str, Any]]:
    """Glue ``PartitionInput`` for each partition of ``dataset``."""
    columns = [{"Name": n, "Type": t} for n, t in dataset.columns]
    return [{"Values": values, "StorageDescriptor": {"Columns": columns, "Location": location, **PARQUET_SD}}
            for values, location in dataset.partitions]


def build_view_input(name: str, database: str, sql: str, columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Glue ``TableInput`` for an Athena view: ``sql`` over the database's tables, ``columns`` (name, Hive type)."""
    view = {"originalSql": sql, "catalog": "awsdatacatalog", "schema": database,
            "columns": [{"name": n, "type": presto_type(t)} for n, t in columns]}
    encoded = base64.b64encode(json.dumps(view).encode("utf-8")).decode("ascii")
    return {
        "Name": name, "TableType": "VIRTUAL_VIEW",
        "Parameters": {"presto_view": "true", "comment": "Presto View"},
        "ViewOriginalText": f"/* Presto View: {encoded} */", "ViewExpandedText": "/* Presto View */",
        "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in columns],
                              "SerdeInfo": {"Name": "-", "SerializationLibrary": "-"}},
    }


def view_sql(view: dict[str, Any]) -> str:
    """The SQL of an Athena view as Glue holds it (``build_view_input``'s inverse)."""
    text = view["ViewOriginalText"]
    encoded = text.removeprefix("/* Presto View: ").removesuffix(" */")
    return json.loads(base64.b64decode(encoded))["originalSql"]


def _call(what: str, fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise StorageError("glue_error", f"{what}: {err.get('Code')}: {err.get('Message', '')[:200]}") from None
    except BotoCoreError as exc:
        raise StorageError("glue_unreachable", f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _exists(glue: Any, database: str, name: str) -> bool:
    try:
        glue.get_table(DatabaseName=database, Name=name)
        return True
    except glue.exceptions.EntityNotFoundException:
        return False


def _database_exists(glue: Any, database: str) -> bool:
    try:
        glue.get_database(Name=database)
        return True
    except glue.exceptions.EntityNotFoundException:
        return False


def put_table(glue: Any, database: str, table_input: dict[str, Any]) -> str:
    """Create the table (or view), or update it in place; returns ``created`` or ``updated``."""
    name = table_input["Name"]
    if _call(f"get table {name}", _exists, glue=glue, database=database, name=name):
        _call(f"update table {name}", glue.update_table, DatabaseName=database, TableInput=table_input)
        return "updated"
    _call(f"create table {name}", glue.create_table, DatabaseName=database, TableInput=table_input)
    return "created"


def sync_partitions(glue: Any, database: str, name: str, inputs: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Make the table's registered partitions these: (added, dropped)."""
    wanted = {tuple(p["Values"]): p for p in inputs}
    pages = _call(f"list partitions of {name}", _partition_values, glue=glue, database=database, name=name)
    have = set(pages)
    new = [wanted[v] for v in sorted(set(wanted) - have)]
    gone = [{"Values": list(v)} for v in sorted(have - set(wanted))]
    for i in range(0, len(new), BATCH_CREATE):
        out = _call(f"add partitions to {name}", glue.batch_create_partition, DatabaseName=database, TableName=name,
                    PartitionInputList=new[i:i + BATCH_CREATE])
        _check_batch(name, out)
    for i in range(0, len(gone), BATCH_DELETE):
        out = _call(f"drop partitions of {name}", glue.batch_delete_partition, DatabaseName=database, TableName=name,
                    PartitionsToDelete=gone[i:i + BATCH_DELETE])
        _check_batch(name, out)
    return len(new), len(gone)


def _partition_values(glue: Any, database: str, name: str) -> list[tuple[str, ...]]:
    pages = glue.get_paginator("get_partitions").paginate(DatabaseName=database, TableName=name)
    return [tuple(p["Values"]) for page in pages for p in page["Partitions"]]


def _check_batch(name: str, out: dict[str, Any]) -> None:
    errors = out.get("Errors") or []
    if errors:
        first = errors[0].get("ErrorDetail", {})
        raise StorageError("glue_error", f"{len(errors)} partition(s) of {name}: {first.get('ErrorCode')}: "
                                         f"{first.get('ErrorMessage', '')[:200]}")


def register(glue: Any, database: str, *, catalog_uri: str | None = None, manifest_uri: str | None = None,
             ledger_uri: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """Create or update the tables and views; returns one summary per table (name, action, partitions)."""
    if not _call(f"get database {database}", _database_exists, glue=glue, database=database):
        _call(f"create database {database}", glue.create_database, DatabaseInput={"Name": database})
    done: list[dict[str, Any]] = []

    def table(name: str, dataset: Dataset) -> None:
        params = projection(dataset)
        action = put_table(glue, database, build_table_input(prefix + name, dataset, params))
        added = dropped = 0
        if dataset.partition_keys and not params:
            added, dropped = sync_partitions(glue, database, prefix + name, build_partition_inputs(dataset))
        done.append({"table": prefix + name, "action": action, "location": dataset.location,
                     "partitions": "projected" if params else len(dataset.partitions), "added": added,
                     "dropped": dropped})

    if catalog_uri:
        table("catalog_files", catalog_dataset(catalog_uri))
        hive = {n: _KIND_HIVE[k] for n, k in catalog.CATALOG_FIELDS}
        for name, sql, columns in (
                ("catalog", catalog.current_rows_sql(prefix + "catalog_files"), list(hive.items())),
                ("series", catalog.series_sql(prefix + "catalog"),
                 [(n, _KIND_HIVE[k]) for n, k in catalog.SERIES_FIELDS])):
            action = put_table(glue, database, build_view_input(prefix + name, database, sql, columns))
            done.append({"table": prefix + name, "action": action, "location": "view", "partitions": "-",
                         "added": 0, "dropped": 0})
    if ledger_uri:
        table("ledger", ledger_dataset(ledger_uri))
    if manifest_uri:
        dataset = read_dataset(manifest_uri)
        table("manifest", dataset)
        # The files hold every index run of an archive (and a compaction's copies for a moment): query the view.
        sql = manifest_current_sql(prefix + "manifest")
        action = put_table(glue, database, build_view_input(prefix + "manifest_current", database, sql,
                                                            [*dataset.columns, *dataset.partition_keys]))
        done.append({"table": prefix + "manifest_current", "action": action, "location": "view", "partitions": "-",
                     "added": 0, "dropped": 0})
    return done


def manifest_current_sql(source: str) -> str:
    """The manifest's rows of each archive's newest index run (manifest.spark.with_latest_index, in SQL)."""
    return (f"SELECT m.* FROM {source} m JOIN (SELECT archive_uri AS newest_archive, max(index_run) AS newest_run "
            f"FROM {source} WHERE kind = 'archive' GROUP BY archive_uri) n "
            "ON m.archive_uri = n.newest_archive AND m.index_run = n.newest_run")


def spark_table_ddl(name: str, table: dict[str, Any]) -> str:
    """Spark SQL creating table ``name`` over a Glue table's files, with its schema and partition keys."""
    sd = table["StorageDescriptor"]
    keys = table.get("PartitionKeys") or []
    columns = ", ".join(f"`{c['Name']}` {c['Type']}" for c in [*sd["Columns"], *keys])
    partitioned = f" PARTITIONED BY ({', '.join('`' + k['Name'] + '`' for k in keys)})" if keys else ""
    location = sd["Location"].replace("'", "\\'")
    return f"CREATE TABLE `{name}` ({columns}) USING parquet{partitioned} LOCATION '{location}'"
