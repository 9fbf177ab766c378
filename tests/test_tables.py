"""Ledger, runs and computations tables: Parquet and a real PostgreSQL through Spark's JDBC writer; no secret leaks."""

from __future__ import annotations

import copy
import json
import logging
import os
import zipfile
from datetime import datetime, timedelta, timezone

import numpy as np
import pydicom
import pytest
from helpers import debian_package_files
from postgres_fixture import postgres  # noqa: F401
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_reassembly.errors import ConfigError, StorageError
from dicom_reassembly.records.computations import computations_schema, run_computations_partition
from dicom_reassembly.records.ledger import ledger_row, ledger_schema
from dicom_reassembly.records.tables import (
    JDBC_JAR,
    RUNS_NAMES,
    JdbcTarget,
    build_runs_df,
    jdbc_session_settings,
    runs_row,
    scrub_arguments,
    write_jdbc,
    write_table,
)

SERIES = "1.2.826.0.1.3680043.8.498.2001"


@pytest.fixture(scope="module")
def jdbc_spark(spark):  # noqa: ANN001, ANN201
    """The shared session with the PostgreSQL JDBC driver on its classpath.

    conftest starts the session with ``jdbc_session_settings()``; should a session come without it,
    ``ADD JAR`` reaches both the driver (the calling thread's class loader) and the executors.
    pyspark's SparkContext has no addJar, and spark.jars cannot change once the context runs.
    """
    if not os.path.exists(JDBC_JAR):
        if os.environ.get("CI"):
            pytest.fail(f"{JDBC_JAR} missing; `make test` must install libpostgresql-jdbc-java (CI)")
        pytest.skip(f"{JDBC_JAR} not installed (outside CI)")
    if JDBC_JAR not in spark.sparkContext.getConf().get("spark.jars", ""):
        spark.sql(f"ADD JAR '{JDBC_JAR}'")
    return spark


@pytest.fixture(scope="module")
def target(postgres) -> JdbcTarget:  # noqa: ANN001, F811
    return JdbcTarget(postgres.jdbc_url, postgres.user, postgres.password)


def pg_count(postgres, table: str) -> int:  # noqa: ANN001, F811
    return int(postgres.query(f"SELECT count(*) FROM {table}")[0][0])


def ledger_df(spark, run_id: str):  # noqa: ANN001, ANN201
    rows = [
        ledger_row(run_id, "written", None, sop_instance_uid="1.2.3.1", output_uri="s3://out/1.2.3.1.dcm",
                   output_bytes=1234, series_instance_uid=SERIES),
        ledger_row(run_id, "filtered_out", "(0008,0020) StudyDate 20040119 not GREATER 2022-01-01",
                   sop_instance_uid="1.2.3.2", series_instance_uid=SERIES),
        ledger_row(run_id, "orphan_pixels", "no header member", sop_instance_uid="1.2.3.3",
                   pixel_archive="s3://in/img-0.tar", pixel_member="1.2.3.3.j2c"),
    ]
    return spark.createDataFrame(rows, ledger_schema())


def test_session_settings_point_at_the_debian_jar() -> None:
    """JDBC_JAR is where Debian's libpostgresql-jdbc-java puts the driver (CI and `make system-deps` install it)."""
    files = debian_package_files("libpostgresql-jdbc-java")
    assert JDBC_JAR in files, f"the package installs no {JDBC_JAR}: {sorted(f for f in files if f.endswith('.jar'))}"
    assert jdbc_session_settings() == {"spark.jars": JDBC_JAR}
    with zipfile.ZipFile(JDBC_JAR) as jar:
        assert "org/postgresql/Driver.class" in jar.namelist()


def test_session_settings_are_empty_without_the_jar(tmp_path) -> None:  # noqa: ANN001
    assert jdbc_session_settings(str(tmp_path / "postgresql.jar")) == {}


