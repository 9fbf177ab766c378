"""The header half: DICOM JSON model to dataset and file meta, identity checks, key tags.

Every round trip is read back with pydicom's own reader from the written Part 10 bytes.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import pytest
from helpers import dcmftest_ok
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread

from dicom_reassembly.dicom.dicom_json import build_dataset, canonical_sha256, check_identity, key_tags, parse_header
from dicom_reassembly.dicom.part10 import assemble
from dicom_reassembly.dicom.uids import IMPLEMENTATION_CLASS_UID, is_valid_uid, member_uid, uid_problem
from dicom_reassembly.errors import HeaderError

UID = "1.2.826.0.1.3680043.10.1234.7"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
PIXELS = bytes(range(16))  # 4 x 4, 8 bits


def _header(**extra: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "00080016": {"vr": "UI", "Value": [SC_IMAGE]},
        "00080018": {"vr": "UI", "Value": [UID]},
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


def _write(header: dict[str, Any] | str | bytes, uid: str = UID, member: str | None = None) -> bytes:
    raw = header if isinstance(header, (str, bytes)) else json.dumps(header)
    return assemble(raw, PIXELS, uid, member).tobytes()


def _reason(exc_type: type[Exception], fn: Any, *args: Any) -> str:
    with pytest.raises(exc_type) as exc:
        fn(*args)
    assert "\n" not in str(exc.value)
    return exc.value.reason


# ---------------------------------------------------------------- round trip of the JSON model


def test_sequences_private_tags_pn_inline_binary_and_multi_values_round_trip() -> None:
    blob = bytes(range(7))  # odd length: must come back with one pad byte, not lost
    header = _header(**{
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080008": {"vr": "CS", "Value": ["DERIVED", "SECONDARY", "AXIAL"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]},
        "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 1, 0]},
        "00280030": {"vr": "DS", "Value": ["0.5", "0.25"]},
        "00181310": {"vr": "US", "Value": [0, 4, 4, 0]},
        "00081140": {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
             "00081155": {"vr": "UI", "Value": ["1.2.3.4.5"]}},
            {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
             "00081155": {"vr": "UI", "Value": ["1.2.3.4.6"]},
             "00081160": {"vr": "IS", "Value": [3]}},
        ]},
        "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00091011": {"vr": "LO", "Value": ["acme value"]},
        "00091012": {"vr": "OB", "InlineBinary": base64.b64encode(blob).decode()},
        "00091013": {"vr": "SL", "Value": [-5, 7]},
        "00101002": {"vr": "SQ", "Value": []},
    })
    ds = dcmread(io.BytesIO(_write(header)))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.PatientName.alphabetic == "Yamada^Tarou"
    assert ds.PatientName.ideographic == "山田^太郎"
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.25]
    assert list(ds.AcquisitionMatrix) == [0, 4, 4, 0]
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedImageSequence] == ["1.2.3.4.5", "1.2.3.4.6"]
    assert ds.ReferencedImageSequence[1].ReferencedFrameNumber == 3
    assert len(ds.OtherPatientIDsSequence) == 0
    assert ds.get_private_item(0x0009, 0x11, "ACME 1.0").value == "acme value"
    binary = ds.get_private_item(0x0009, 0x12, "ACME 1.0")
    assert binary.VR == "OB" and binary.value[:7] == blob and len(binary.value) == 8
    assert list(ds.get_private_item(0x0009, 0x13, "ACME 1.0").value) == [-5, 7]
    assert ds.PixelData == PIXELS


def test_lower_case_keys_are_accepted() -> None:
    header = {k.lower(): v for k, v in _header(**{"0020000d": {"vr": "UI", "Value": ["1.2.3"]}}).items()}
    parsed = parse_header(json.dumps(header))
    assert key_tags(parsed)["study_instance_uid"] == "1.2.3"
    assert dcmread(io.BytesIO(_write(header))).StudyInstanceUID == "1.2.3"


def test_a_metadata_response_list_of_one_dataset_is_accepted() -> None:
    assert dcmread(io.BytesIO(_write(json.dumps([_header()])))).SOPInstanceUID == UID


# ---------------------------------------------------------------- group 0002


def test_group_0002_goes_to_file_meta_and_writer_owned_elements_are_ours() -> None:
    header = _header(**{
        "00020000": {"vr": "UL", "Value": [9999]},
        "00020002": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00020003": {"vr": "UI", "Value": ["1.2.3.999"]},
        "00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2"]},
        "00020012": {"vr": "UI", "Value": ["1.2.3.4.5.6"]},
        "00020013": {"vr": "SH", "Value": ["PARTNER_1"]},
        "00020016": {"vr": "AE", "Value": ["PARTNERAE"]},
    })
    data = _write(header)
    ds = dcmread(io.BytesIO(data))
    meta = ds.file_meta
    assert meta.SourceApplicationEntityTitle == "PARTNERAE"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.MediaStorageSOPClassUID == SC_IMAGE
    assert meta.MediaStorageSOPInstanceUID == UID
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName != "PARTNER_1"
    assert not [e.tag for e in ds if e.tag.group == 2]
    # The group length is recomputed, and every group 0002 element sits inside it.
    (group_length,) = struct.unpack("<I", data[140:144])
    meta_end = 144 + group_length
    assert data.index(b"PARTNERAE") < meta_end
    assert data.count(b"PARTNERAE") == 1
    assert b"1.2.3.999" not in data and b"PARTNER_1" not in data


def test_build_dataset_leaves_the_parsed_header_unchanged() -> None:
    header = _header(**{"00020016": {"vr": "AE", "Value": ["X"]}, "7FE00010": {"vr": "OB", "BulkDataURI": f"{UID}.j2c"}})
    before = json.dumps(header, sort_keys=True)
    ds, meta = build_dataset(header, UID)
    assert json.dumps(header, sort_keys=True) == before
    assert "PixelData" not in ds and meta.SourceApplicationEntityTitle == "X"


# ---------------------------------------------------------------- BulkDataURI


@pytest.mark.parametrize("uri", [
    f"{UID}.j2c",
    f"images/part-3.tar/{UID}.j2c",
    f"https://partner.example/bulk/{UID}.j2c",
    f"https://partner.example/studies/1.2/series/3.4/instances/{UID}",
    UID,
])
def test_bulkdata_uri_on_pixel_data_pointing_at_the_pixel_member_is_resolved(uri: str) -> None:
    header = _header(**{"7FE00010": {"vr": "OB", "BulkDataURI": uri}})
    ds = dcmread(io.BytesIO(_write(header, member=f"sub/{UID}.j2c")))
    assert ds.PixelData == PIXELS


def test_bulkdata_uri_naming_the_member_by_another_file_name_is_resolved() -> None:
    header = _header(**{"7FE00010": {"vr": "OB", "BulkDataURI": "s3://partner/img/frame-0007.raw"}})
    assert dcmread(io.BytesIO(_write(header, member="x/frame-0007.raw"))).PixelData == PIXELS


@pytest.mark.parametrize("elements", [
    {"7FE00010": {"vr": "OB", "BulkDataURI": "https://partner.example/bulk/0001"}},
    {"7FE00010": {"vr": "OB", "BulkDataURI": "https://partner.example/bulk/1.2.826.0.1.3680043.10.1234.8.j2c"}},
    # Another instance whose UID merely starts with ours.
    {"7FE00010": {"vr": "OB", "BulkDataURI": f"https://partner.example/instances/{UID}.5"}},
    {"7FE00010": {"vr": "OB", "BulkDataURI": f"https://partner.example/instances/{UID}.12/frames/1"}},
    {"00090010": {"vr": "LO", "Value": ["ACME 1.0"]}, "00091011": {"vr": "OB", "BulkDataURI": f"{UID}.j2c"}},
    {"00420011": {"vr": "OB", "BulkDataURI": "https://partner.example/pdf/1"}},
    {"00081140": {"vr": "SQ", "Value": [{"00660023": {"vr": "OF", "BulkDataURI": "https://partner.example/mesh"}}]}},
    {"00020016": {"vr": "AE", "Value": ["A"]}, "00020102": {"vr": "OB", "BulkDataURI": "https://partner.example/x"}},
], ids=["other-url", "other-uid", "uid-prefix", "uid-prefix-frames", "private-tag", "non-pixel-tag", "nested",
        "meta-tag"])
def test_bulkdata_uri_elsewhere_is_an_error_never_an_empty_value(elements: dict[str, Any]) -> None:
    assert _reason(HeaderError, _write, _header(**elements), UID, f"{UID}.j2c") == "unresolved_bulkdata"


# ---------------------------------------------------------------- malformed headers


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe\x00{", b"", b"{\"00080018\": }"])
def test_not_json(raw: bytes) -> None:
    assert _reason(HeaderError, parse_header, raw) == "malformed_json"


@pytest.mark.parametrize("raw", ["[]", "[{}, {}]", "\"text\"", "42", "null", "[1]"])
def test_top_level_not_an_object(raw: str) -> None:
    assert _reason(HeaderError, parse_header, raw) == "malformed_json"


@pytest.mark.parametrize(("drop", "empty", "reason"), [
    ("00080018", False, "missing_sop_instance_uid"),
    ("00080016", False, "missing_sop_class_uid"),
    ("00080018", True, "missing_sop_instance_uid"),
    ("00080016", True, "missing_sop_class_uid"),
])
def test_missing_sop_uids(drop: str, empty: bool, reason: str) -> None:
    header = _header()
    if empty:
        header[drop] = {"vr": "UI"}
    else:
        del header[drop]
    assert _reason(HeaderError, _write, header) == reason


def test_header_uid_differs_from_member_uid() -> None:
    assert _reason(HeaderError, _write, _header(), "1.2.826.0.1.3680043.10.1234.8") == "uid_mismatch"


@pytest.mark.parametrize("bad", [
    "1.2.03.4",          # leading zero
    "01.2.3",
    "1." + "2" * 63,     # 65 characters
    "1..2",              # empty component
    "1.2.",
    ".1.2",
    "1.2.a3",            # letters
    "1.2.3 4",
    "2.25.-1",
])
def test_invalid_uid_syntax(bad: str) -> None:
    assert uid_problem(bad) is not None and not is_valid_uid(bad)
    header = _header(**{"00080018": {"vr": "UI", "Value": [bad]}})
    assert _reason(HeaderError, check_identity, header, bad) == "invalid_uid_value"
    header = _header(**{"00080016": {"vr": "UI", "Value": [bad]}})
    assert _reason(HeaderError, check_identity, header, UID) == "invalid_uid_value"


@pytest.mark.parametrize("good", ["0", "1.0.2", "2.25.0", "1." + "2" * 62, UID])
def test_valid_uid_syntax(good: str) -> None:
    assert uid_problem(good) is None


def test_member_uid_keeps_every_dot_of_the_uid() -> None:
    assert member_uid(f"text/part-1/{UID}.json") == UID
    assert member_uid(f"{UID}.j2c") == UID


def test_unusable_json_model_is_a_header_error() -> None:
    header = _header(**{"00280010": {"vr": "US", "Value": ["not a number"]}})
    assert _reason(HeaderError, _write, header) == "invalid_json_model"


# ---------------------------------------------------------------- key tags and hashing


def test_key_tags_are_typed() -> None:
    header = parse_header(json.dumps(_header(**{
        "00080060": {"vr": "CS", "Value": ["CT "]},
        "00080020": {"vr": "DA", "Value": ["20240131"]},
        "00101010": {"vr": "AS", "Value": ["045Y"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane", "Ideographic": "ド^ジェーン"}]},
        "00200013": {"vr": "IS", "Value": [" 12 "]},
        "00280008": {"vr": "IS", "Value": [3]},
        "00282110": {"vr": "CS", "Value": ["01"]},
        "7FE00010": {"vr": "OB", "BulkDataURI": "px/1.j2c"},
    })))
    tags = key_tags(header)
    assert tags["modality"] == "CT"
    assert tags["study_date"] == "20240131" and tags["patient_age"] == "045Y"
    assert tags["instance_number"] == 12 and tags["number_of_frames"] == 3
    assert tags["rows"] == 4 and isinstance(tags["rows"], int)
    assert tags["lossy_image_compression"] == "01"
    assert tags["sop_class_uid"] == SC_IMAGE and tags["header_sop_instance_uid"] == UID
    assert tags["series_instance_uid"] is None and tags["manufacturer"] is None
    assert tags["pixel_ref"] == "px/1.j2c"


def test_key_tags_is_as_string_and_number_agree_and_bad_numbers_are_none() -> None:
    as_string = key_tags(_header(**{"00280008": {"vr": "IS", "Value": ["7"]}}))
    as_number = key_tags(_header(**{"00280008": {"vr": "IS", "Value": [7]}}))
    assert as_string["number_of_frames"] == as_number["number_of_frames"] == 7
    assert key_tags(_header(**{"00280008": {"vr": "IS", "Value": ["seven"]}}))["number_of_frames"] is None
    assert key_tags(_header(**{"00280008": {"vr": "IS", "Value": []}}))["number_of_frames"] is None


def test_canonical_sha256_ignores_order_and_whitespace_but_not_values() -> None:
    a = parse_header(json.dumps(_header()))
    b = parse_header(json.dumps(dict(reversed(list(_header().items()))), indent=4))
    assert canonical_sha256(a) == canonical_sha256(b)
    c = parse_header(json.dumps(_header(**{"00280010": {"vr": "US", "Value": [5]}})))
    assert canonical_sha256(a) != canonical_sha256(c)


# ---------------------------------------------------------------- elements after Pixel Data


def test_elements_above_pixel_data_are_written_after_it_in_ascending_order(tmp_path) -> None:  # noqa: ANN001
    header = _header(**{
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "FFFCFFFC": {"vr": "OB", "InlineBinary": base64.b64encode(b"\0" * 6).decode()},
        "7FE10010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "7FE11001": {"vr": "LO", "Value": ["Müller – ü"]},
        "FFFAFFFA": {"vr": "SQ", "Value": [{"04000015": {"vr": "CS", "Value": ["SHA256"]}}]},
    })
    data = _write(header)
    tag = {name: struct.pack("<HH", g, e) for name, (g, e) in {
        "pixel": (0x7FE0, 0x0010), "private": (0x7FE1, 0x1001), "sig": (0xFFFA, 0xFFFA), "pad": (0xFFFC, 0xFFFC)}.items()}
    positions = [data.index(tag[k]) for k in ("pixel", "private", "sig", "pad")]
    assert positions == sorted(positions)
    ds = dcmread(io.BytesIO(data))
    assert [hex(e.tag) for e in ds][-5:] == ["0x7fe00010", "0x7fe10010", "0x7fe11001", "0xfffafffa", "0xfffcfffc"]
    assert ds.PixelData == PIXELS
    # Strings after Pixel Data are in the dataset's character set too.
    assert ds.get_private_item(0x7FE1, 0x01, "ACME 1.0").value == "Müller – ü"
    assert ds.DigitalSignaturesSequence[0].MACAlgorithm == "SHA256"
    assert ds.DataSetTrailingPadding == b"\0" * 6
    path = tmp_path / "trailing.dcm"
    path.write_bytes(data)
    assert dcmftest_ok(str(path))


def test_stale_encapsulation_elements_from_the_source_do_not_survive() -> None:
    header = _header(**{
        "7FE00001": {"vr": "OV", "InlineBinary": base64.b64encode(bytes(8)).decode()},
        "7FE00002": {"vr": "OV", "InlineBinary": base64.b64encode(b"\x10" + bytes(7)).decode()},
        "7FE00003": {"vr": "UV", "Value": [123456]},
    })
    ds = dcmread(io.BytesIO(_write(header)))
    assert not [e.tag for e in ds if e.tag.group == 0x7FE0 and e.tag.element < 0x0010]
    assert ds.PixelData == PIXELS


# The manifest's hash was always json.dumps's sorted, compact text in UTF-8: the orjson path must give those bytes.
def _reference_sha256(header: Any) -> str:
    import hashlib

    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Numbers orjson and Python format differently, or that orjson cannot hold, and strings that look like them.
AWKWARD_VALUES = [
    1e-05, -1e-05, 0.00009231, 9.9e-05, 1e-4, 1.5e-300, 5e-324, 1e15, 1e16, -1e16, 1.7976931348623157e308, 2.0**63,
    123456789012345.6, 1234567890123456.7, 0.0, -0.0, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64), 10**30,
    float("nan"), float("inf"), None, True, "0e5", "1,2e3", "[1e5", "a\\\"b", "ok\u00e9\U0001f600", "NaN", "null",
    "x" * 20 + "0.00001", "3zjkCtP/sdWagMTIa5escGdgiqV7ARcG", "\u2028\x00\x1f\x7f",
]


@pytest.mark.parametrize("value", AWKWARD_VALUES, ids=repr)
def test_canonical_sha256_is_json_dumps_sha256_for_every_number_form(value: Any) -> None:
    header = {"00180050": {"vr": "DS", "Value": [value, 1.25]}, "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A"}]},
              "7FE00010": {"vr": "OB", "InlineBinary": "AAEC"}, "00081030": {"vr": "LO", "Value": [str(value)]}}
    assert canonical_sha256(header) == _reference_sha256(header)


def test_canonical_sha256_is_json_dumps_sha256_for_random_doubles() -> None:
    rng = __import__("random").Random(20261204)
    doubles = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(3000)]
    doubles += [rng.random() * 10.0 ** rng.randint(-12, 20) for _ in range(3000)]
    for i in range(0, len(doubles), 30):
        header = {"00180050": {"vr": "FD", "Value": doubles[i:i + 30]}}
        assert canonical_sha256(header) == _reference_sha256(header), doubles[i:i + 30]


@pytest.mark.parametrize("text", [
    '{"00280010": {"vr": "US", "Value": [123456789012345678901234567890]}}',  # orjson would read a float
    '{"00280010": {"vr": "US", "Value": [-9999999999999999999]}}',
    '{"00280010": {"vr": "US", "Value": [18446744073709551615]}}',
    '{"00180050": {"vr": "DS", "Value": [NaN, Infinity, -Infinity, 1e400]}}',  # json only
    '{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "\\ud800"}]}}',  # a lone surrogate: json only
    '{"00080018": {"vr": "UI", "Value": ["1.2"]}, "00080018": {"vr": "UI", "Value": ["1.3"]}}',  # the last wins
    '{"00180050": {"vr": "DS", "Value": [1E5, 0.1, -0.0, 2.5e-7]}}',
    ' \n{"00081030": {"vr": "LO", "Value": ["2.25.123456789012345678901234567890"]}}\t',
])
def test_parse_header_gives_what_json_loads_gives(text: str) -> None:
    got = parse_header(text)
    want = json.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert [type(v) for e in got.values() for v in e["Value"]] == [type(v) for e in want.values() for v in e["Value"]]
    assert parse_header(text.encode("utf-8") if "\\ud800" not in text else text) is not None


def _depth(obj: Any) -> int:
    """How deep lists and objects nest, by walking the parsed object (the reference)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack += [(c, level + 1) for c in (node.values() if isinstance(node, dict) else node)]
    return deepest


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='[]{}"\\x', max_size=3), inner,
                                                                 max_size=4),
    max_leaves=30)


@given(JSON_VALUES, st.sampled_from([None, 0, 2]))
def test_the_nesting_depth_read_from_the_text_is_the_parsed_objects(value: Any, indent: int | None) -> None:
    from dicom_reassembly.dicom.dicom_json import _json_depth

    data = json.dumps(value, indent=indent, ensure_ascii=False).encode("utf-8")
    got = _json_depth(data)
    assert got is None and b'\\"' in data or got == _depth(value)


@pytest.mark.parametrize("levels", [195, 196, 197, 400])
@pytest.mark.parametrize("string", ['"]]]]"', '"[[[["', '"a\\"]"'])
def test_too_deep_is_decided_on_the_nesting_whatever_strings_hold(levels: int, string: str) -> None:
    from dicom_reassembly.dicom.header_rules import MAX_JSON_DEPTH

    text = '{"00081030": {"vr": "LO", "Value": [' + "[" * (levels - 3) + string + "]" * (levels - 3) + "]}}"
    assert _depth(json.loads(text)) == levels
    if levels > MAX_JSON_DEPTH:
        with pytest.raises(HeaderError) as err:
            parse_header(text)
        assert err.value.reason == "too_deep"
    else:
        assert parse_header(text)["00081030"]["vr"] == "LO"
