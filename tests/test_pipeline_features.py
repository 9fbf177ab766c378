"""Selection before reading, per-series computations, STOW-RS to a real Orthanc and PostgreSQL tables, in-process."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import requests
from helpers import build_manifest
from pydicom import dcmread
from test_pipeline import _build_manifest, _ledger, _run

from dicom_reassembly.config import Config
from dicom_reassembly.selection.spec import load_criteria
from dicom_reassembly.stow.settings import StowSettings

pytest_plugins = ["orthanc_fixture", "postgres_fixture"]
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def indexed(spark, sample_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    """A private copy of the sample delivery and its manifest (tests may damage the copy)."""
    root, expected = sample_delivery
    copy = str(tmp_path_factory.mktemp("features") / "delivery")
    shutil.copytree(root, copy)
    base = str(tmp_path_factory.mktemp("features-run"))
    _build_manifest(spark, copy, os.path.join(base, "manifest"))
    return copy, base, expected


def _image_archive_of(expected: dict, uid: str) -> str:
    return expected["instances"][uid]["pixels"][0]


def test_selection_runs_before_any_pixel_archive_is_read(spark, indexed, tmp_path) -> None:  # noqa: ANN001
    root, base, expected = indexed
    # Keep one modality; every image archive holding none of it is deleted: opening one would fail the run.
    by_modality: dict[str, set[str]] = {}
    for uid, inst in expected["instances"].items():
        by_modality.setdefault(inst["modality"], set()).add(uid)
    archives_of = {m: {_image_archive_of(expected, u) for u in uids} for m, uids in by_modality.items()}
    all_archives = set().union(*archives_of.values())
    modality = next((m for m, a in sorted(archives_of.items()) if a != all_archives), None)
    assert modality, "the sample should spread modalities over image archives"
    keep = by_modality[modality]
    crit = tmp_path / "criteria.json"
    crit.write_text(json.dumps([{"dicom_tag": ["0008", "0060"], "operation": "IN", "reference": [modality]}]))
    victims = all_archives - archives_of[modality]
    moved = {}
    for rel in victims:
        moved[rel] = os.path.join(root, rel) + ".away"
        os.rename(os.path.join(root, rel), moved[rel])
    try:
        out = str(tmp_path / "dcm")
        summary = _run(spark, base, out, spec=load_criteria(str(crit)))
    finally:
        for rel, path in moved.items():
            os.rename(path, os.path.join(root, rel))
    rows = _ledger(spark, base, summary["run_id"])
    written = {r["sop_instance_uid"] for r in rows if r["status"] == "written"}
    assert written == keep
    filtered = [r for r in rows if r["status"] == "filtered_out"]
    assert {r["sop_instance_uid"] for r in filtered} == set(expected["instances"]) - keep
    for r in filtered:
        actual = expected["instances"][r["sop_instance_uid"]]["modality"]
        assert r["reason"] == f"(0008,0060) Modality {actual} not IN [{modality}]"
    assert summary["archives_skipped"] == len(victims)
    sizes = sum(os.path.getsize(os.path.join(root, rel)) for rel in victims)
    assert summary["bytes_skipped"] == sizes
    assert summary["unaccounted_members"] == 0


def test_runs_table_records_the_run_without_secrets(spark, indexed, tmp_path) -> None:  # noqa: ANN001
    root, base, expected = indexed
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    crit = tmp_path / "criteria.json"
    crit.write_text(json.dumps({
        "input_s3_parameters": {"endpoint": os.environ["AWS_ENDPOINT_URL"], "bucket": "unused",
                                "credentials": f"AKIAEXAMPLE:{secret}", "region": "us-east-1"},
        "criteria": [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": "1900-01-01"}]}))
    spec = load_criteria(str(crit))
    summary = _run(spark, base, str(tmp_path / "dcm"), spec=spec)
    runs = [r.asDict() for r in spark.read.parquet(os.path.join(base, "runs")).collect()]
    mine = [r for r in runs if r["run_id"] == summary["run_id"]]
    assert len(mine) == 1
    row = mine[0]
    assert row["criteria_sha256"] == spec.sha256()
    assert json.loads(row["status_counts"]) == summary["status_counts"]
    assert "GREATER" in row["criteria_json"]
    blob = json.dumps(runs, default=str) + json.dumps(_ledger(spark, base, summary["run_id"]), default=str)
    assert secret not in blob
    assert all(secret not in v for _, v in spark.sparkContext.getConf().getAll())


def test_series_summaries_are_computed_for_selected_series_and_recorded(spark, indexed, tmp_path) -> None:  # noqa: ANN001
    root, base, expected = indexed
    out = str(tmp_path / "dcm")
    summary = _run(spark, base, out, cfg=Config(upload_threads=2, computations=("series_summary",)))
    series = {i["series_instance_uid"] for i in expected["instances"].values()}
    assert summary["computations"] == {"done": len(series)}
    table = [r.asDict() for r in spark.read.parquet(os.path.join(base, "computations")).collect()
             if r["run_id"] == summary["run_id"]]
    assert {r["series_instance_uid"] for r in table} == series
    for r in table:
        assert r["computation"] == "series_summary" and r["status"] == "done"
        with open(r["output_uri"]) as f:
            doc = json.load(f)
        n = sum(1 for i in expected["instances"].values() if i["series_instance_uid"] == r["series_instance_uid"])
        assert doc["instances"] == n
        folder = os.path.dirname(r["output_uri"])
        pngs = [f for f in os.listdir(folder) if f.endswith(".png")]
        assert pngs
        with open(os.path.join(folder, pngs[0]), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _qido_instances(root: str) -> set[str]:
    r = requests.get(f"{root}/instances", headers={"Accept": "application/dicom+json"}, timeout=30)
    r.raise_for_status()
    return {i["00080018"]["Value"][0] for i in r.json()} if r.text.strip() else set()


def test_stow_forwards_every_instance_to_orthanc(spark, indexed, orthanc_running, tmp_path) -> None:  # noqa: ANN001
    root, base, expected = indexed
    orthanc = orthanc_running
    stow = StowSettings(orthanc.dicomweb_root, batch_count=4, max_retries=1, backoff_base=0.1)
    summary = _run(spark, base, None, stow=stow, cfg=Config(upload_threads=2, computations=()))
    rows = [r for r in _ledger(spark, base, summary["run_id"]) if r["status"] == "written"]
    assert {r["sop_instance_uid"] for r in rows} == set(expected["instances"])
    assert {r["stow_status"] for r in rows} == {"sent"}
    assert all(r["output_uri"] is None for r in rows)
    assert set(expected["instances"]) <= _qido_instances(orthanc.dicomweb_root)
    # WADO-RS gives back the very pixel data the pipeline built.
    uid = sorted(expected["instances"])[0]
    inst = expected["instances"][uid]
    url = (f"{orthanc.dicomweb_root}/studies/{inst['study_instance_uid']}/series/{inst['series_instance_uid']}"
           f"/instances/{uid}")
    r = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}, timeout=30)
    r.raise_for_status()
    body = r.content
    start = body.index(b"DICM") - 128
    from io import BytesIO

    served = dcmread(BytesIO(body[start:]))
    local = str(tmp_path / "one")
    from dicom_reassembly.cli.main import main

    assert main(["uid", uid, "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"), "--out", local]) == 0
    assert served.PixelData == dcmread(os.path.join(local, f"{uid}.dcm")).PixelData


def test_orthanc_stopped_mid_run_then_stow_only_failed_completes(spark, indexed, orthanc_running, tmp_path) -> None:  # noqa: ANN001
    import threading
    import time

    from dicom_reassembly.cli.main import main

    root, base, expected = indexed
    orthanc = orthanc_running
    stopped = threading.Event()

    def stop_after_first_batch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if len(_qido_instances(orthanc.dicomweb_root) - before) >= 2:
                orthanc.stop()
                stopped.set()
                return
            time.sleep(0.05)

    for uid in expected["instances"]:  # earlier tests stored these: start without them
        oid = _orthanc_id(orthanc, uid)
        if oid:
            requests.delete(f"{orthanc.base_url}/instances/{oid}", timeout=10).raise_for_status()
    before = _qido_instances(orthanc.dicomweb_root)
    watcher = threading.Thread(target=stop_after_first_batch, daemon=True)
    watcher.start()
    out = str(tmp_path / "dcm")
    # Throttled writes and small batches, so the stop lands between batches.
    stow = StowSettings(orthanc.dicomweb_root, batch_count=2, max_retries=1, backoff_base=0.05, timeout=(2, 5))
    summary = _run(spark, base, out, stow=stow, cfg=Config(upload_threads=1, put_rate=4, computations=(),
                                                            reassemble_partitions=1))
    watcher.join(timeout=5)
    assert stopped.is_set(), "Orthanc should have been stopped mid-run"
    rows = [r for r in _ledger(spark, base, summary["run_id"]) if r["status"] == "written"]
    by_status = {s: {r["sop_instance_uid"] for r in rows if r["stow_status"] == s} for s in ("sent", "failed")}
    assert by_status["sent"] and by_status["failed"], by_status
    assert all(r["stow_reason"] for r in rows if r["stow_status"] == "failed")
    orthanc.start()
    ledger = os.path.join(base, "ledger", f"run_id={summary['run_id']}")
    assert main(["stow", "--url", orthanc.dicomweb_root, "--only-failed", ledger]) == 0
    assert set(expected["instances"]) <= _qido_instances(orthanc.dicomweb_root)


def _orthanc_id(orthanc, uid: str) -> str | None:  # noqa: ANN001
    r = requests.post(f"{orthanc.base_url}/tools/lookup", data=uid, timeout=10)
    hits = [h["ID"] for h in r.json() if h.get("Type") == "Instance"] if r.ok else []
    return hits[0] if hits else None


def test_tables_also_go_to_postgresql(spark, indexed, postgres, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from dicom_reassembly.records.tables import JdbcTarget

    root, base, expected = indexed
    monkeypatch.setenv("DICOM_REASSEMBLY_JDBC_USER", postgres.user)
    monkeypatch.setenv("DICOM_REASSEMBLY_JDBC_PASSWORD", postgres.password)
    summary = _run(spark, base, str(tmp_path / "dcm"), jdbc=JdbcTarget.from_env(postgres.jdbc_url),
                   cfg=Config(upload_threads=2, computations=("series_summary",)))
    run_id = summary["run_id"]
    counts = dict(postgres.query(f"select status, count(*) from ledger where run_id = '{run_id}' group by status"))
    assert {k: int(v) for k, v in counts.items()} == summary["status_counts"]
    assert postgres.query(f"select count(*) from runs where run_id = '{run_id}'") == [("1",)]
    series = {i["series_instance_uid"] for i in expected["instances"].values()}
    done = postgres.query(f"select count(*) from computations where run_id = '{run_id}' and status = 'done'")
    assert done == [(str(len(series)),)]
    assert all(postgres.password not in v for _, v in spark.sparkContext.getConf().getAll())


def test_glacier_archives_are_not_restored_then_picked_up_after_restore(spark, s3, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    s3.create_bucket(Bucket="glacier-delivery")
    for sub in ("text", "images"):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            with open(os.path.join(root, sub, name), "rb") as f:
                s3.put_object(Bucket="glacier-delivery", Key=f"{sub}/{name}", Body=f.read(),
                              StorageClass="GLACIER" if sub == "images" else "STANDARD")
    base = str(tmp_path)
    text, images = "s3://glacier-delivery/text", "s3://glacier-delivery/images"

    def build() -> None:
        build_manifest(spark, text, images, os.path.join(base, "manifest"))

    build()
    out = str(tmp_path / "dcm")
    first = _run(spark, base, out, cfg=Config(upload_threads=2, computations=()))
    assert set(first["status_counts"]) == {"not_restored"}
    assert first["unaccounted_members"] == 0
    rows = _ledger(spark, base, first["run_id"])
    assert {r["sop_instance_uid"] for r in rows if r["header_member"]} == set(expected["instances"])
    assert len([r for r in rows if r["pixel_archive"] and not r["pixel_member"]]) == len(os.listdir(os.path.join(root, "images")))
    for name in os.listdir(os.path.join(root, "images")):
        s3.restore_object(Bucket="glacier-delivery", Key=f"images/{name}", RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}})
    build()  # the not_restored archives are indexed again; the text archives are not
    second = _run(spark, base, out, cfg=Config(upload_threads=2, computations=()))
    assert second["status_counts"] == {"written": len(expected["instances"])}
