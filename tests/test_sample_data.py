"""The sample-data generator: determinism, layout, payload/reference agreement and the damaged catalogue.

The checks read the written archives with :mod:`tarfile`, the payloads with pylibjpeg-openjpeg and the reference
files with pydicom and dcmtk, so they test what is on disk rather than trusting expected.json.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import tarfile
from collections import Counter
from typing import Any

import numpy as np
import openjpeg
import pydicom
import pytest
from helpers import require_tool

from dicom_reassembly.errors import ConfigError
from dicom_reassembly.testing.instances import JP2_SIGNATURE
from dicom_reassembly.testing.sample_data import main, write_sample_delivery

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
J2K_START = b"\xff\x4f\xff\x51"
J2K_ALLOWED = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}


def _generate(base: str, name: str, damaged: bool) -> tuple[str, dict[str, Any]]:
    root = os.path.join(base, name)
    return root, write_sample_delivery(root, damaged=damaged, copies=2)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return _generate(str(tmp_path_factory.mktemp("sample")), "clean", False)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return _generate(str(tmp_path_factory.mktemp("sample")), "damaged", True)


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def _members(path: str) -> tuple[dict[str, tuple[bytes, bytes]], str | None]:
    """Regular/other members as name -> (type, data) read in stream mode, and the error that stopped reading."""
    out: dict[str, tuple[bytes, bytes]] = {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                data = tar.extractfile(info).read() if info.isfile() else b""
                if info.isfile() and len(data) != info.size:
                    raise tarfile.ReadError("short member")
                out[info.name] = (info.type, data)
    except (tarfile.ReadError, OSError) as exc:
        return out, type(exc).__name__
    return out, None


def _read_member(root: str, where: list[str]) -> bytes:
    members, _ = _members(os.path.join(root, where[0]))
    return members[where[1]][1]


def _value(model: dict[str, Any], tag: str) -> Any:
    return model[tag]["Value"][0]


def _header(root: str, entry: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_read_member(root, entry["header"]))


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("damaged_flag", [False, True])
def test_two_generations_are_byte_identical(tmp_path: Any, damaged_flag: bool) -> None:
    a = _tree(_generate(str(tmp_path), "a", damaged_flag)[0])
    b = _tree(_generate(str(tmp_path), "b", damaged_flag)[0])
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_regenerating_into_a_previous_delivery_is_allowed_but_foreign_dirs_are_refused(tmp_path: Any) -> None:
    root = str(tmp_path / "out")
    assert main([root, "--copies", "1"]) == 0
    before = _tree(root)
    assert main([root, "--copies", "1"]) == 0
    assert _tree(root) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(ConfigError) as exc:
        write_sample_delivery(str(foreign))
    assert exc.value.reason == "output_not_empty"
    assert (foreign / "keep.txt").read_text() == "not ours"
    with pytest.raises(ConfigError):
        write_sample_delivery(str(tmp_path / "x"), copies=0)


def test_pick_prints_written_uids_of_different_modalities_and_writes_nothing(clean, capsys) -> None:  # noqa: ANN001
    root, expected = clean
    before = _tree(root)
    assert main([root, "--pick", "3"]) == 0
    picked = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert len(picked) == 3
    assert all(expected["instances"][uid]["status"] == "written" for uid in picked)
    assert len({expected["instances"][uid]["modality"] for uid in picked}) == 3
    assert _tree(root) == before
    assert main([root, "--pick", "1"]) == 0
    assert capsys.readouterr().out.split()[0] == picked[0]


def test_pick_without_a_delivery_and_a_foreign_folder_each_say_so_in_one_line(tmp_path, capsys) -> None:  # noqa: ANN001
    assert main([str(tmp_path / "none"), "--pick", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no_sample_delivery:")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "text").mkdir()
    assert main([str(tmp_path / "theirs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output_not_empty:") and "--overwrite" in err[0]
    assert (tmp_path / "theirs" / "text").is_dir()


# ---------------------------------------------------------------- clean delivery


def test_clean_covers_the_required_kinds(clean: tuple[str, dict[str, Any]]) -> None:
    _, expected = clean
    entries = list(expected["instances"].values())
    assert all(e["status"] == "written" for e in entries)
    payloads = Counter(e["payload"] for e in entries)
    assert set(payloads) == {"native", "j2k", "jp2", "multiframe-j2k"}
    sources = {e["source"] for e in entries}
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "693_J2KI.dcm",
            "SC_rgb_small_odd.dcm", "examples_jpeg2k.dcm", "rtdose.dcm"} <= sources
    ts = Counter(e["transfer_syntax"] for e in entries)
    assert ts["1.2.840.10008.1.2.4.90"] and ts["1.2.840.10008.1.2.4.91"] and ts["1.2.840.10008.1.2.1"]
    assert any(e["frames"] > 1 and e["payload"] == "native" for e in entries)
    assert any(e["frames"] > 1 and e["payload"] == "multiframe-j2k" for e in entries)
    assert any(e["samples_per_pixel"] == 3 for e in entries)
    assert any(e["bits_allocated"] == 1 for e in entries)
    # Each source variant is used twice under different UIDs.
    assert all(n == 2 for n in Counter(e["variant"] for e in entries).values())
    assert len(expected["archives"]) == 6


def test_header_member_uid_equals_member_name(clean: tuple[str, dict[str, Any]],
                                              damaged: tuple[str, dict[str, Any]]) -> None:
    mismatches = set()
    checked = 0
    for root, expected in (clean, damaged):
        for rel in expected["archives"]:
            if not rel.startswith("text/"):
                continue
            members, _ = _members(os.path.join(root, rel))
            for name, (kind, data) in members.items():
                if kind != tarfile.REGTYPE:
                    continue
                uid = os.path.basename(name)[: -len(".json")]
                try:
                    model = json.loads(data)
                except ValueError:
                    mismatches.add(("malformed", uid))
                    continue
                checked += 1
                if "00080018" not in model or _value(model, "00080018") != uid:
                    mismatches.add(("mismatch", uid))
    intended = {("mismatch" if e["reason"] == "uid_mismatch" else "malformed", uid)
                for uid, e in damaged[1]["instances"].items() if e["reason"] in ("uid_mismatch", "malformed_json")}
    assert checked > 40
    assert mismatches == intended
    assert len(intended) == 2


def test_subfolder_members_keep_the_uid_as_basename(clean: tuple[str, dict[str, Any]]) -> None:
    _, expected = clean
    nested = [e["header"][1] for e in expected["instances"].values() if "/" in e["header"][1]]
    assert nested and all(n.startswith("batch1/") for n in nested)
    for uid, e in expected["instances"].items():
        assert os.path.basename(e["header"][1]) == f"{uid}.json"
        assert e["pixels"][1] == f"{uid}.j2c"


def test_header_and_pixels_live_in_different_archives(clean: tuple[str, dict[str, Any]],
                                                      damaged: tuple[str, dict[str, Any]]) -> None:
    for _, expected in (clean, damaged):
        for e in expected["instances"].values():
            if e["header"] and e["pixels"]:
                number = [re.search(r"-(\d+)\.tar$", w[0]).group(1) for w in (e["header"], e["pixels"])]
                assert e["header"][0] != e["pixels"][0]
                assert number[0] != number[1], e


def test_members_are_shuffled_across_archives(clean: tuple[str, dict[str, Any]]) -> None:
    root, expected = clean
    for rel in expected["archives"]:
        names = list(_members(os.path.join(root, rel))[0])
        assert len(names) >= 8
        assert names != sorted(names)


def test_uids_and_selection_fields_are_valid_and_varied(clean: tuple[str, dict[str, Any]]) -> None:
    root, expected = clean
    dates, modalities, ages, series, studies = set(), set(), set(), set(), set()
    for uid, e in expected["instances"].items():
        model = _header(root, e)
        for tag in ("00080018", "0020000D", "0020000E"):
            value = _value(model, tag)
            assert UID_RE.match(value) and len(value) <= 64, value
        assert uid.startswith("2.25.")
        date = _value(model, "00080020")
        assert re.fullmatch(r"(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])", date)
        age = _value(model, "00101010")
        assert re.fullmatch(r"\d{3}[DWMY]", age)
        assert not any(k.startswith("0002") for k in model)
        dates.add(date)
        modalities.add(_value(model, "00080060"))
        ages.add(age)
        series.add(_value(model, "0020000E"))
        studies.add(_value(model, "0020000D"))
    assert len(dates) >= 2 and len(ages) >= 5 and len(modalities) >= 4
    assert 2 <= len(studies) < len(series) < len(expected["instances"])


def test_only_some_headers_carry_a_bulk_data_uri_to_their_pixels(clean: tuple[str, dict[str, Any]]) -> None:
    root, expected = clean
    with_uri = 0
    for uid, e in expected["instances"].items():
        model = _header(root, e)
        pixel = model.get("7FE00010")
        if pixel is None:
            continue
        with_uri += 1
        assert pixel == {"vr": pixel["vr"], "BulkDataURI": f"{uid}.j2c"}
        assert pixel["vr"] in ("OB", "OW")
    assert 2 <= with_uri < len(expected["instances"]) / 2


def test_references_are_valid_part10_files(clean: tuple[str, dict[str, Any]],
                                           damaged: tuple[str, dict[str, Any]]) -> None:
    paths = []
    for root, expected in (clean, damaged):
        for uid, e in expected["instances"].items():
            if e["status"] != "written":
                assert e["reference"] is None
                continue
            path = os.path.join(root, e["reference"])
            with open(path, "rb") as fh:
                assert fh.read(132)[128:] == b"DICM"
            ds = pydicom.dcmread(path, force=False)
            assert ds.file_meta.TransferSyntaxUID == e["transfer_syntax"]
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == uid
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
            assert int(ds.get("NumberOfFrames", 1) or 1) == e["frames"]
            paths.append(path)
    dcmftest = require_tool("dcmftest")
    out = subprocess.run([dcmftest, *paths], capture_output=True, text=True, check=False).stdout
    assert out.count("yes:") == len(paths), out


def _native_length(model: dict[str, Any]) -> int:
    frames = int(_value(model, "00280008")) if "00280008" in model else 1
    spp = int(_value(model, "00280002"))
    bits = int(_value(model, "00280010")) * int(_value(model, "00280011")) * spp * int(_value(model, "00280100"))
    return (bits * frames + 7) // 8


def _split_codestreams(payload: bytes, frames: int) -> list[bytes]:
    parts = payload.split(b"\xff\xd9" + J2K_START)
    if len(parts) == 1:
        return parts
    out = [parts[0] + b"\xff\xd9"] + [J2K_START + p + b"\xff\xd9" for p in parts[1:-1]] + [J2K_START + parts[-1]]
    assert len(out) == frames
    return out


def _jp2_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, content) of each box; every byte must belong to a box."""
    boxes, pos = [], 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if length == 1:
            length, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        length = length or len(data) - pos
        assert length >= header and pos + length <= len(data)
        boxes.append((kind, data[pos + header:pos + length]))
        pos += length
    return boxes


