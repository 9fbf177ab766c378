"""The catalogue ``reassemble`` writes (issue 20 item 1), on the shared Spark session and a generated delivery.

Every column of every row is checked against what the written object itself says (read back with pydicom,
its bytes hashed), not against the code that made the row; reruns, compaction, the intake's rows in the same
table, and ``--only`` runs are checked on the files themselves, not only through the view.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import date, datetime, timezone

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import build_manifest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR

from dicom_reassembly.config import Config
from dicom_reassembly.reassembly.run import ReassembleRun
from dicom_reassembly.records import catalog
from dicom_reassembly.records.catalog_spark import read_catalog, read_series, write_catalog

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def first_run(spark, sample_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    """The sample delivery's manifest, one run with its catalogue, and that run's summary."""
    root, expected = sample_delivery
    base = str(tmp_path_factory.mktemp("catalog-run"))
    build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), os.path.join(base, "manifest"))
    summary = _run(spark, base)
    return root, expected, base, summary


def _run(spark, base: str, out: str | None = None, **kw) -> dict:  # noqa: ANN001, ANN003
    run = ReassembleRun(spark=spark, manifest_uri=os.path.join(base, "manifest"), out=out or os.path.join(base, "dcm"),
                        ledger_uri=kw.pop("ledger", os.path.join(base, "ledger")), runs_uri=os.path.join(base, "runs"),
                        computations_uri=os.path.join(base, "computations"), cfg=Config(upload_threads=2),
                        catalog_uri=kw.pop("catalog", os.path.join(base, "ledger_catalog")), argv=["--manifest", "m"],
                        **kw)
    return run.execute()


def _view_rows(uri: str) -> dict[str, dict]:
    con = duckdb.connect()
    catalog.create_current_view(con, uri)
    cur = con.execute("SELECT * FROM catalog")
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    assert len({r["sop_instance_uid"] for r in rows}) == len(rows), "the view shows an instance twice"
    return {r["sop_instance_uid"]: r for r in rows}


def _file_rows(uri: str) -> list[dict]:
    """Every row of every committed file: what a reader without the view (Athena's raw table) sees."""
    files = [f.uri for f in catalog.list_catalog_files(uri)]
    if not files:
        return []
    partitioning = pads.HivePartitioning.discover(null_fallback=catalog.HIVE_NULL)
    return pads.dataset(files, format="parquet", partitioning=partitioning, partition_base_dir=uri).to_table().to_pylist()


def _text(ds, keyword: str) -> str | None:  # noqa: ANN001
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or getattr(value, "__len__", None) and type(value).__name__ == "MultiValue":
        value = value[0]
    return str(value).strip() or None


def _int(ds, keyword: str) -> int | None:  # noqa: ANN001
    value = ds.get(keyword)
    return None if value is None or value == "" else int(value)


def _selectable(ds) -> dict[str, list[str]]:  # noqa: ANN001
    """The DA, CS and AS elements of a dataset, values stripped: what criteria can select on."""
    out = {}
    for elem in ds:
        if elem.VR not in ("DA", "CS", "AS") or elem.tag.is_private or dictionary_VR(elem.tag) != elem.VR:
            continue
        values = list(elem.value) if elem.VM > 1 else ([elem.value] if elem.VM else [])
        out[f"{int(elem.tag):08X}"] = [str(v).strip() for v in values if str(v).strip()]
    return out


def _expected_row(path: str, root: str, inst: dict, run: dict, status: str) -> dict:
    """Every catalogue column of one written object, from the object and the delivery's own record."""
    with open(path, "rb") as fh:
        data = fh.read()
    ds = dcmread(path)
    study = datetime.strptime(ds.StudyDate, "%Y%m%d").date() if ds.get("StudyDate") else None
    return {
        "sop_instance_uid": ds.SOPInstanceUID, "sop_class_uid": ds.SOPClassUID,
        "study_instance_uid": _text(ds, "StudyInstanceUID"), "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "patient_id": _text(ds, "PatientID"), "modality": _text(ds, "Modality"), "study_date": study,
        "study_year": study.year if study else None, "series_number": _int(ds, "SeriesNumber"),
        "instance_number": _int(ds, "InstanceNumber"), "body_part_examined": _text(ds, "BodyPartExamined"),
        "manufacturer": _text(ds, "Manufacturer"), "rows": ds.Rows, "columns": ds.Columns,
        "number_of_frames": _int(ds, "NumberOfFrames") or 1, "bits_allocated": ds.BitsAllocated,
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID), "output_uri": path, "output_bytes": len(data),
        "output_checksum": "sha256:" + hashlib.sha256(data).hexdigest(), "run_id": run["run_id"],
        "header_archive": os.path.join(root, inst["header"][0]), "pixel_archive": os.path.join(root, inst["pixels"][0]),
        "status": status, "recorded_at": None,  # checked apart: a time within the run
        "patient_name": _text(ds, "PatientName"), "accession_number": _text(ds, "AccessionNumber"),
        "study_description": _text(ds, "StudyDescription"), "series_description": _text(ds, "SeriesDescription"),
        "criteria_values": _selectable(ds),
    }


