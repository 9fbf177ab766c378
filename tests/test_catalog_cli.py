"""``query``, ``cohort`` and ``stats``, and the cohort list in ``uid --from-list``, ``stow --only`` and
``reassemble --only``: the commands as a user runs them, on a catalogue of the sample delivery.

Expected values come from the delivery's own record (expected.json) and the objects, never from the catalogue.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter

import pydicom
import pytest
import requests
from helpers import ROOT

from dicom_reassembly.cli.main import main
from dicom_reassembly.records import catalog
from dicom_reassembly.records.cohort import read_uid_list

pytest_plugins = ["orthanc_fixture"]
CRITERIA = os.path.join(ROOT, "conf", "criteria-example.json")


@pytest.fixture(scope="module")
def sample_catalog(sample_delivery, tmp_path_factory):  # noqa: ANN001, ANN201
    """A catalogue of the sample delivery, its objects the delivery's reference files (rows as the intake writes)."""
    root, expected = sample_delivery
    uri = str(tmp_path_factory.mktemp("cli") / "ledger_catalog")
    rows = []
    for inst in expected["instances"].values():
        archive, member = inst["header"]
        with tarfile.open(os.path.join(root, archive)) as tf:
            header = json.loads(tf.extractfile(member).read())
        path = os.path.join(root, inst["reference"])
        rows.append(catalog.build_catalog_row(catalog.attributes_from_json(header), transfer_syntax=inst["transfer_syntax"],
                                              output_uri=path, output_bytes=os.path.getsize(path), output_checksum=None,
                                              run_id="r1", status="written"))
    catalog.write_catalog_rows(uri, rows)
    return root, expected, uri


def _run(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_query_prints_a_table_and_csv_of_catalog_and_series(sample_catalog, capsys) -> None:  # noqa: ANN001
    _, expected, uri = sample_catalog
    sql = "SELECT modality, count(*) AS n FROM catalog GROUP BY modality ORDER BY modality"
    code, out, _ = _run(capsys, "query", "--catalog", uri, sql)
    want = sorted(Counter(i["modality"] for i in expected["instances"].values()).items())
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["modality", "n"] and set(lines[1]) <= {"-", " "}
    assert [tuple(ln.split()) for ln in lines[2:]] == [(m, str(n)) for m, n in want]
    code, out, _ = _run(capsys, "query", "--catalog", uri, "--csv", sql)
    assert list(csv.reader(io.StringIO(out))) == [["modality", "n"], *[[m, str(n)] for m, n in want]]
    code, out, _ = _run(capsys, "query", "--catalog", uri, "--csv",
                        "SELECT sum(instance_count), sum(slice_count), count(*) FROM series")
    frames = sum(i["frames"] for i in expected["instances"].values())
    series = {i["series_instance_uid"] for i in expected["instances"].values()}
    assert list(csv.reader(io.StringIO(out)))[1] == [str(len(expected["instances"])), str(frames), str(len(series))]


def test_a_bad_query_is_one_line_and_exit_2(sample_catalog, capsys) -> None:  # noqa: ANN001
    _, _, uri = sample_catalog
    code, out, err = _run(capsys, "query", "--catalog", uri, "SELECT no_such_column FROM catalog")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: bad_query:") and "no_such_column" in err


def test_query_on_a_missing_catalogue_is_an_empty_table(tmp_path, capsys) -> None:  # noqa: ANN001
    code, out, _ = _run(capsys, "query", "--catalog", str(tmp_path / "none"), "SELECT count(*) AS n FROM catalog")
    assert code == 0 and out.split() == ["n", "-", "0"]


def _chosen(expected: dict) -> set[str]:
    """conf/criteria-example.json, read off the delivery's record: CT or MR, dated after 2018-01-01."""
    return {uid for uid, i in expected["instances"].items()
            if i["modality"] in ("CT", "MR") and i["study_date"] > "20180101"}


def test_cohort_writes_the_list_the_criteria_select(sample_catalog, tmp_path, capsys) -> None:  # noqa: ANN001
    root, expected, uri = sample_catalog
    out_list = str(tmp_path / "cohort.csv")
    code, out, _ = _run(capsys, "cohort", "--catalog", uri, "--criteria", CRITERIA, "--out", out_list)
    chosen = _chosen(expected)
    assert code == 0 and 0 < len(chosen) < len(expected["instances"])
    with open(out_list, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["sop_instance_uid"] for r in rows} == chosen and len(rows) == len(chosen)
    assert list(rows[0]) == ["sop_instance_uid", "output_uri", "study_instance_uid", "series_instance_uid"]
    for r in rows:
        inst = expected["instances"][r["sop_instance_uid"]]
        assert r["output_uri"] == os.path.join(root, inst["reference"])
        assert (r["study_instance_uid"], r["series_instance_uid"]) == (inst["study_instance_uid"], inst["series_instance_uid"])
    series = {expected["instances"][u]["series_instance_uid"] for u in chosen}
    assert out.strip().startswith(f"{len(chosen)} instance(s) in {len(series)} series")
    # --where narrows it, with SQL over the rollup too
    code, _, _ = _run(capsys, "cohort", "--catalog", uri, "--criteria", CRITERIA, "--where",
                      "modality = 'MR' AND series_instance_uid IN (SELECT series_instance_uid FROM series "
                      "WHERE instance_count >= 1)", "--out", out_list)
    assert {li.uid for li in read_uid_list(out_list)} == {u for u in chosen if expected["instances"][u]["modality"] == "MR"}


def test_cohort_needs_a_selection_and_reports_bad_criteria_in_one_line(sample_catalog, tmp_path, capsys) -> None:  # noqa: ANN001
    _, _, uri = sample_catalog
    code, _, err = _run(capsys, "cohort", "--catalog", uri, "--out", str(tmp_path / "l.csv"))
    assert code == 2 and err.startswith("error: no_selection")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"dicom_tag": "PatientName", "operation": "EQUALS", "reference": "x"}]')
    code, _, err = _run(capsys, "cohort", "--catalog", uri, "--criteria", str(bad), "--out", str(tmp_path / "l.csv"))
    assert code == 2 and err.startswith("error: unsupported_vr") and not os.path.exists(tmp_path / "l.csv")