def test_ledger_to_parquet_and_postgres(jdbc_spark, postgres, target, tmp_path) -> None:  # noqa: ANN001, F811
    uri = str(tmp_path / "ledger")
    write_table(ledger_df(jdbc_spark, "run-a"), "ledger_t", uri, target, partition_by=["run_id"])

    assert postgres.query("SELECT sop_instance_uid, status, reason, output_bytes, pixel_member, run_id "
                          "FROM ledger_t ORDER BY sop_instance_uid") == [
        ("1.2.3.1", "written", "", "1234", "", "run-a"),
        ("1.2.3.2", "filtered_out", "(0008,0020) StudyDate 20040119 not GREATER 2022-01-01", "", "", "run-a"),
        ("1.2.3.3", "orphan_pixels", "no header member", "", "1.2.3.3.j2c", "run-a"),
    ]
    assert os.path.isdir(os.path.join(uri, "run_id=run-a"))
    parquet = jdbc_spark.read.parquet(uri)
    assert sorted((r["sop_instance_uid"], r["status"]) for r in parquet.collect()) == [
        ("1.2.3.1", "written"), ("1.2.3.2", "filtered_out"), ("1.2.3.3", "orphan_pixels")]

    # Append, never overwrite: a second run adds its rows to both.
    write_table(ledger_df(jdbc_spark, "run-b"), "ledger_t", uri, target, partition_by=["run_id"])
    assert pg_count(postgres, "ledger_t") == 6
    assert postgres.query("SELECT run_id, count(*) FROM ledger_t GROUP BY run_id ORDER BY 1") == [
        ("run-a", "3"), ("run-b", "3")]
    assert jdbc_spark.read.parquet(uri).count() == 6


def test_runs_row_to_parquet_and_postgres(jdbc_spark, postgres, target, tmp_path) -> None:  # noqa: ANN001, F811
    started = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    argv = ["--manifest", "s3://m/manifest", "--criteria", "c.json", "--jdbc-url", postgres.jdbc_url,
            "--db-password", postgres.password, "--stow-token=tok-123", "--out", "s3://k:v@bucket/out?token=tok-456"]
    row = runs_row("run-r", "reassemble", started, started + timedelta(seconds=90, microseconds=5), argv,
                   criteria_json='[{"dicom_tag": ["0008", "0060"], "operation": "IN", "reference": ["CT"]}]',
                   criteria_sha256="ab" * 32, status_counts={"written": 3, "filtered_out": 2},
                   archives_total=4, archives_skipped=1, bytes_skipped=4096)
    assert list(row) == RUNS_NAMES
    df = build_runs_df(jdbc_spark, row)
    write_table(df, "runs_t", str(tmp_path / "runs"), target)

    got = postgres.query("SELECT run_id, job, arguments, criteria_sha256, status_counts, archives_total, "
                         "archives_skipped, bytes_skipped, spark_version, "
                         "extract(epoch FROM finished_at - started_at) FROM runs_t")
    assert len(got) == 1
    run_id, job, arguments, sha, counts, total, skipped, nbytes, version, seconds = got[0]
    assert (run_id, job, sha, total, skipped, nbytes) == ("run-r", "reassemble", "ab" * 32, "4", "1", "4096")
    assert version == jdbc_spark.version
    assert float(seconds) == pytest.approx(90.000005)
    assert json.loads(counts) == {"written": 3, "filtered_out": 2}
    assert json.loads(arguments) == [
        "--manifest", "s3://m/manifest", "--criteria", "c.json", "--jdbc-url", postgres.jdbc_url,
        "--db-password", "***", "--stow-token=***", "--out", "s3://***@bucket/out?token=***"]
    for secret in (postgres.password, "tok-123", "tok-456", "k:v"):
        assert all(secret not in str(v) for v in row.values())
        assert secret not in "|".join(got[0])
    assert jdbc_spark.read.parquet(str(tmp_path / "runs")).first()["criteria_sha256"] == "ab" * 32


