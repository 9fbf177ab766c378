"""The dicom-reassembly command as a user runs it: a subprocess, its exit code and its one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import dcmftest_ok
from pydicom import dcmread
from pydicom.data import get_testdata_file

CLI = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")


def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=dict(os.environ))


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def _first(expected: dict, **match: str) -> tuple[str, dict]:
    for uid, inst in sorted(expected["instances"].items()):
        if all(inst.get(k) == v for k, v in match.items()):
            return uid, inst
    raise AssertionError(f"no instance with {match}")


@pytest.mark.parametrize("payload", ["native", "j2k", "jp2", "multiframe-j2k"])
def test_uid_writes_a_valid_object_by_scanning(sample_delivery, tmp_path, payload) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    uid, inst = _first(expected, payload=payload)
    r = run("uid", uid, "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    path = tmp_path / f"{uid}.dcm"
    assert r.stdout.strip() == str(path)
    assert dcmftest_ok(str(path))
    source = dcmread(get_testdata_file(inst["source"], download=False))
    np.testing.assert_array_equal(dcmread(path).pixel_array, source.pixel_array)


def test_uid_defaults_are_data_text_data_images_and_the_current_directory(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    os.symlink(root, tmp_path / "data")
    uid, _ = _first(expected, payload="native")
    r = run("uid", uid, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert dcmftest_ok(str(tmp_path / f"{uid}.dcm"))


def test_uid_reads_and_writes_s3(s3, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    s3.create_bucket(Bucket="cli-in")
    s3.create_bucket(Bucket="cli-out")
    for sub in ("text", "images"):
        for name in os.listdir(os.path.join(root, sub)):
            s3.upload_file(os.path.join(root, sub, name), "cli-in", f"p/{sub}/{name}")
    uid, _ = _first(expected, payload="j2k")
    r = run("uid", uid, "--text", "s3://cli-in/p/text", "--images", "s3://cli-in/p/images", "--out", "s3://cli-out/x")
    assert r.returncode == 0, r.stderr
    s3.download_file("cli-out", f"x/{uid}.dcm", str(tmp_path / "o.dcm"))
    assert dcmftest_ok(str(tmp_path / "o.dcm"))


def test_uid_says_which_half_is_missing(damaged_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = damaged_delivery
    text, images = os.path.join(root, "text"), os.path.join(root, "images")
    orphan_header = next(u for u, i in expected["instances"].items() if i.get("case") == "orphan-header")
    orphan_pixels = next(u for u, i in expected["instances"].items() if i.get("case") == "orphan-pixels")
    line = _one_error_line(run("uid", orphan_header, "--text", text, "--images", images, "--out", str(tmp_path)))
    assert line.startswith("error: pixels_not_found")
    line = _one_error_line(run("uid", orphan_pixels, "--text", text, "--images", images, "--out", str(tmp_path)))
    assert line.startswith("error: header_not_found")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case,reason", [("malformed-json", "malformed_json"), ("short-native", "native_length_mismatch"),
                                         ("bulkdata-external", "unresolved_bulkdata")])
def test_uid_explains_invalid_input_in_one_line(damaged_delivery, tmp_path, case, reason) -> None:  # noqa: ANN001
    root, expected = damaged_delivery
    uid = next(u for u, i in expected["instances"].items() if i.get("case") == case)
    r = run("uid", uid, "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"), "--out", str(tmp_path))
    assert _one_error_line(r).startswith(f"error: {reason}")


def test_uid_rejects_a_malformed_uid(tmp_path) -> None:  # noqa: ANN001
    line = _one_error_line(run("uid", "1.2.03", "--out", str(tmp_path)))
    assert "invalid_uid" in line


def test_uid_with_a_missing_folder_is_one_line(tmp_path) -> None:  # noqa: ANN001
    line = _one_error_line(run("uid", "1.2.3", "--text", str(tmp_path / "nope"), "--images", str(tmp_path)))
    assert line.startswith("error: not_found")


def test_inspect_prints_key_tags_and_tags_in_three_notations(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    uid, inst = _first(expected, payload="native")
    assert run("uid", uid, "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"),
               "--out", str(tmp_path)).returncode == 0
    r = run("inspect", str(tmp_path / f"{uid}.dcm"), "00080018", "(0028,0010)", "Columns", "TransferSyntaxUID")
    assert r.returncode == 0, r.stderr
    ds = dcmread(get_testdata_file(inst["source"], download=False))
    lines = r.stdout.splitlines()
    assert lines[0] == f"PatientName: {ds.PatientName}"
    assert lines[1] == f"StudyDate: {inst['study_date']}"
    assert lines[2] == f"Modality: {inst['modality']}"
    assert lines[3] == f"(0008,0018) SOPInstanceUID: {uid}"
    assert lines[4] == f"(0028,0010) Rows: {inst['rows']}"
    assert lines[5] == f"(0028,0011) Columns: {inst['columns']}"
    assert lines[6] == "(0002,0010) TransferSyntaxUID: 1.2.840.10008.1.2.1"


def test_inspect_errors_are_one_line(tmp_path) -> None:  # noqa: ANN001
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    assert _one_error_line(run("inspect", str(junk))).startswith("error: not_dicom")
    assert _one_error_line(run("inspect", str(tmp_path / "absent.dcm"))).startswith("error: not_found")
    good = tmp_path / "g.dcm"
    with open(get_testdata_file("CT_small.dcm", download=False), "rb") as f:
        good.write_bytes(f.read())
    assert _one_error_line(run("inspect", str(good), "NoSuchKeyword")).startswith("error: unknown_tag")


@pytest.mark.parametrize(("content", "says"), [
    (b"This is a log file, not an image.\n" * 10, "not a DICOM Part 10 file: no 'DICM' marker after the 128-byte preamble"),
    (b"", "not a DICOM Part 10 file: an empty file"),
    (None, "a directory, not a .dcm file"),
])
def test_inspect_says_in_its_own_words_why_a_file_is_not_dicom(tmp_path, content, says) -> None:  # noqa: ANN001
    path = tmp_path / "x.dcm"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    line = _one_error_line(run("inspect", str(path)))
    assert line == f"error: not_dicom: {says} ({path})"
