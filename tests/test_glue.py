"""``glue register`` against moto's Glue and S3 servers, and Spark SQL reading the tables it registered.

Spark creates its tables from what Glue holds (location, columns, partition keys) and the views from the Athena
view's own SQL, so what is checked is the registration, not a second copy of the schema.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timezone

import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dicom_reassembly.cli.main import main
from dicom_reassembly.intake.records import write_ledger_rows
from dicom_reassembly.records import catalog, glue
from dicom_reassembly.records.catalog_spark import read_catalog
from dicom_reassembly.records.ledger import LEDGER_NAMES

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _catalog_rows() -> list[dict]:
    rows = []
    for i, (modality, day) in enumerate([("CT", date(2022, 3, 1)), ("CT", date(2021, 1, 5)), ("MR", date(2022, 7, 9)),
                                         (None, None), ("CT", date(2022, 3, 1))]):
        attrs = {"sop_instance_uid": f"2.25.{i + 1}", "series_instance_uid": f"2.25.9{i % 2}", "modality": modality,
                 "study_date": day, "rows": 512, "number_of_frames": 1 + i, "criteria_values": {"00080060": [modality or ""]}}
        rows.append(catalog.build_catalog_row(attrs, transfer_syntax="1.2.840.10008.1.2.4.90", output_uri=f"/o/{i}.dcm",
                                              output_bytes=1000 * (i + 1), output_checksum="sha256:x", run_id="r1",
                                              status="written", recorded_at=T0))
    # an older row of 2.25.1, in the same partition: the views must not show it
    rows.append({**rows[0], "run_id": "r0", "output_bytes": 1, "recorded_at": datetime(2025, 1, 1, tzinfo=timezone.utc)})
    return rows


def _ledger_rows() -> list[dict]:
    return [dict(dict.fromkeys(LEDGER_NAMES), run_id=run, sop_instance_uid=f"2.25.{i}", status="written",
                 finished_at=T0) for run in ("20260101T000000Z-a", "20260102T000000Z-b") for i in range(3)]


def _write_manifest(uri: str, buckets: int | None) -> None:
    """A manifest-like dataset: one flat file, or Hive folders ``bucket=N`` (a layout by hash bucket)."""
    from dicom_reassembly.io import arrow_io

    table = pa.table({"archive_uri": ["a.tar"], "sop_instance_uid": ["2.25.1"], "size": pa.array([10], pa.int64())})
    filesystem, path = arrow_io.arrow_filesystem(uri)
    if filesystem is None:
        os.makedirs(path, exist_ok=True)
    for b in range(buckets or 1):
        folder = f"{path}/bucket={b}" if buckets else path
        if filesystem is None:
            os.makedirs(folder, exist_ok=True)
        pq.write_table(table, f"{folder}/part-0.parquet", filesystem=filesystem)


def test_type_names_for_hive_and_athena() -> None:
    assert glue.hive_type(pa.map_(pa.string(), pa.list_(pa.string()))) == "map<string,array<string>>"
    assert glue.hive_type(pa.struct([("a", pa.int32()), ("b", pa.list_(pa.timestamp("us", tz="UTC")))])) == \
        "struct<a:int,b:array<timestamp>>"
    assert glue.presto_type("map<string,array<string>>") == "map(varchar,array(varchar))"
    assert glue.presto_type("struct<a:int,b:map<string,bigint>>") == "row(a integer,b map(varchar,bigint))"
    view = glue.build_view_input("v", "db", "SELECT 1 AS x", [("x", "int")])
    assert glue.view_sql(view) == "SELECT 1 AS x" and view["TableType"] == "VIRTUAL_VIEW"


def test_register_on_moto_creates_then_updates_tables_views_and_partitions(moto_server, s3, capsys) -> None:  # noqa: ANN001
    s3.create_bucket(Bucket="lake")
    cat, ledger, manifest, flat = ("s3://lake/ledger_catalog", "s3://lake/ledger", "s3://lake/manifest",
                                   "s3://lake/flat_manifest")
    catalog.write_catalog_rows(cat, _catalog_rows())
    write_ledger_rows(ledger, _ledger_rows())
    _write_manifest(manifest, buckets=4)
    _write_manifest(flat, buckets=None)
    assert main(["glue", "register", "--database", "dicom", "--catalog", cat, "--ledger", ledger,
                 "--manifest", manifest]) == 0
    printed = capsys.readouterr().out
    client = boto3.client("glue")
    tables = {t["Name"]: t for t in client.get_tables(DatabaseName="dicom")["TableList"]}
    assert set(tables) == {"catalog_files", "catalog", "series", "ledger", "manifest", "manifest_current"}
    assert glue.view_sql(tables["manifest_current"]) == glue.manifest_current_sql("manifest")
    files = tables["catalog_files"]
    assert files["StorageDescriptor"]["Location"] == "s3://lake/ledger_catalog/"
    assert [(k["Name"], k["Type"]) for k in files["PartitionKeys"]] == [("modality", "string"), ("study_year", "int")]
    assert {c["Name"]: c["Type"] for c in files["StorageDescriptor"]["Columns"]}["criteria_values"] == \
        "map<string,array<string>>"
    parts = client.get_partitions(DatabaseName="dicom", TableName="catalog_files")["Partitions"]
    assert sorted((tuple(p["Values"]), p["StorageDescriptor"]["Location"]) for p in parts) == sorted([
        (("CT", "2021"), "s3://lake/ledger_catalog/modality=CT/study_year=2021/"),
        (("CT", "2022"), "s3://lake/ledger_catalog/modality=CT/study_year=2022/"),
        (("MR", "2022"), "s3://lake/ledger_catalog/modality=MR/study_year=2022/"),
        ((catalog.HIVE_NULL, catalog.HIVE_NULL),
         f"s3://lake/ledger_catalog/modality={catalog.HIVE_NULL}/study_year={catalog.HIVE_NULL}/")])
    assert glue.view_sql(tables["catalog"]) == catalog.current_rows_sql("catalog_files")
    assert glue.view_sql(tables["series"]) == catalog.series_sql("catalog")
    ledger_parts = client.get_partitions(DatabaseName="dicom", TableName="ledger")["Partitions"]
    assert sorted(p["Values"][0] for p in ledger_parts) == ["20260101T000000Z-a", "20260102T000000Z-b"]
    params = tables["manifest"]["Parameters"]
    assert (params["projection.enabled"], params["projection.bucket.type"], params["projection.bucket.range"]) == \
        ("true", "integer", "0,3")
    assert params["storage.location.template"] == "s3://lake/manifest/bucket=${bucket}/"
    assert not client.get_partitions(DatabaseName="dicom", TableName="manifest")["Partitions"]
    assert "created" in printed and "projected" in printed
    # A second registration: a new partition appears, a vanished one goes, nothing is duplicated.
    for obj in s3.list_objects_v2(Bucket="lake", Prefix="ledger_catalog/modality=MR")["Contents"]:
        s3.delete_object(Bucket="lake", Key=obj["Key"])
    catalog.write_catalog_rows(cat, [{**_catalog_rows()[0], "sop_instance_uid": "2.25.77", "study_date": date(2019, 1, 1),
                                      "study_year": 2019}])
    assert main(["glue", "register", "--database", "dicom", "--catalog", cat, "--manifest", flat,
                 "--prefix", "flat_"]) == 0
    assert main(["glue", "register", "--database", "dicom", "--catalog", cat]) == 0
    parts = client.get_partitions(DatabaseName="dicom", TableName="catalog_files")["Partitions"]
    assert sorted(tuple(p["Values"]) for p in parts) == sorted(
        [("CT", "2019"), ("CT", "2021"), ("CT", "2022"), (catalog.HIVE_NULL, catalog.HIVE_NULL)])
    out = capsys.readouterr().out
    assert "updated" in out
    flat_table = client.get_table(DatabaseName="dicom", Name="flat_manifest")["Table"]
    assert flat_table["PartitionKeys"] == [] and "projection.enabled" not in flat_table["Parameters"]
    assert [c["Name"] for c in flat_table["StorageDescriptor"]["Columns"]] == ["archive_uri", "sop_instance_uid", "size"]


def test_register_without_a_dataset_or_on_an_empty_prefix_is_one_line(moto_server, s3, capsys) -> None:  # noqa: ANN001
    assert main(["glue", "register", "--database", "d"]) == 2
    assert capsys.readouterr().err.startswith("error: no_dataset")
    s3.create_bucket(Bucket="empty")
    assert main(["glue", "register", "--database", "d", "--manifest", "s3://empty/manifest"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: dataset_not_found: no Parquet files (s3://empty/manifest)"


def test_spark_sql_reads_the_registered_tables_files(spark, moto_server, tmp_path) -> None:  # noqa: ANN001
    base = str(tmp_path)
    cat, ledger = os.path.join(base, "ledger_catalog"), os.path.join(base, "ledger")
    catalog.write_catalog_rows(cat, _catalog_rows())
    write_ledger_rows(ledger, _ledger_rows())
    client = boto3.client("glue")
    glue.register(client, "local", catalog_uri=cat, ledger_uri=ledger, prefix="t_")
    tables = {t["Name"]: t for t in client.get_tables(DatabaseName="local")["TableList"]}
    try:
        for name in ("t_catalog_files", "t_ledger"):
            assert tables[name]["StorageDescriptor"]["Location"].startswith("file:/")
            spark.sql(glue.spark_table_ddl(name, tables[name]))
            spark.sql(f"ALTER TABLE {name} RECOVER PARTITIONS")
        spark.sql(f"CREATE OR REPLACE TEMP VIEW t_catalog AS {glue.view_sql(tables['t_catalog'])}")
        spark.sql(f"CREATE OR REPLACE TEMP VIEW t_series AS {glue.view_sql(tables['t_series'])}")
        got = {r["sop_instance_uid"]: r.asDict() for r in spark.sql("SELECT * FROM t_catalog").collect()}
        con = duckdb.connect()
        catalog.create_current_view(con, cat, series="series")
        cur = con.execute("SELECT * FROM catalog")
        names = [d[0] for d in cur.description]
        duck = {r[0]: dict(zip(names, r)) for r in cur.fetchall()}
        assert set(got) == set(duck) == {f"2.25.{i}" for i in range(1, 6)}
        for uid, row in duck.items():
            assert {k: v for k, v in got[uid].items() if k != "recorded_at"} == \
                {k: v for k, v in row.items() if k != "recorded_at"}
        assert got["2.25.1"]["output_bytes"] == 1000, "the older row of 2.25.1 shows through the view"
        assert got["2.25.4"]["modality"] is None and got["2.25.4"]["study_year"] is None
        # partition pruning through the view: the filter reaches the file scan
        plan = spark.sql("SELECT * FROM t_catalog WHERE modality = 'CT' AND study_year = 2022")._jdf.queryExecution()
        assert "PartitionFilters: [isnotnull(modality" in plan.executedPlan().toString()
        series = [r.asDict() for r in spark.sql("SELECT * FROM t_series").collect()]
        assert sum(r["instance_count"] for r in series) == 5
        assert sum(r["slice_count"] for r in series) == sum(range(1, 6))
        assert sorted(r["total_bytes"] for r in series) == sorted(
            r[0] for r in con.execute("SELECT total_bytes FROM series").fetchall())
        assert spark.sql("SELECT count(*) AS n, count(DISTINCT run_id) AS runs FROM t_ledger").collect()[0].asDict() == \
            {"n": 6, "runs": 2}
        assert sorted(read_catalog(spark, cat).columns) == sorted(got["2.25.1"])
    finally:
        for name in ("t_catalog_files", "t_ledger"):
            spark.sql(f"DROP TABLE IF EXISTS {name}")


def test_the_manifest_view_keeps_each_archives_newest_index_run() -> None:
    import duckdb
    import pyarrow as pa

    rows = pa.table({"archive_uri": ["a", "a", "a", "a", "b", "b"], "kind": ["archive", "pixels", "archive", "pixels",
                                                                            "archive", "header"],
                     "index_run": ["1", "1", "2", "2", "1", "1"], "member_name": [None, "x.j2c", None, "y.j2c", None,
                                                                                  "z.json"]})
    con = duckdb.connect()
    con.register("manifest", rows)
    got = sorted(con.execute(glue.manifest_current_sql("manifest")).fetchall())
    assert got == [("a", "archive", "2", None), ("a", "pixels", "2", "y.j2c"), ("b", "archive", "1", None),
                   ("b", "header", "1", "z.json")]
