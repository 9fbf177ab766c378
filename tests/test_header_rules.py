"""Header validity before writing (issue 16): each header case of its "Why" list, on headers built here,
and every DICOM JSON file pydicom ships.

A written object is checked with dcmftest, and with dciodvfy against a baseline object that differs only
in the element under test, so the element adds no error. A refused header names the element in its reason.
Both encoders run on every case: the fast path and the pydicom path give the same bytes or the same reason.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import pytest
from helpers import dciodvfy_errors, dcmftest_ok
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files

from dicom_reassembly.dicom import dicom_json
from dicom_reassembly.dicom.dicom_json import key_tags, parse_header
from dicom_reassembly.dicom.header_rules import MAX_SEQUENCE_DEPTH
from dicom_reassembly.dicom.part10 import assemble
from dicom_reassembly.errors import HeaderError

UID = "1.2.826.0.1.3680043.10.1234.7"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
PIXELS = bytes(range(16))  # 4 x 4, 8 bits


def _header(**extra: Any) -> dict[str, Any]:
    """A Secondary Capture header with its Type 1 and 2 elements, so dciodvfy has little to say about it."""
    h: dict[str, Any] = {
        "00080016": {"vr": "UI", "Value": [SC_IMAGE]},
        "00080018": {"vr": "UI", "Value": [UID]},
        "00080020": {"vr": "DA", "Value": ["20240131"]},
        "00080030": {"vr": "TM", "Value": ["101010"]},
        "00080050": {"vr": "SH"},
        "00080060": {"vr": "CS", "Value": ["OT"]},
        "00080064": {"vr": "CS", "Value": ["WSD"]},
        "00080090": {"vr": "PN"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00100020": {"vr": "LO", "Value": ["ID1"]},
        "00100030": {"vr": "DA"},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.1234.1"]},
        "0020000E": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.10.1234.2"]},
        "00200010": {"vr": "SH", "Value": ["1"]},
        "00200011": {"vr": "IS", "Value": [1]},
        "00200013": {"vr": "IS", "Value": [1]},
        "00200020": {"vr": "CS"},
        "00280002": {"vr": "US", "Value": [1]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
        "00280010": {"vr": "US", "Value": [4]},
        "00280011": {"vr": "US", "Value": [4]},
        "00280100": {"vr": "US", "Value": [8]},
        "00280101": {"vr": "US", "Value": [8]},
        "00280102": {"vr": "US", "Value": [7]},
        "00280103": {"vr": "US", "Value": [0]},
    }
    h.update(extra)
    return h


def _both(header: dict[str, Any], payload: bytes = PIXELS, uid: str = UID) -> bytes:
    """The object both encoders write (asserted identical), from the header as a member carries it."""
    raw = json.dumps(header)
    fast = assemble(raw, payload, uid).tobytes()
    assert assemble(raw, payload, uid, fast=False).tobytes() == fast
    return fast


def _refused(header: dict[str, Any] | str, uid: str = UID) -> HeaderError:
    """The HeaderError both encoders raise (asserted the same), as one line."""
    raw = header if isinstance(header, str) else json.dumps(header)
    errors = []
    for fast in (True, False):
        with pytest.raises(HeaderError) as exc:
            assemble(raw, PIXELS, uid, fast=fast)
        errors.append(exc.value)
    assert errors[0].one_line() == errors[1].one_line()
    assert "\n" not in errors[0].one_line() and errors[0].status == "invalid_header"
    return errors[0]


def _valid_like(data: bytes, baseline: bytes, tmp_path: Any) -> None:
    """``data`` is Part 10 per dcmtk, and dciodvfy finds no error in it that ``baseline`` lacks."""
    path, base = tmp_path / "object.dcm", tmp_path / "baseline.dcm"
    path.write_bytes(data)
    base.write_bytes(baseline)
    assert dcmftest_ok(str(path))
    assert dciodvfy_errors(str(path)) <= dciodvfy_errors(str(base))


# ---------------------------------------------------------------- null in Value arrays (PS3.18 F.2.5)


def test_a_trailing_null_in_a_binary_vr_is_dropped_like_pydicoms_test1_json(tmp_path: Any) -> None:
    # Refused as unencodable_header before: the GE MR header of pydicom's test1.json has this element.
    data = _both(_header(**{"00181310": {"vr": "US", "Value": [128, 0, 0, 32, None]}}))
    assert list(dcmread(io.BytesIO(data)).AcquisitionMatrix) == [128, 0, 0, 32]
    _valid_like(data, _both(_header(**{"00181310": {"vr": "US", "Value": [128, 0, 0, 32]}})), tmp_path)


def test_null_in_a_string_vr_is_an_empty_value_at_its_position() -> None:
    ds = dcmread(io.BytesIO(_both(_header(**{
        "00280030": {"vr": "DS", "Value": [None, 0.5]},  # pydicom alone writes "None\0.5"
        "00200012": {"vr": "IS", "Value": [3, None]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
    }))))
    assert ds["PixelSpacing"].value[0] == "" and float(ds["PixelSpacing"].value[1]) == 0.5
    assert ds["AcquisitionNumber"].value[0] == 3 and ds["AcquisitionNumber"].value[1] == ""
    assert list(ds.ImageType) == ["ORIGINAL", "", "AXIAL"]


@pytest.mark.parametrize(("elem", "named"), [
    ({"00181310": {"vr": "US", "Value": [128, None, 0, 32]}}, "AcquisitionMatrix (0018,1310) has null at value 2 of 4"),
    ({"00209165": {"vr": "AT", "Value": [None, "00100010"]}}, "DimensionIndexPointer (0020,9165) has null at value 1"),
    ({"00081140": {"vr": "SQ", "Value": [{"00189219": {"vr": "FD", "Value": [1.0, None, 2.0]}}]}},
     "TagAngleSecondAxis (0018,9219) in item 1 of ReferencedImageSequence (0008,1140) has null at value 2 of 3"),
])
def test_an_interior_null_in_a_binary_vr_is_refused_naming_the_element(elem: dict, named: str) -> None:
    exc = _refused(_header(**elem))
    assert exc.reason == "null_in_value" and named in exc.detail


# ---------------------------------------------------------------- identity and UIDs


@pytest.mark.parametrize(("tag", "name"), [("00080016", "SOPClassUID"), ("00080018", "SOPInstanceUID"),
                                           ("0020000D", "StudyInstanceUID"), ("0020000E", "SeriesInstanceUID")])
def test_a_multi_valued_identity_uid_is_refused(tag: str, name: str) -> None:
    header = _header()
    header[tag] = {"vr": "UI", "Value": [header[tag]["Value"][0], "1.2.826.0.1.3680043.10.1234.99"]}
    exc = _refused(header)
    assert exc.reason == "invalid_vm" and exc.detail.startswith(f"{name} ({tag[:4]},{tag[4:]}) has 2 values")


@pytest.mark.parametrize(("tag", "value", "problem"), [
    ("0020000D", "1.2.826.0.1\x003680043", "is broken by a NUL character"),
    ("0020000E", "1.2.826.0.1.3680043\x00", "is broken by a NUL character"),
    ("00200052", "1.2.826.0.1.3680043\n", "is padded with whitespace"),
    ("0020000D", "1.2.826.0.1.3680043 ", "is padded with whitespace"),
    ("00080018", UID + "\n", "is padded with whitespace"),
    ("00081155", "1.2.3\\1.2.4", "is two values joined by a backslash"),
    ("00200052", "1.2.03", "is not dot-separated digits"),
])
def test_a_top_level_uid_must_follow_the_uid_syntax(tag: str, value: str, problem: str) -> None:
    exc = _refused(_header(**{tag: {"vr": "UI", "Value": [value]}}))
    assert exc.reason == "invalid_uid_value" and f"({tag[:4]},{tag[4:]}) {value!r} {problem}" in exc.detail


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # reading the legacy UID back
def test_a_nested_uid_is_refused_only_for_what_corrupts_its_encoding(tmp_path: Any) -> None:
    def refs(uid: str) -> dict[str, Any]:
        return {"00081140": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": [SC_IMAGE]},
                                                     "00081155": {"vr": "UI", "Value": [uid]}}]}}

    exc = _refused(_header(**refs("1.2.3\x004")))
    assert exc.reason == "invalid_uid_value"
    assert exc.detail.startswith("ReferencedSOPInstanceUID (0008,1155) in item 1 of ReferencedImageSequence (0008,1140)")
    # A reference is copied as the source had it: a legacy leading zero must still match the object it names.
    # Surrounding spaces are not content: both encoders strip them, as pydicom's UID does.
    ds = dcmread(io.BytesIO(_both(_header(**refs(" 1.2.03.4 ")))))
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.03.4"


# ---------------------------------------------------------------- groups and pixel description


@pytest.mark.parametrize("key", ["00010010", "00031000", "00050010", "00071001", "FFFF0010"])
def test_elements_in_reserved_groups_are_refused(key: str) -> None:
    # Group 0001 and 0003 elements were written before, and dciodvfy could no longer parse the file.
    exc = _refused(_header(**{key: {"vr": "LO", "Value": ["X"]}}))
    assert exc.reason == "reserved_group" and exc.detail.startswith(f"({key[:4]},{key[4:]}): group {key[:4]} is reserved")
    nested = _refused(_header(**{"00081140": {"vr": "SQ", "Value": [{key: {"vr": "LO", "Value": ["X"]}}]}}))
    assert nested.reason == "reserved_group" and "in item 1 of ReferencedImageSequence (0008,1140)" in nested.detail


@pytest.mark.parametrize("bits", [12, 0, 4, 9])
def test_bits_allocated_must_be_1_or_a_multiple_of_8(bits: int) -> None:
    exc = _refused(_header(**{"00280100": {"vr": "US", "Value": [bits]}}))
    assert exc.reason == "invalid_bits_allocated" and f"BitsAllocated (0028,0100) is {bits}" in exc.detail


def test_bits_allocated_16_is_written() -> None:
    header = _header(**{"00280100": {"vr": "US", "Value": [16]}, "00280101": {"vr": "US", "Value": [12]},
                        "00280102": {"vr": "US", "Value": [11]}})
    assert dcmread(io.BytesIO(_both(header, bytes(32)))).BitsAllocated == 16


# ---------------------------------------------------------------- character sets


@pytest.mark.parametrize("declared", [None, ""])
@pytest.mark.parametrize("name", ["Иванов^Иван", "山田^太郎", "Müller^Jürgen"])
def test_non_ascii_text_without_a_character_set_is_written_as_utf8(name: str, declared: str | None, tmp_path: Any) -> None:
    # Written as '?^?' before, with exit 0 (ISO 8859-1 for Latin text, undeclared).
    extra: dict[str, Any] = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}
    if declared is not None:
        extra["00080005"] = {"vr": "CS", "Value": [declared]}
    data = _both(_header(**extra))
    ds = dcmread(io.BytesIO(data))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == name and name.encode("utf-8") in data
    baseline = _both(_header(**{"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}))
    _valid_like(data, baseline, tmp_path)


@pytest.mark.parametrize(("declared", "text"), [("ISO_IR 100", "Иванов^Иван"), ("ISO_IR 6", "Müller^Jürgen"),
                                                ("ISO_IR 144", "山田^太郎")])
def test_text_the_declared_character_set_cannot_hold_is_refused(declared: str, text: str) -> None:
    exc = _refused(_header(**{"00080005": {"vr": "CS", "Value": [declared]},
                              "00100010": {"vr": "PN", "Value": [{"Alphabetic": text}]}}))
    assert exc.reason == "unencodable_text"
    assert exc.detail.startswith(f"PatientName (0010,0010) {text!r}") and declared in exc.detail


def test_text_a_declared_character_set_holds_is_written_in_it() -> None:
    data = _both(_header(**{"00080005": {"vr": "CS", "Value": ["ISO_IR 144"]},
                            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Иванов^Иван"}]}}))
    assert dcmread(io.BytesIO(data)).PatientName == "Иванов^Иван" and "Иванов".encode("iso8859_5") in data


def test_non_ascii_in_a_default_repertoire_vr_is_refused() -> None:
    exc = _refused(_header(**{"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
                              "00080060": {"vr": "CS", "Value": ["ÖT"]}}))
    assert exc.reason == "unencodable_text" and exc.detail.startswith("Modality (0008,0060) 'ÖT': CS holds only")


def test_pydicoms_replacement_characters_are_an_error_even_where_the_rules_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rules refuse this first; without them, pydicom's '?' substitution (a warning only) must still stop it.
    monkeypatch.setattr(dicom_json, "check_header", lambda header, raw=None: header)
    raw = json.dumps(_header(**{"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]},
                                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Иванов"}]}}))
    for fast in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing may escape as a warning either
            with pytest.raises(HeaderError) as exc:
                assemble(raw, PIXELS, UID, fast=fast)
        assert exc.value.reason == "unencodable_text" and "replacement characters" in exc.value.detail


# ---------------------------------------------------------------- nesting and size


def _nested(levels: int) -> dict[str, Any]:
    elem: dict[str, Any] = {"00081030": {"vr": "LO", "Value": ["deepest"]}}
    for _ in range(levels):
        elem = {"00081140": {"vr": "SQ", "Value": [elem]}}
    return elem


def test_sequences_nest_up_to_the_limit_and_no_deeper() -> None:
    ds = dcmread(io.BytesIO(_both(_header(**_nested(MAX_SEQUENCE_DEPTH)))))
    item = ds
    for _ in range(MAX_SEQUENCE_DEPTH):
        item = item.ReferencedImageSequence[0]
    assert item.StudyDescription == "deepest"
    exc = _refused(_header(**_nested(MAX_SEQUENCE_DEPTH + 1)))
    assert exc.reason == "too_deep" and "more than 64 sequence levels" in exc.detail


def _deep_raw(where: str, levels: int) -> str:
    header = json.dumps(_header())[:-1]
    if where == "sequences":
        return header + ', "00081140": ' + '{"vr": "SQ", "Value": [{"00081140": ' * levels + "{}" + "}]}" * levels + "}"
    return header + ', "00100010": {"vr": "PN", "Value": [' + "[" * levels + "]" * levels + "]}}"  # no element nests so


@pytest.mark.parametrize("where", ["sequences", "value"])
def test_a_header_nested_thousands_deep_is_too_deep_not_a_recursion_error(where: str) -> None:
    # Was a RecursionError: CLI exit 1, index_error in the manifest.
    json.loads(_deep_raw(where, 3))  # well formed: only its depth is wrong
    raw = _deep_raw(where, 5000)
    with pytest.raises(HeaderError) as exc:
        parse_header(raw)
    assert exc.value.reason == "too_deep"
    assert _refused(raw).reason == "too_deep"


def test_nesting_a_few_levels_past_the_limit_is_too_deep_after_parsing() -> None:
    # Deep enough for the limit, shallow enough that json.loads itself succeeds.
    raw = json.dumps(_header(**{"00100010": {"vr": "PN", "Value": [json.loads("[" * 300 + "]" * 300)]}}))
    with pytest.raises(HeaderError) as exc:
        parse_header(raw)
    assert exc.value.reason == "too_deep"


def test_a_header_above_max_header_bytes_is_too_large() -> None:
    raw = json.dumps(_header(**{"00204000": {"vr": "LT", "Value": ["é" * 600]}}))
    size = len(raw.encode("utf-8"))
    assert parse_header(raw, max_bytes=size)  # at the limit: parsed
    for given in (raw, raw.encode("utf-8")):
        with pytest.raises(HeaderError) as exc:
            parse_header(given, max_bytes=size - 1)
        assert exc.value.reason == "too_large" and exc.value.detail == f"header is {size} bytes, above max_header_bytes ({size - 1})"
    with pytest.raises(HeaderError) as exc:
        assemble(raw, PIXELS, UID, max_header_bytes=1000)
    assert exc.value.reason == "too_large"


# ---------------------------------------------------------------- pydicom's own DICOM JSON files

# Each file pydicom ships is written, or refused for a reason its content gives.
PYDICOM_JSON = {
    "test1.json": None,  # a GE MR header: written
    "test_PN.json": ("missing_sop_instance_uid", "SOPInstanceUID (0008,0018) is missing"),  # a fragment, no SOP UIDs
}
# dciodvfy errors test1.json's content implies: item 2 of DeidentificationMethodCodeSequence is an empty item ({}).
EMPTY_CODE_ITEM = {"BasicCodeSequenceMacro"}


def _pydicom_json_files() -> list[str]:
    return sorted(get_testdata_files("*.json"))


def test_every_dicom_json_file_pydicom_ships_is_covered() -> None:
    names = sorted(p.rsplit("/", 1)[-1] for p in _pydicom_json_files())
    assert names == sorted(PYDICOM_JSON)


@pytest.mark.parametrize("name", sorted(PYDICOM_JSON))
def test_pydicoms_dicom_json_files_are_written_or_refused_precisely(name: str, tmp_path: Any) -> None:
    path = get_testdata_file(name, download=False)
    assert path is not None
    with open(path, "rb") as f:
        raw = f.read()
    header = parse_header(raw)
    uid = str(dicom_json.first_value(header, "00080018") or "1.2.3")
    tags = key_tags(header)
    payload = bytes((tags["rows"] or 1) * (tags["columns"] or 1) * ((tags["bits_allocated"] or 8) // 8))
    expected = PYDICOM_JSON[name]
    if expected is not None:
        for fast in (True, False):
            with pytest.raises(HeaderError) as exc:
                assemble(raw, payload, uid, fast=fast)
            assert (exc.value.reason, exc.value.detail) == expected
        return
    data = assemble(raw, payload, uid, f"{uid}.raw").tobytes()
    assert assemble(raw, payload, uid, f"{uid}.raw", fast=False).tobytes() == data
    out = tmp_path / "written.dcm"
    out.write_bytes(data)
    assert dcmftest_ok(str(out))
    ds = dcmread(out)
    assert ds.SOPInstanceUID == uid and list(ds.AcquisitionMatrix) == [128, 0, 0, 32]
    errors = dciodvfy_errors(str(out))
    assert all(any(m in e for m in EMPTY_CODE_ITEM) for e in errors), errors
    # Without the empty item, nothing is left: the errors were the content's, not the writer's.
    fixed = json.loads(raw)
    fixed["00120064"]["Value"] = [item for item in fixed["00120064"]["Value"] if item]
    out.write_bytes(assemble(json.dumps(fixed), payload, uid, f"{uid}.raw").tobytes())
    assert dcmftest_ok(str(out)) and dciodvfy_errors(str(out)) == set()