def test_every_column_of_every_row_is_what_the_written_object_says(first_run) -> None:  # noqa: ANN001
    root, expected, base, summary = first_run
    rows = _view_rows(os.path.join(base, "ledger_catalog"))
    written = {uid: inst for uid, inst in expected["instances"].items() if inst["status"] == "written"}
    assert summary["status_counts"].get("written") == len(written) > 20
    assert set(rows) == set(written), "one row per written object, and no other"
    columns_checked = set()
    for uid, inst in written.items():
        want = _expected_row(os.path.join(base, "dcm", f"{uid}.dcm"), root, inst, summary, "written")
        got = rows[uid]
        assert set(want) == set(catalog.CATALOG_NAMES) == set(got)
        recorded = got["recorded_at"].astimezone(timezone.utc)
        assert summary["started_at"] <= recorded <= summary["finished_at"]
        for name, value in want.items():
            if name != "recorded_at":
                assert got[name] == value, (uid, name, got[name], value)
                columns_checked.add(name)
    # The sample is varied enough that no column is only ever null (a column never filled would pass as None).
    filled = {n for r in rows.values() for n, v in r.items() if v not in (None, {}, [])}
    assert filled >= set(catalog.CATALOG_NAMES) - {"body_part_examined", "accession_number", "study_description",
                                                   "series_description", "series_number", "manufacturer"}, \
        set(catalog.CATALOG_NAMES) - filled
    assert columns_checked == set(catalog.CATALOG_NAMES) - {"recorded_at"}


def test_the_catalogue_is_partitioned_by_modality_and_study_year_in_the_intakes_layout(first_run) -> None:  # noqa: ANN001
    _, expected, base, _ = first_run
    files = catalog.list_catalog_files(os.path.join(base, "ledger_catalog"))
    written = [i for i in expected["instances"].values() if i["status"] == "written"]
    assert {f.partition for f in files} == {(i["modality"], int(i["study_date"][:4])) for i in written}
    spark_file = pq.read_schema(files[0].uri)
    assert spark_file.remove_metadata().equals(catalog.arrow_schema(with_partitions=False)), \
        "Spark's files must have the schema pyarrow's (the intake's) have"


def test_a_rerun_updates_rows_in_place_and_leaves_one_row_per_instance_in_the_files(spark, first_run, tmp_path) -> None:  # noqa: ANN001
    _, expected, base, first = first_run
    # A copy of the run's outputs, so the other tests keep the first run's state.
    for name in ("dcm", "ledger", "ledger_catalog"):
        shutil.copytree(os.path.join(base, name), os.path.join(tmp_path, name))
    os.symlink(os.path.join(base, "manifest"), os.path.join(tmp_path, "manifest"))
    second = _run(spark, str(tmp_path))
    uri = os.path.join(tmp_path, "ledger_catalog")
    rows = _view_rows(uri)
    in_files = _file_rows(uri)
    assert second["status_counts"] == {"skipped_existing": len(rows)}
    assert len(in_files) == len(rows) == len({r["sop_instance_uid"] for r in in_files}), "rows duplicated in the files"
    assert {r["run_id"] for r in rows.values()} == {second["run_id"]} != {first["run_id"]}
    assert {r["status"] for r in rows.values()} == {"skipped_existing"}
    assert second["catalog"]["partitions_compacted"] == len(catalog.list_catalog_files(uri)) > 0