def test_jp2_payloads_are_well_formed_jp2_files(clean: tuple[str, dict[str, Any]]) -> None:
    root, expected = clean
    jp2 = [e for e in expected["instances"].values() if e["payload"] == "jp2"]
    assert {e["variant"] for e in jp2} == {"mr-jp2-wrapped", "sc-jp2-bundled"}
    for e in jp2:
        boxes = _jp2_boxes(_read_member(root, e["pixels"]))
        kinds = [k for k, _ in boxes]
        assert kinds[:2] == [b"jP  ", b"ftyp"] and boxes[0][1] == b"\r\n\x87\n"
        assert boxes[1][1][:4] == b"jp2 " and b"jp2 " in boxes[1][1][8:]
        assert kinds.count(b"jp2c") == 1 and kinds.index(b"jp2h") < kinds.index(b"jp2c")
        assert dict(boxes)[b"jp2c"].startswith(J2K_START)
        header = dict(_jp2_boxes(dict(boxes)[b"jp2h"]))
        height, width, components = struct.unpack(">IIH", header[b"ihdr"][:10])
        assert (height, width, components) == (e["rows"], e["columns"], e["samples_per_pixel"])
        method = header[b"colr"][0]
        assert method in (1, 2, 3)
        if method == 1:
            assert struct.unpack(">I", header[b"colr"][3:7])[0] == (17 if components == 1 else 16)


