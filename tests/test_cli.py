"""The dicom-reassembly command as a user runs it: a subprocess, its exit code and its one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import dcmftest_ok, permissions_enforced_in_child
from pydicom import dcmread
from pydicom.data import get_testdata_file

CLI = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")


def run(*args: str, cwd: str | None = None, preexec_fn=None) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=dict(os.environ),
                          preexec_fn=preexec_fn)


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


def test_uid_scan_goes_on_past_unreadable_archives_and_says_why_it_found_nothing(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    import shutil

    root, expected = sample_delivery
    uid, inst = _first(expected, payload="j2k")
    text, images = tmp_path / "text", tmp_path / "images"
    shutil.copytree(os.path.join(root, "text"), text)
    shutil.copytree(os.path.join(root, "images"), images)
    # Listed first, ahead of the archives that hold the instance: they must not end the scan.
    os.symlink(tmp_path / "gone.tar", text / "0-broken.tar")
    os.symlink(tmp_path / "gone.tar", images / "0-broken.tar")
    out = tmp_path / "out"
    r = run("uid", uid, "--text", str(text), "--images", str(images), "--out", str(out),
            preexec_fn=permissions_enforced_in_child())
    assert r.returncode == 0, r.stderr
    assert dcmftest_ok(str(out / f"{uid}.dcm"))
    # The archive holding the header may not be read (the process runs without root's override, as CI's root):
    # that is not "no such header", and the broken link is named too.
    os.chmod(text / os.path.basename(inst["header"][0]), 0)
    line = _one_error_line(run("uid", uid, "--text", str(text), "--images", str(images), "--out", str(tmp_path / "no"),
                               preexec_fn=permissions_enforced_in_child()))
    assert line.startswith("error: header_not_found"), line
    assert "2 archives could not be read" in line and "access_denied: permission denied" in line, line
    assert "0-broken.tar: broken_link" in line, line
    assert not (tmp_path / "no").exists()


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


# ---------------------------------------------------------------- uid: the pipeline's decisions on every copy


def _in_process(capsys, *args: str) -> tuple[int, str, list[str]]:  # noqa: ANN001
    """The command in this process (the sweeps below run it dozens of times): exit code, stdout, stderr lines."""
    from dicom_reassembly.cli.main import main

    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out.strip(), [line for line in captured.err.splitlines() if line.strip()]


def _check_like_the_pipeline(root: str, uid: str, inst: dict, members, capsys, tmp_path) -> None:  # noqa: ANN001
    """For one instance of the damaged delivery: the decision is the pipeline's expected status, and the command
    exits and explains it as documented, with the ledger's own reason."""
    from dicom_reassembly.reassembly.instance import outcome, reassemble_members

    case = inst["case"] or uid
    status = inst["status"]
    if inst["reason"] == "invalid_uid":  # refused before any archive is read
        rc, out, err = _in_process(capsys, "uid", uid, *members, "--out", str(tmp_path / case))
        assert rc == 2 and err == [f"error: invalid_uid: {uid!r} is not dot-separated digits without leading zeros"]
        return
    lookup = members_of(uid, members)
    row = outcome(reassemble_members(uid, lookup, str(tmp_path / "library" / case))).row
    assert row is not None and row["status"] == status, (case, row)
    out_dir = tmp_path / case
    rc, out, err = _in_process(capsys, "uid", uid, *members, "--out", str(out_dir))
    errors = [line for line in err if line.startswith("error: ")]
    assert not [line for line in err if not line.startswith(("error: ", "note: "))], err
    if status == "written":
        assert (rc, out, errors) == (0, str(out_dir / f"{uid}.dcm"), []), (case, err)
        assert dcmftest_ok(out)
        for arch, member in inst.get("duplicates", []):  # identical copies: written once, each named in a note
            assert any(line.startswith("note: duplicate:") and f"{os.path.join(root, arch)}:{member}" in line
                       for line in err), err
        return
    assert len(errors) == 1 and not (out_dir / f"{uid}.dcm").exists(), (case, err)
    line = errors[0]
    if status == "conflict":
        where = [f"{os.path.join(root, a)}:{m}" for a, m in inst["conflicts"]]
        assert rc == 3 and line == f"error: conflict: {row['reason']}" and all(w in line for w in where), line
    elif status == "orphan_header":
        assert rc == 2 and line.startswith(f"error: pixels_not_found: no pixel member for {uid}")
    elif status == "orphan_pixels":
        assert rc == 2 and line.startswith(f"error: header_not_found: no header member for {uid}")
    else:  # invalid_header, invalid_pixels, unreadable_archive: the ledger's reason, code first
        assert rc == 2 and line.startswith(f"error: {row['reason']} ("), (status, line)