def test_intake_rows_and_reassemble_rows_are_one_table_that_serve_reads(spark, first_run, tmp_path) -> None:  # noqa: ANN001
    from dicom_reassembly.dicomweb.query import CatalogIndex

    _, expected, base, first = first_run
    uri = os.path.join(tmp_path, "catalog")
    shutil.copytree(os.path.join(base, "ledger_catalog"), uri)
    before = _view_rows(uri)
    one = next(iter(before.values()))
    # As the intake appends (pyarrow): a new instance in a partition Spark wrote, and a newer row of an old one.
    received = {**one, "sop_instance_uid": "2.25.1", "run_id": "intake", "status": "received",
                "recorded_at": datetime.now(timezone.utc)}
    newer = {**one, "run_id": "intake", "status": "received", "recorded_at": datetime.now(timezone.utc)}
    catalog.write_catalog_rows(uri, [received, newer])
    index = CatalogIndex(uri)
    found = index.search("instance", {}, None, 10000, 0)
    assert len(found) == len(before) + 1
    assert index.instance(one["study_instance_uid"], one["series_instance_uid"], one["sop_instance_uid"])["status"] == "received"
    # A reassemble write of an instance of that partition compacts it: the intake's other rows survive, and the
    # instance's older rows (the first run's and the intake's) leave the files.
    again = {**one, "run_id": "r2", "status": "skipped_existing", "recorded_at": datetime.now(timezone.utc)}
    counts = write_catalog(spark, spark.createDataFrame([tuple(again[n] for n in catalog.CATALOG_NAMES)],
                                                        catalog.spark_schema()), uri)
    in_files = sorted((r["sop_instance_uid"], r["run_id"]) for r in _file_rows(uri))
    assert counts["partitions_compacted"] == 1
    assert ("2.25.1", "intake") in in_files
    assert [r for r in in_files if r[0] == one["sop_instance_uid"]] == [(one["sop_instance_uid"], "r2")]
    assert len(in_files) == len(before) + 1 == len(set(in_files))
    assert _view_rows(uri)[one["sop_instance_uid"]]["run_id"] == "r2"


def test_spark_reads_the_same_current_rows_and_series_as_duckdb(spark, first_run) -> None:  # noqa: ANN001
    _, _, base, _ = first_run
    uri = os.path.join(base, "ledger_catalog")
    got = {r["sop_instance_uid"]: r.asDict() for r in read_catalog(spark, uri).collect()}
    assert got.keys() == _view_rows(uri).keys()
    for uid, row in _view_rows(uri).items():
        assert {k: v for k, v in got[uid].items() if k != "recorded_at"} == \
            {k: v for k, v in row.items() if k != "recorded_at"}
    con = duckdb.connect()
    catalog.create_current_view(con, uri, series="series")
    cur = con.execute("SELECT * FROM series")
    names = [d[0] for d in cur.description]
    duck = sorted((dict(zip(names, r)) for r in cur.fetchall()), key=lambda r: r["series_instance_uid"])
    sparks = sorted((r.asDict() for r in read_series(spark, uri).collect()), key=lambda r: r["series_instance_uid"])
    assert duck == sparks
    assert [n for n, _ in catalog.SERIES_FIELDS] == names
    assert sum(r["instance_count"] for r in duck) == len(_view_rows(uri))
    assert sum(r["total_bytes"] for r in duck) == sum(r["output_bytes"] for r in _view_rows(uri).values())


def _row(uid: str, modality: str, year: int, run_id: str, at: datetime) -> tuple:
    row = catalog.build_catalog_row({"sop_instance_uid": uid, "modality": modality, "study_date": date(year, 5, 1)},
                                    transfer_syntax=None, output_uri=f"/o/{uid}.dcm", output_bytes=1,
                                    output_checksum=None, run_id=run_id, status="written", recorded_at=at)
    return tuple(row[n] for n in catalog.CATALOG_NAMES)