def test_build_runs_df_scrubs_again_and_rejects_unknown_columns(jdbc_spark) -> None:  # noqa: ANN001
    row = {"run_id": "r", "job": "j", "arguments": json.dumps(["--password", "pw-1", "--x", "1"])}
    got = build_runs_df(jdbc_spark, row).first()
    assert json.loads(got["arguments"]) == ["--password", "***", "--x", "1"]
    assert got["spark_version"] == jdbc_spark.version
    with pytest.raises(ConfigError) as err:
        build_runs_df(jdbc_spark, {"run_id": "r", "secret_sauce": 1})
    assert err.value.reason == "bad_runs_row"


def test_computations_table_computed_once_for_two_writes(jdbc_spark, postgres, target, tmp_path) -> None:  # noqa: ANN001, F811
    """series_summary runs in Spark executors; Parquet and PostgreSQL receive the same rows from one computation."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    folder = tmp_path / "dcm"
    folder.mkdir()
    uris = []
    for number in (1, 2, 3):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = SERIES, generate_uid(), number
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = (base.pixel_array.astype(np.int32) + number).astype(np.int16).tobytes()
        uris.append(str(folder / f"{number}.dcm"))
        ds.save_as(uris[-1], enforce_file_format=True)
    out = str(tmp_path / "out")
    series = [(SERIES, uris), ("1.2.3.999", [str(folder / "missing.dcm")])]
    rdd = jdbc_spark.sparkContext.parallelize(series, 2).mapPartitions(
        lambda rows: run_computations_partition(rows, ["series_summary"], out, "run-c"))
    uri = str(tmp_path / "computations")
    write_table(jdbc_spark.createDataFrame(rdd, computations_schema()), "computations_t", uri, target)

    assert postgres.query("SELECT series_instance_uid, computation, status, output_uri, split_part(detail, ':', 1) "
                          "FROM computations_t ORDER BY 1") == [
        ("1.2.3.999", "series_summary", "failed", "", "not_found"),
        (SERIES, "series_summary", "done",
         os.path.join(out, "_computations", "series_summary", SERIES, "summary.json"), ""),
    ]
    with open(os.path.join(out, "_computations", "series_summary", SERIES, "summary.json"), encoding="utf-8") as f:
        assert json.load(f)["instances"] == 3
    # One computation, two writes: a recomputation would carry new timestamps.
    props = target.connection_properties()
    from_pg = jdbc_spark.read.jdbc(target.url, "computations_t", properties=props).select(
        "series_instance_uid", "started_at", "finished_at")
    from_parquet = jdbc_spark.read.parquet(uri).select("series_instance_uid", "started_at", "finished_at")
    assert from_pg.count() == 2
    assert from_pg.exceptAll(from_parquet).count() == 0


def test_password_reaches_no_conf_plan_or_repr(jdbc_spark, postgres, target, tmp_path) -> None:  # noqa: ANN001, F811
    write_table(ledger_df(jdbc_spark, "run-s"), "ledger_leak_t", str(tmp_path / "ledger"), target)
    assert pg_count(postgres, "ledger_leak_t") == 3
    password = postgres.password

    assert password not in repr(target) and password not in str(target)
    assert "password='***'" in repr(target)
    assert password not in repr(JdbcTarget.from_env(postgres.jdbc_url, {"PGUSER": "u", "PGPASSWORD": password}))
    assert all(password not in f"{k}={v}" for k, v in jdbc_spark.sparkContext.getConf().getAll())
    assert all(password not in str(r) for r in jdbc_spark.sql("SET").collect())
    # What the SQL tab of the UI and the event log show for each query (plan text, description, details).
    # Spark's own status store, reached through the JVM because pyspark exposes no API for it.
    store = jdbc_spark._jsparkSession.sharedState().statusStore()  # noqa: SLF001
    executions = store.executionsList()
    texts = []
    for i in range(executions.size()):
        e = executions.apply(i)
        texts.append(f"{e.description()}\n{e.details()}\n{e.physicalPlanDescription()}")
    jdbc_writes = [t for t in texts if "JdbcRelationProvider" in t and "dbtable=ledger_leak_t" in t]
    assert jdbc_writes, "the JDBC write must be among the recorded executions"
    assert all("password=*********(redacted)" in t for t in jdbc_writes)
    assert all(password not in t for t in texts)


def test_wrong_password_is_a_typed_error_without_the_secret(jdbc_spark, postgres, caplog) -> None:  # noqa: ANN001, F811
    wrong = JdbcTarget(postgres.jdbc_url, postgres.user, "not-the-pw-42")
    with caplog.at_level(logging.ERROR), pytest.raises(StorageError) as err:
        write_jdbc(ledger_df(jdbc_spark, "run-w"), "ledger_wrong_t", wrong)
    assert err.value.reason == "jdbc_write_failed"
    assert "password authentication failed" in err.value.detail
    assert "not-the-pw-42" not in str(err.value) and "not-the-pw-42" not in caplog.text
    assert postgres.query("SELECT count(*) FROM pg_tables WHERE tablename = 'ledger_wrong_t'") == [("0",)]


def test_bad_table_name_writes_nothing(jdbc_spark, target, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        write_table(ledger_df(jdbc_spark, "run-x"), "ledger; DROP TABLE runs_t", str(tmp_path / "l"), target)
    assert err.value.reason == "bad_table_name"
    assert not os.path.exists(tmp_path / "l")


@pytest.mark.parametrize("url", [
    "jdbc:postgresql://db:5432/x?user=admin",
    "jdbc:postgresql://db:5432/x?ssl=true&password=hunter2",
    "jdbc:postgresql://db:5432/x?sslpassword=hunter2",
    "jdbc:postgresql://admin:hunter2@db:5432/x",
])
def test_credentials_in_url_are_rejected(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        JdbcTarget.from_env(url, {"PGUSER": "u", "PGPASSWORD": "p"})
    assert err.value.reason == "jdbc_url_credentials"
    assert "hunter2" not in str(err.value)


def test_target_from_env() -> None:
    url = "jdbc:postgresql://127.0.0.1:5432/db?ssl=false"
    env = {"DICOM_REASSEMBLY_JDBC_USER": "app", "DICOM_REASSEMBLY_JDBC_PASSWORD": "pw-a",
           "PGUSER": "pg", "PGPASSWORD": "pw-b"}
    assert JdbcTarget.from_env(url, env) == JdbcTarget(url, "app", "pw-a")
    assert JdbcTarget.from_env(url, {"PGUSER": "pg", "PGPASSWORD": "pw-b"}) == JdbcTarget(url, "pg", "pw-b")
    trust = JdbcTarget.from_env(url, {"PGUSER": "pg"})
    assert trust.password is None
    assert trust.connection_properties() == {"user": "pg", "driver": "org.postgresql.Driver"}
    with pytest.raises(ConfigError) as err:
        JdbcTarget.from_env(url, {})
    assert err.value.reason == "jdbc_user_missing"
    with pytest.raises(ConfigError) as err:
        JdbcTarget.from_env("jdbc:mysql://db/x", env)
    assert err.value.reason == "bad_jdbc_url"


@pytest.mark.parametrize(("argv", "want"), [
    (["--password", "p1", "--out", "o"], ["--password", "***", "--out", "o"]),
    (["--jdbc-password=p1"], ["--jdbc-password=***"]),
    (["--s3_secret_key", "p1", "--aws-session-token", "t1", "--credentials", "k:s"],
     ["--s3_secret_key", "***", "--aws-session-token", "***", "--credentials", "***"]),
    (["--api-token", "--verbose"], ["--api-token", "--verbose"]),
    (["--url", "https://h/x?a=1&client_secret=s1&b=2"], ["--url", "https://h/x?a=1&client_secret=***&b=2"]),
    (["--out", "s3://key:secret@bucket/p"], ["--out", "s3://***@bucket/p"]),
    (["--manifest", "s3://b/m", "--partitions", "8"], ["--manifest", "s3://b/m", "--partitions", "8"]),
    ([], []),
])
def test_scrub_arguments(argv: list[str], want: list[str]) -> None:
    assert scrub_arguments(argv) == want
    assert scrub_arguments(want) == want