def members_of(uid: str, members: list[str]):  # noqa: ANN201
    from dicom_reassembly.manifest.lookup import manifest_members, scan_members

    if members[0] == "--manifest":
        return manifest_members(uid, members[1])
    return scan_members(uid, members[1], members[3])


def test_uid_decides_every_damaged_case_as_the_pipeline_does(damaged_delivery, tmp_path, capsys) -> None:  # noqa: ANN001
    """The regression: with two different headers for one UID, uid wrote the first and exited 0."""
    root, expected = damaged_delivery
    cases = {i["case"] for i in expected["instances"].values()}
    assert {"conflict-header", "conflict-pixels", "duplicate-header", "duplicate-pixels"} <= cases
    members = ["--text", os.path.join(root, "text"), "--images", os.path.join(root, "images")]
    for uid, inst in sorted(expected["instances"].items()):
        _check_like_the_pipeline(root, uid, inst, members, capsys, tmp_path)


def test_uid_from_the_manifest_decides_as_the_pipeline_does(spark, damaged_delivery, tmp_path, capsys) -> None:  # noqa: ANN001
    from helpers import build_manifest

    root, expected = damaged_delivery
    manifest = str(tmp_path / "manifest")
    build_manifest(spark, os.path.join(root, "text"), os.path.join(root, "images"), manifest)
    for uid, inst in sorted(expected["instances"].items()):
        _check_like_the_pipeline(root, uid, inst, ["--manifest", manifest], capsys, tmp_path)


def test_uid_conflicting_headers_exit_3_in_one_line_naming_both(damaged_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = damaged_delivery
    uid, inst = _first(expected, case="conflict-header")
    r = run("uid", uid, "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"),
            "--out", str(tmp_path))
    assert r.returncode == 3 and r.stdout == ""
    line = _one_error_line(r)
    assert line.startswith("error: conflict: headers differ: ")
    for arch, member in inst["conflicts"]:
        assert f"{os.path.join(root, arch)}:{member}" in line
    assert not list(tmp_path.iterdir())