def test_payloads_match_their_headers_and_references(clean: tuple[str, dict[str, Any]]) -> None:
    root, expected = clean
    for uid, e in expected["instances"].items():
        model = _header(root, e)
        payload = _read_member(root, e["pixels"])
        ref = pydicom.dcmread(os.path.join(root, e["reference"]))
        if e["payload"] == "native":
            assert len(payload) == _native_length(model), uid
            assert e["transfer_syntax"] == "1.2.840.10008.1.2.1"
            assert not payload.startswith(J2K_START) and not payload.startswith(JP2_SIGNATURE)
            assert payload == ref.PixelData[: len(payload)]
            continue
        assert e["transfer_syntax"] in J2K_ALLOWED
        if e["payload"] == "jp2":
            assert payload.startswith(JP2_SIGNATURE) and payload[16:20] == b"ftyp"
            decoded = [openjpeg.decode(payload)]
        else:
            assert payload.startswith(J2K_START)
            decoded = [openjpeg.decode(c) for c in _split_codestreams(payload, e["frames"])]
        expected_arr = ref.pixel_array
        if e["frames"] == 1:
            expected_arr = expected_arr[None, ...]
        assert len(decoded) == e["frames"]
        for got, want in zip(decoded, expected_arr, strict=True):
            np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_lossy_flag_and_wavelet_decide_the_expected_transfer_syntax(clean: tuple[str, dict[str, Any]]) -> None:
    root, expected = clean
    by_variant = {e["variant"]: e for e in expected["instances"].values()}
    assert by_variant["mr-j2k-lossless"]["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    assert by_variant["nm-j2k-lossy"]["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    flagged = by_variant["ct-j2k-lossy-flag"]
    assert _value(_header(root, flagged), "00282110") == "01"
    codestream = _read_member(root, flagged["pixels"])
    cod = codestream.index(b"\xff\x52")
    assert codestream[cod + 13] == 1  # reversible 5-3, yet the header's lossy flag makes it .91
    assert flagged["transfer_syntax"] == "1.2.840.10008.1.2.4.91"


# ---------------------------------------------------------------- damaged delivery


EXPECTED_DAMAGE = Counter({
    ("written", None): 10,
    ("orphan_header", "no_pixels"): 1,
    ("unreadable_archive", "truncated_archive"): 1,
    ("orphan_pixels", "no_header"): 1,
    ("conflict", "conflicting_headers"): 1,
    ("conflict", "conflicting_pixels"): 1,
    ("invalid_header", "malformed_json"): 1,
    ("invalid_header", "uid_mismatch"): 1,
    ("invalid_header", "invalid_uid"): 1,
    ("invalid_header", "missing_sop_class_uid"): 1,
    ("invalid_header", "unresolved_bulkdata"): 2,
    ("invalid_pixels", "empty_pixels"): 1,
    ("invalid_pixels", "native_length_mismatch"): 1,
    ("invalid_pixels", "unrecognised_payload"): 1,
})


def _by_case(expected: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    return {e["case"]: (uid, e) for uid, e in expected["instances"].items() if e["case"]}


def test_damaged_category_counts(damaged: tuple[str, dict[str, Any]]) -> None:
    _, expected = damaged
    assert Counter((e["status"], e["reason"]) for e in expected["instances"].values()) == EXPECTED_DAMAGE
    archives = {rel: (a["status"], a["reason"]) for rel, a in expected["archives"].items() if a["status"] != "ok"}
    assert sorted(archives.values()) == [("unreadable_archive", "empty_archive"),
                                         ("unreadable_archive", "not_a_tar"),
                                         ("unreadable_archive", "truncated_archive")]
    members = Counter((m["status"], m["reason"]) for m in expected["members"])
    assert members[("duplicate", "identical_duplicate")] == 2
    assert members[("invalid_header", "non_regular_member")] == 2
    assert members[("invalid_pixels", "non_regular_member")] == 2
    assert members[("unreadable_archive", "truncated_archive")] == 2  # the cut member and its header


def test_damaged_archives_are_really_damaged(damaged: tuple[str, dict[str, Any]]) -> None:
    root, expected = damaged
    for rel, a in expected["archives"].items():
        path = os.path.join(root, rel)
        members, error = _members(path)
        if a["reason"] == "empty_archive":
            assert os.path.getsize(path) == 0 and not members and error
        elif a["reason"] == "not_a_tar":
            assert os.path.getsize(path) > 1024 and not tarfile.is_tarfile(path) and not members and error
        elif a["reason"] == "truncated_archive":
            assert error
            # Every member before the cut reads back whole and is listed with its own outcome.
            listed = {m["member"]: m for m in expected["members"] if m["archive"] == rel}
            assert len(members) >= 2 and set(members) <= set(listed)
            written = [n for n, m in listed.items() if m["status"] == "written"]
            assert sorted(written) == sorted(members)
            for name in written:
                uid = listed[name]["uid"]
                assert expected["instances"][uid]["status"] == "written"
                assert expected["instances"][uid]["pixels"] == [rel, name]
                ref = pydicom.dcmread(os.path.join(root, expected["instances"][uid]["reference"]))
                assert members[name][1].startswith(J2K_START) or members[name][1] == ref.PixelData[
                    : len(members[name][1])]
            cut = [n for n, m in listed.items() if m["status"] == "unreadable_archive"]
            assert len(cut) == 1 and cut[0] not in members
            with open(path, "rb") as fh:
                data = fh.read()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                info = tar.next()
                while info is not None and info.name != cut[0]:  # getmember() would scan past the cut
                    info = tar.next()
                assert info.offset_data + info.size > len(data)  # the cut falls inside this member's data
                with pytest.raises(tarfile.ReadError):
                    tar.extractfile(info).read()
        else:
            assert error is None, rel


def test_damaged_members_carry_the_intended_faults(damaged: tuple[str, dict[str, Any]]) -> None:
    root, expected = damaged
    cases = _by_case(expected)

    def header_bytes(case: str, where: str = "header") -> bytes:
        return _read_member(root, cases[case][1][where])

    uid, e = cases["orphan-header"]
    assert e["pixels"] is None and not any(m["uid"] == uid and m["role"] == "pixels" for m in expected["members"])
    uid, e = cases["orphan-pixels"]
    assert e["header"] is None and not any(m["uid"] == uid and m["role"] == "header" for m in expected["members"])

    _, e = cases["duplicate-header"]
    assert e["status"] == "written" and e["duplicates"][0][0] != e["header"][0]
    assert _read_member(root, e["duplicates"][0]) == header_bytes("duplicate-header")
    _, e = cases["duplicate-pixels"]
    assert e["duplicates"][0][0] != e["pixels"][0]
    assert _read_member(root, e["duplicates"][0]) == header_bytes("duplicate-pixels", "pixels")

    for case in ("conflict-header", "conflict-pixels"):
        uid, e = cases[case]
        first, second = (_read_member(root, w) for w in e["conflicts"])
        assert first != second and os.path.basename(e["conflicts"][0][1]) == os.path.basename(e["conflicts"][1][1])

    with pytest.raises(ValueError):
        json.loads(header_bytes("malformed-json"))
    uid, _ = cases["uid-mismatch"]
    assert _value(json.loads(header_bytes("uid-mismatch")), "00080018") != uid
    uid, e = cases["invalid-uid"]
    assert uid == "1.2.03.4" and not UID_RE.match(uid)
    assert e["header"][1] == "1.2.03.4.json" and e["pixels"][1] == "1.2.03.4.j2c"
    assert "00080016" not in json.loads(header_bytes("missing-sop-class"))
    external = json.loads(header_bytes("bulkdata-external"))["7FE00010"]
    assert external["BulkDataURI"] == "http://elsewhere/x"
    other = json.loads(header_bytes("bulkdata-other-tag"))
    assert "BulkDataURI" in other["00282000"] and "7FE00010" not in other

    assert header_bytes("empty-pixels", "pixels") == b""
    model = json.loads(header_bytes("short-native"))
    short = header_bytes("short-native", "pixels")
    assert 0 < len(short) < _native_length(model)
    garbage = header_bytes("garbage", "pixels")
    assert len(garbage) != _native_length(json.loads(header_bytes("garbage")))
    assert not garbage.startswith(J2K_START) and not garbage.startswith(JP2_SIGNATURE)


def test_non_regular_members_sit_in_otherwise_good_archives(damaged: tuple[str, dict[str, Any]]) -> None:
    root, expected = damaged
    odd = [m for m in expected["members"] if m["reason"] == "non_regular_member"]
    kinds = Counter()
    for m in odd:
        members, error = _members(os.path.join(root, m["archive"]))
        assert error is None and expected["archives"][m["archive"]]["status"] == "ok"
        kind = members[m["member"]][0]
        kinds[kind] += 1
        # The archive also holds good members.
        assert any(k == tarfile.REGTYPE for k, _ in members.values())
    assert kinds == {tarfile.DIRTYPE: 2, tarfile.SYMTYPE: 2}