def test_an_instance_that_moved_partition_leaves_no_row_behind(spark, tmp_path) -> None:  # noqa: ANN001
    uri = str(tmp_path / "catalog")
    t0, t1 = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 2, tzinfo=timezone.utc)
    old = [_row("1.1", "CT", 2021, "r1", t0), _row("1.2", "CT", 2021, "r1", t0), _row("1.3", "MR", 2020, "r1", t0)]
    write_catalog(spark, spark.createDataFrame(old, catalog.spark_schema()), uri)
    # 1.1's corrected header dates it 2022: its row moves partition.
    counts = write_catalog(spark, spark.createDataFrame([_row("1.1", "CT", 2022, "r2", t1)], catalog.spark_schema()),
                           uri, anywhere=True)
    in_files = sorted((r["sop_instance_uid"], r["study_year"], r["run_id"]) for r in _file_rows(uri))
    assert in_files == [("1.1", 2022, "r2"), ("1.2", 2021, "r1"), ("1.3", 2020, "r1")]
    assert counts["partitions_compacted"] == 1
    assert {f.partition for f in catalog.list_catalog_files(uri)} == {("CT", 2021), ("CT", 2022), ("MR", 2020)}


def test_only_restricts_a_run_to_a_list_and_says_which_uids_the_manifest_lacks(spark, first_run, tmp_path) -> None:  # noqa: ANN001
    from dicom_reassembly.records.cohort import write_uid_list

    _, expected, base, _ = first_run
    chosen = sorted(uid for uid, i in expected["instances"].items() if i["status"] == "written")[:3]
    listed = str(tmp_path / "cohort.csv")
    write_uid_list(listed, [(uid, None, None, None) for uid in chosen] + [("2.25.999", None, None, None)])
    summary = _run(spark, base, out=str(tmp_path / "dcm"), ledger=str(tmp_path / "ledger"),
                   catalog=str(tmp_path / "ledger_catalog"), only=listed)
    assert summary["status_counts"] == {"written": 3}
    assert summary["unaccounted_members"] == 0
    assert summary["listed_not_in_manifest"] == 1
    assert sorted(f[:-4] for f in os.listdir(tmp_path / "dcm") if f.endswith(".dcm")) == chosen
    assert sorted(_view_rows(str(tmp_path / "ledger_catalog"))) == chosen
    assert "listed UIDs not in the manifest: 1" in ReassembleRun.report(summary)


def test_rows_name_objects_and_archives_by_absolute_location(spark) -> None:  # noqa: ANN001
    """A run given relative local paths still records where things are for readers elsewhere (Athena, stow)."""
    import json

    from dicom_reassembly.reassembly.catalog_rows import with_catalog_rows
    from dicom_reassembly.records.ledger import ledger_row, ledger_schema

    header = {"00080018": {"vr": "UI", "Value": ["1.2"]}, "00080060": {"vr": "CS", "Value": ["MR"]},
              "00080020": {"vr": "DA", "Value": ["20230102"]}}
    plan = spark.createDataFrame([("1.2", "pending", json.dumps(header)), ("1.3", "filtered_out", None)],
                                 "sop_instance_uid string, status string, header_json string")
    ledger = spark.createDataFrame([
        ledger_row("r", "written", sop_instance_uid="1.2", output_uri="out/1.2.dcm", output_bytes=5,
                   header_archive="s3://b/t.tar", pixel_archive="/abs/i.tar", finished_at=datetime.now(timezone.utc)),
        ledger_row("r", "filtered_out", sop_instance_uid="1.3", header_archive="t.tar"),
    ], ledger_schema())
    (row,) = ledger.transform(with_catalog_rows(plan, "/base/")).collect()
    assert (row["output_uri"], row["header_archive"], row["pixel_archive"]) == ("/base/out/1.2.dcm", "s3://b/t.tar",
                                                                                "/abs/i.tar")
    assert (row["modality"], row["study_date"], row["study_year"], row["criteria_values"]) == \
        ("MR", date(2023, 1, 2), 2023, {"00080060": ["MR"], "00080020": ["20230102"]})


def test_a_uid_list_with_a_bom_keeps_its_first_uid(spark, tmp_path) -> None:  # noqa: ANN001
    from dicom_reassembly.records.cohort import read_uid_list_df

    listed = tmp_path / "list.csv"
    listed.write_bytes("\ufeffsop_instance_uid,output_uri\n1.2.3,/x/1.dcm\n1.2.4,/x/2.dcm\n".encode())
    got = sorted(r["sop_instance_uid"] for r in read_uid_list_df(spark, str(listed)).collect())
    assert got == ["1.2.3", "1.2.4"]
    plain = tmp_path / "plain.txt"
    plain.write_bytes("\ufeff1.2.5\n1.2.6\n".encode())
    assert sorted(r["sop_instance_uid"] for r in read_uid_list_df(spark, str(plain)).collect()) == ["1.2.5", "1.2.6"]