def test_uid_never_writes_over_another_object(sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    uid, _ = _first(expected, payload="native")
    other, _ = _first(expected, payload="j2k")
    args = ["--text", os.path.join(root, "text"), "--images", os.path.join(root, "images")]
    target = tmp_path / "a" / f"{uid}.dcm"
    assert run("uid", uid, *args, "--out", str(tmp_path / "a")).returncode == 0
    written = target.read_bytes()

    again = run("uid", uid, *args, "--out", str(tmp_path / "a"))  # the same object: fine
    assert (again.returncode, again.stdout.strip()) == (0, str(target))
    assert again.stderr.strip() == f"note: skipped_existing: {target} already holds this object"

    assert run("uid", other, *args, "--out", str(tmp_path / "b")).returncode == 0
    target.write_bytes((tmp_path / "b" / f"{other}.dcm").read_bytes())  # another instance's object at our key
    for flags in ([], ["--replace"]):
        r = run("uid", uid, *args, "--out", str(tmp_path / "a"), *flags)
        assert r.returncode == 3
        assert _one_error_line(r) == f"error: conflict: {target} already holds SOP Instance UID {other}; not replaced by {uid}"
    assert target.read_bytes() == (tmp_path / "b" / f"{other}.dcm").read_bytes()

    target.write_bytes(written[:-2] + bytes(b ^ 0xFF for b in written[-2:]))  # an earlier rendition of it
    r = run("uid", uid, *args, "--out", str(tmp_path / "a"))
    assert r.returncode == 3 and "holds a different object of" in _one_error_line(r)
    r = run("uid", uid, *args, "--out", str(tmp_path / "a"), "--replace")
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == written


def test_uid_help_documents_the_exit_codes() -> None:
    r = run("uid", "--help")
    assert r.returncode == 0
    for code in ("0  written", "1  storage failed", "2  bad input", "3  conflict"):
        assert code in r.stdout


# ---------------------------------------------------------------- pair: one loose header and pixel file


def _loose_pair(root: str, inst: dict, folder, header_name: str = "header.json", pixels_name: str = "pixels.bin"):  # noqa: ANN001, ANN201
    from helpers import read_tar_member

    folder.mkdir(parents=True, exist_ok=True)
    header, pixels = folder / header_name, folder / pixels_name
    header.write_bytes(read_tar_member(os.path.join(root, inst["header"][0]), inst["header"][1]))
    pixels.write_bytes(read_tar_member(os.path.join(root, inst["pixels"][0]), inst["pixels"][1]))
    return header, pixels


@pytest.mark.parametrize("payload", ["native", "j2k", "multiframe-j2k"])
def test_pair_writes_the_headers_uid_whatever_the_files_are_called(sample_delivery, tmp_path, payload) -> None:  # noqa: ANN001
    root, expected = sample_delivery
    uid, inst = _first(expected, payload=payload)
    header, pixels = _loose_pair(root, inst, tmp_path / "in", "1.2.3.json", "9.9.9.j2c")  # stems that are not its UID
    r = run("pair", str(header), str(pixels), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    path = tmp_path / "out" / f"{uid}.dcm"
    assert r.stdout.strip() == str(path) and r.stderr == ""
    assert dcmftest_ok(str(path))
    source = dcmread(get_testdata_file(inst["source"], download=False))
    np.testing.assert_array_equal(dcmread(path).pixel_array, source.pixel_array)
    # The same bytes as the pipeline's rules give through uid.
    assert run("uid", uid, "--text", os.path.join(root, "text"), "--images", os.path.join(root, "images"),
               "--out", str(tmp_path / "uid")).returncode == 0
    assert path.read_bytes() == (tmp_path / "uid" / f"{uid}.dcm").read_bytes()


def test_pair_refuses_bad_input_in_one_line(damaged_delivery, sample_delivery, tmp_path) -> None:  # noqa: ANN001
    root, expected = damaged_delivery
    _, inst = _first(expected, case="short-native")
    header, pixels = _loose_pair(root, inst, tmp_path / "short")
    r = run("pair", str(header), str(pixels), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and _one_error_line(r).startswith("error: native_length_mismatch: ")
    _, inst = _first(expected, case="malformed-json")
    header, pixels = _loose_pair(root, inst, tmp_path / "malformed")
    r = run("pair", str(header), str(pixels), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and _one_error_line(r).startswith("error: malformed_json: ")
    r = run("pair", str(header), str(tmp_path / "absent.j2c"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and _one_error_line(r).startswith("error: not_found: no such pixel file")
    assert not (tmp_path / "out").exists()

    root, expected = sample_delivery
    uid, inst = _first(expected, payload="native")
    header, pixels = _loose_pair(root, inst, tmp_path / "good")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"{uid}.dcm").write_bytes(b"someone else's file")
    r = run("pair", str(header), str(pixels), "--out", str(tmp_path / "out"))
    assert r.returncode == 3
    assert _one_error_line(r) == (f"error: conflict: {tmp_path / 'out' / (uid + '.dcm')} already holds an object "
                                  f"whose SOP Instance UID cannot be read; not replaced by {uid}")

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