def test_uid_from_list_writes_each_listed_instance(sample_catalog, tmp_path, capsys) -> None:  # noqa: ANN001
    root, expected, uri = sample_catalog
    out_list = str(tmp_path / "cohort.csv")
    _run(capsys, "cohort", "--catalog", uri, "--criteria", CRITERIA, "--where", "modality = 'MR'", "--out", out_list)
    listed = [li.uid for li in read_uid_list(out_list)]
    assert listed
    code, out, err = _run(capsys, "uid", "--from-list", out_list, "--text", os.path.join(root, "text"),
                          "--images", os.path.join(root, "images"), "--out", str(tmp_path / "dcm"))
    assert code == 0, err
    assert out.split() == [str(tmp_path / "dcm" / f"{u}.dcm") for u in listed]
    for uid in listed:
        assert pydicom.dcmread(tmp_path / "dcm" / f"{uid}.dcm").SOPInstanceUID == uid
    code, _, err = _run(capsys, "uid", listed[0], "--from-list", out_list)
    assert code == 2 and "not both" in err


def test_a_bad_list_is_refused_naming_its_line(tmp_path, capsys) -> None:  # noqa: ANN001
    bad = tmp_path / "list.txt"
    bad.write_text("2.25.1\n2.25.x\n")
    code, _, err = _run(capsys, "uid", "--from-list", str(bad))
    assert code == 2 and err.strip() == f"error: bad_uid_list: line 2: '2.25.x' is not dot-separated digits without " \
                                        f"leading zeros ({bad})"


def test_reassemble_only_checks_the_list_before_spark_starts(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "part-0.parquet").write_bytes(b"")
    (tmp_path / "list.txt").write_text("2.25.1\nnot-a-uid\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "reassemble.py"), "--manifest",
                             str(tmp_path / "manifest"), "--ledger", str(tmp_path / "ledger"), "--out",
                             str(tmp_path / "out"), "--only", str(tmp_path / "list.txt")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "bad_uid_list: line 2" in result.stderr and "Traceback" not in result.stderr


def test_stow_only_sends_the_listed_objects(sample_catalog, orthanc_running, tmp_path, capsys,  # noqa: ANN001
                                            monkeypatch) -> None:  # noqa: ANN001
    for name in ("DICOMWEB_TOKEN", "DICOMWEB_USER", "DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    _, expected, uri = sample_catalog
    out_list = str(tmp_path / "cohort.csv")
    _run(capsys, "cohort", "--catalog", uri, "--criteria", CRITERIA, "--where", "modality = 'CT'", "--out", out_list)
    listed = {li.uid for li in read_uid_list(out_list)}
    code, out, err = _run(capsys, "stow", "--only", out_list, "--url", orthanc_running.dicomweb_root)
    assert code == 0, err
    assert f"sent: {len(listed)}" in out
    r = requests.get(f"{orthanc_running.dicomweb_root}/instances", headers={"Accept": "application/dicom+json"},
                     timeout=10)
    assert {item["00080018"]["Value"][0] for item in r.json()} == listed


def test_stats_per_modality_study_and_patient(sample_catalog, tmp_path, capsys) -> None:  # noqa: ANN001
    root, expected, uri = sample_catalog
    out_csv = str(tmp_path / "stats.csv")
    code, out, _ = _run(capsys, "stats", "--catalog", uri, "--csv", out_csv)
    assert code == 0
    with open(out_csv, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    instances = expected["instances"]
    size = {uid: os.path.getsize(os.path.join(root, i["reference"])) for uid, i in instances.items()}
    for level, field in (("modality", "modality"), ("study", "study_instance_uid")):
        mine = {r["key"]: r for r in rows if r["level"] == level}
        keys = {i[field] for i in instances.values()}
        assert set(mine) == keys
        for key in keys:
            members = [uid for uid, i in instances.items() if i[field] == key]
            assert int(mine[key]["instances"]) == len(members)
            assert int(mine[key]["bytes"]) == sum(size[u] for u in members)
            assert int(mine[key]["frames"]) == sum(instances[u]["frames"] for u in members)
    patients = [r for r in rows if r["level"] == "patient"]
    assert sum(int(r["instances"]) for r in patients) == len(instances) and len(patients) >= 1
    printed = out.splitlines()
    assert printed[0].split()[:3] == ["level", "key", "patients"]
    assert len([ln for ln in printed[2:] if ln.startswith("modality")]) == len({i["modality"] for i in instances.values()})
    assert out.strip().endswith(f"(per modality, study and patient): {out_csv}")


def test_stats_to_a_folder_that_does_not_exist_is_one_line_and_exit_2(sample_catalog, tmp_path, capsys) -> None:  # noqa: ANN001
    _, _, uri = sample_catalog
    code, _, err = _run(capsys, "stats", "--catalog", uri, "--csv", str(tmp_path / "no" / "stats.csv"))
    assert code == 2 and err.count("\n") == 1 and "csv_not_writable" in err and "Traceback" not in err
