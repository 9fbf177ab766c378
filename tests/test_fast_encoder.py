"""Differential tests: the fast header encoder against the pydicom path, byte for byte.

The reference is always pydicom (``build_dataset`` + ``part10.encode_header_pydicom``, or
``assemble(..., fast=False)``); the fast encoder is never compared with itself. Each test also
checks that the fast path actually ran, so a fast path that silently always falls back fails.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import string
import struct
import tarfile
from typing import Any

import pytest
from helpers import dcmftest_ok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import DicomDictionary
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from dicom_reassembly.dicom import fast_encoder
from dicom_reassembly.dicom.dicom_json import build_dataset, check_identity, parse_header
from dicom_reassembly.dicom.part10 import assemble, encode_header_pydicom
from dicom_reassembly.errors import HeaderError, ReassemblyError

EXPLICIT_LE = "1.2.840.10008.1.2.1"
TRANSFER_SYNTAXES = (EXPLICIT_LE, "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def reference(header: dict[str, Any], uid: str, ts: str, extended: dict[str, bytes] | None = None,
              pixel_member: str | None = None) -> tuple[bytes, bytes] | str:
    """pydicom's (head, tail) for a header, or the HeaderError reason it raises."""
    try:
        ds, meta = build_dataset(header, uid, pixel_member)
        sop_class, _ = check_identity(header, uid)
        return encode_header_pydicom(ds, meta, sop_class, uid, ts, extended)
    except HeaderError as exc:
        return exc.reason


def fast(header: dict[str, Any], uid: str, ts: str, extended: dict[str, bytes] | None = None,
         pixel_member: str | None = None) -> tuple[bytes, bytes] | str | None:
    """The fast encoder's (head, tail), None when it falls back, or the HeaderError reason it raises."""
    try:
        body = fast_encoder.encode_body(header, uid, pixel_member)
    except HeaderError as exc:
        return exc.reason
    return None if body is None else body.part10_header(ts, extended)


# ---------------------------------------------------------------- the sample deliveries


def _sample_instances(delivery: tuple[str, dict]) -> list[tuple[str, dict, bytes, bytes]]:
    """(member uid, instance, header bytes, pixel bytes) for every instance whose members can be read."""
    root, expected = delivery
    out = []
    for _uid, inst in sorted(expected["instances"].items()):
        if not inst.get("header") or not inst.get("pixels"):
            continue
        members = []
        for archive, member in (inst["header"], inst["pixels"]):
            try:
                with tarfile.open(os.path.join(root, archive)) as tf:
                    f = tf.extractfile(member)
                    members.append(f.read() if f else None)
            except (tarfile.TarError, KeyError, OSError):
                members.append(None)
        if None in members:
            continue  # an unreadable archive on purpose: no header to encode
        member_uid = inst["header"][1].rsplit("/", 1)[-1][: -len(".json")]
        out.append((member_uid, inst, members[0], members[1]))
    return out


def _outcome(header: bytes, payload: bytes, uid: str, pixel_member: str, use_fast: bool) -> bytes | tuple[str, str]:
    try:
        return assemble(header, payload, uid, pixel_member, fast=use_fast).tobytes()
    except ReassemblyError as exc:
        return type(exc).__name__, exc.reason


def test_every_sample_instance_is_byte_identical_to_the_pydicom_path(sample_delivery: tuple[str, dict],
                                                                       damaged_delivery: tuple[str, dict]) -> None:
    used_fast = valid = 0
    compared = 0
    for delivery in (sample_delivery, damaged_delivery):
        for uid, inst, header, payload in _sample_instances(delivery):
            pixel_member = inst["pixels"][1]
            ours = _outcome(header, payload, uid, pixel_member, True)
            theirs = _outcome(header, payload, uid, pixel_member, False)
            # Damaged instances must fail with the same reason on both paths.
            assert ours == theirs, (inst.get("variant"), inst.get("case"))
            compared += 1
            if isinstance(theirs, bytes):
                valid += 1
                used_fast += fast_encoder.encode_body(parse_header(header), uid, pixel_member) is not None
    assert compared >= 40 and valid >= 30
    assert used_fast >= 0.8 * valid, f"fast path ran on only {used_fast} of {valid} valid samples"


def test_fast_path_outputs_are_part10_per_dcmtk(sample_delivery: tuple[str, dict], tmp_path) -> None:  # noqa: ANN001
    seen = set()
    checked = 0
    for uid, inst, header, payload in _sample_instances(sample_delivery):
        if inst["variant"] in seen or inst["status"] != "written":
            continue
        seen.add(inst["variant"])
        assert fast_encoder.encode_body(parse_header(header), uid, inst["pixels"][1]) is not None, inst["variant"]
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(assemble(header, payload, uid, inst["pixels"][1]).tobytes())
        assert dcmftest_ok(str(path)), inst["variant"]
        checked += 1
        if checked == 5:
            break
    assert checked == 5


# ---------------------------------------------------------------- hand-made headers


def _uid_elem(uid: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [uid]}


def _base(uid: str = "1.2.3.4") -> dict[str, Any]:
    return {"00080016": _uid_elem(CT_IMAGE), "00080018": _uid_elem(uid)}


def _every_shape() -> dict[str, Any]:
    header = _base()
    header.update({
        "00020016": {"vr": "AE", "Value": ["SENDER"]},
        "00020100": {"vr": "UI", "Value": ["1.2.3.99"]},
        "00020102": {"vr": "OB", "InlineBinary": base64.b64encode(b"abc").decode()},
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", None, "AXIAL"]},
        "00080020": {"vr": "DA", "Value": ["20240101"]},
        "00080030": {"vr": "TM", "Value": ["101010.5"]},
        "00080050": {"vr": "SH"},
        "00080060": {"vr": "CS", "Value": []},
        "00080070": {"vr": "LO", "Value": ["Ünïcödé 山田"]},
        "00080090": {"vr": "PN", "Value": [None]},
        "00081030": {"vr": "LO", "Value": ["odd"]},
        "00081140": {"vr": "SQ", "Value": [
            {"00081150": _uid_elem("1.2.840.10008.5.1.4.1.1.2 "), "00081155": {"vr": "UI", "Value": ["1.2", "1.3"]}},
            None,
            {"00089215": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X"]}}, {}]}},
        ]},
        "00081250": {"vr": "SQ", "Value": []},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                            "Phonetic": "やまだ^たろう"}, {"Alphabetic": "B^", "Phonetic": ""}, {}]},
        "00101010": {"vr": "AS", "Value": ["042Y"]},
        "00181050": {"vr": "DS", "Value": [0.661468, 1e-05, 3, "1", " 2.50 ", 1e16]},
        "00200013": {"vr": "IS", "Value": [3.7, "0012", " +5 "]},
        "00200032": {"vr": "DS", "Value": [None]},
        "00204000": {"vr": "LT", "Value": ["line 1\r\nline \\ 2"]},
        "00209165": {"vr": "AT", "Value": ["00100010", "7FE00010"]},
        "00280010": {"vr": "US", "Value": [512]},
        "00280030": {"vr": "DS", "Value": ["0.5", "0.5"]},
        "00283002": {"vr": "SS", "Value": [40000, -2, 16]},
        "00283006": {"vr": "OW", "InlineBinary": [base64.b64encode(b"\x01\x02\x03").decode()]},
        "00189219": {"vr": "FD", "Value": [1.5, -2]},
        "00189218": {"vr": "FL", "Value": [0.1]},
        "00189087": {"vr": "FD"},
        "00400244": {"vr": "DA", "Value": [""]},
        "00660040": {"vr": "OL", "InlineBinary": base64.b64encode(b"\x00" * 8).decode()},
        "00720076": {"vr": "UV", "Value": [2**64 - 1]},
        "00720078": {"vr": "SV", "Value": [-(2**63)]},
        "00091010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00091001": {"vr": "UN", "InlineBinary": base64.b64encode(b"\x00\x01\x02").decode()},
        "00091002": {"vr": "SL", "Value": [-1, 2]},
        "00091003": {"vr": "UL", "Value": ["7"]},
        "7FE00001": {"vr": "OV", "InlineBinary": base64.b64encode(b"\x00" * 8).decode()},  # stale: dropped
        "7FE00010": {"vr": "OW", "BulkDataURI": "1.2.3.4.j2c"},  # ours: dropped
        "7FE00020": {"vr": "OW", "InlineBinary": base64.b64encode(b"\x09").decode()},
        "FFFAFFFA": {"vr": "SQ", "Value": [{"00400441": {"vr": "SQ", "Value": [{}]}}]},
        "FFFCFFFC": {"vr": "OB", "InlineBinary": base64.b64encode(b"\x00" * 5).decode()},
    })
    return header


@pytest.mark.parametrize("extended", [None, {"offsets": struct.pack("<2Q", 0, 1 << 33),
                                             "lengths": struct.pack("<2Q", 1 << 33, 10)}])
@pytest.mark.parametrize("ts", [EXPLICIT_LE, "1.2.840.10008.1.2.4.91"])
def test_every_handled_shape_takes_the_fast_path_with_identical_bytes(ts: str, extended: dict | None) -> None:
    header = _every_shape()
    ours = fast(header, "1.2.3.4", ts, extended, "1.2.3.4.j2c")
    assert ours is not None, "the fast path fell back on shapes it is meant to handle"
    theirs = reference(header, "1.2.3.4", ts, extended, "1.2.3.4.j2c")
    assert isinstance(theirs, tuple) and theirs[1], "elements above Pixel Data must be in the tail"
    assert ours == theirs


@pytest.mark.parametrize(("charset", "written"), [(None, "ISO_IR 192"), ("", "ISO_IR 192"), ("ISO_IR 100", "ISO_IR 100"),
                                                  ("ISO_IR 192", "ISO_IR 192")])
def test_non_ascii_text_is_encoded_in_the_declared_or_added_character_set(charset: str | None, written: str) -> None:
    # Without a declared character set, non-ASCII text gets ISO_IR 192 (UTF-8), never ISO 8859-1 undeclared.
    header = _with({"00080080": {"vr": "LO", "Value": ["Hôpital Saint-Louis"]},
                    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
                    "00080060": {"vr": "CS", "Value": ["CT"]},
                    "00081140": {"vr": "SQ", "Value": [{"00081030": {"vr": "LO", "Value": ["Crâne"]}}]}}, charset)
    ours = fast(header, "1.2.3.4", EXPLICIT_LE)
    assert isinstance(ours, tuple), ours
    assert ours == reference(header, "1.2.3.4", EXPLICIT_LE)
    ds = dcmread(io.BytesIO(ours[0] + ours[1]))
    assert ds.SpecificCharacterSet == written
    assert ds.InstitutionName == "Hôpital Saint-Louis" and ds.ReferencedImageSequence[0].StudyDescription == "Crâne"
    assert "Hôpital Saint-Louis".encode("utf-8" if written == "ISO_IR 192" else "latin-1") in ours[0]


def test_identity_errors_are_raised_like_build_dataset() -> None:
    header = _base("1.2.3.4")
    assert fast(header, "1.2.3.5", EXPLICIT_LE) == reference(header, "1.2.3.5", EXPLICIT_LE) == "uid_mismatch"


def _with(extra: dict[str, Any], charset: str | None = None) -> dict[str, Any]:
    header = _base()
    if charset is not None:
        header["00080005"] = {"vr": "CS", "Value": [charset]}
    header.update(extra)
    return header


FALLBACKS = {
    "bulkdata-elsewhere": _with({"00283006": {"vr": "OW", "BulkDataURI": "http://x/other"}}),
    "bulkdata-pixels-elsewhere": _with({"7FE00010": {"vr": "OW", "BulkDataURI": "http://x/1.2.3.4.5"}}),
    "iso2022-charset": _with({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada"}]}}, "ISO 2022 IR 87"),
    "nested-charset": _with({"00081140": {"vr": "SQ", "Value": [{"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}]}}),
    "group-length": _with({"00080000": {"vr": "UL", "Value": [10]}}),
    "un-on-public-tag": _with({"00081030": {"vr": "UN", "InlineBinary": base64.b64encode(b"ab").decode()}}),
    "un-private-creator": _with({"00090010": {"vr": "UN", "InlineBinary": base64.b64encode(b"ACME").decode()}}),
    "ambiguous-vr": _with({"00280106": {"vr": "US or SS", "Value": [0]}}),
    "too-long-for-16-bit-length": _with({"00081030": {"vr": "LT", "Value": ["x" * 70000]}}),
    "ds-not-a-number": _with({"00280030": {"vr": "DS", "Value": ["abc"]}}),
    "pn-as-string": _with({"00100010": {"vr": "PN", "Value": ["Doe^John"]}}),
    "value-not-a-list": _with({"00081030": {"vr": "LO", "Value": "text"}}),
    "two-value-keys": _with({"00283006": {"vr": "OW", "Value": [1], "InlineBinary": "AAA="}}),
    "no-vr": _with({"00081030": {"Value": ["x"]}}),
    "keyword-key": _with({"PatientName": {"vr": "PN", "Value": [{"Alphabetic": "A"}]}}),
    "lower-case-nested-key": _with({"00081140": {"vr": "SQ", "Value": [{"0008115a": {"vr": "CS", "Value": ["X"]}}]}}),
    "us-out-of-range": _with({"00280010": {"vr": "US", "Value": [70000]}}),
    "command-group": _with({"00000000": {"vr": "UL", "Value": [0]}}),
    "meta-version-other-vr": _with({"00020001": {"vr": "OW", "InlineBinary": "AAE="}}),
}


@pytest.mark.parametrize("case", sorted(FALLBACKS))
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_shapes_it_does_not_reproduce_fall_back_to_pydicom(case: str) -> None:
    header = FALLBACKS[case]
    assert fast(header, "1.2.3.4", EXPLICIT_LE) is None
    # Whatever pydicom makes of it is what assemble delivers.
    reference(header, "1.2.3.4", EXPLICIT_LE)


def _nest(levels: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """``leaf`` inside ``levels`` nested sequence items, built without recursion."""
    elem = leaf
    for _ in range(levels):
        elem = {"00081140": {"vr": "SQ", "Value": [elem]}}
    return elem


# Headers the rules refuse: both paths raise the same HeaderError, before either encodes anything.
REFUSED = {
    "non-latin1-under-iso-ir-100": (_with({"00081030": {"vr": "LO", "Value": ["山田"]}}, "ISO_IR 100"), "unencodable_text"),
    "non-ascii-under-iso-ir-6": (_with({"00081030": {"vr": "LO", "Value": ["Crâne"]}}, "ISO_IR 6"), "unencodable_text"),
    "non-ascii-string-vr": (_with({"00080060": {"vr": "CS", "Value": ["É"]}}), "unencodable_text"),
    "non-latin1-string-vr-under-utf8": (_with({"00080060": {"vr": "CS", "Value": ["山"]}}, "ISO_IR 192"), "unencodable_text"),
    "surrogate-under-utf8": (_with({"00081030": {"vr": "LO", "Value": ["\ud800"]}}, "ISO_IR 192"), "unencodable_text"),
    "surrogate-without-charset": (_with({"00081030": {"vr": "LO", "Value": ["\ud800"]}}), "unencodable_text"),
    "sop-class-multi-valued": ({"00080016": {"vr": "UI", "Value": [CT_IMAGE, "1.2"]}, "00080018": _uid_elem("1.2.3.4")},
                               "invalid_vm"),
    "sop-instance-multi-valued": ({"00080016": _uid_elem(CT_IMAGE), "00080018": {"vr": "UI", "Value": ["1.2.3.4", "1.2.3.5"]}},
                                  "invalid_vm"),
    "study-multi-valued": (_with({"0020000D": {"vr": "UI", "Value": ["1.2", None]}}), "invalid_vm"),
    "ui-backslash": (_with({"00081155": {"vr": "UI", "Value": ["1.2\\1.3"]}}), "invalid_uid_value"),
    "ui-nul": (_with({"0020000E": _uid_elem("1.2.3\x004")}), "invalid_uid_value"),
    "ui-trailing-newline": (_with({"0020000D": _uid_elem("1.2.3\n")}), "invalid_uid_value"),
    "nested-ui-nul": (_with({"00081140": {"vr": "SQ", "Value": [{"00081155": _uid_elem("1.2\x00")}]}}), "invalid_uid_value"),
    "group-0001": (_with({"00010010": {"vr": "LO", "Value": ["X"]}}), "reserved_group"),
    "group-0003": (_with({"00031000": {"vr": "UN", "InlineBinary": "AAA="}}), "reserved_group"),
    "group-0005": (_with({"00050010": {"vr": "LO", "Value": ["X"]}}), "reserved_group"),
    "group-0007": (_with({"00071000": {"vr": "SH", "Value": ["X"]}}), "reserved_group"),
    "group-ffff": (_with({"FFFF0010": {"vr": "LO", "Value": ["X"]}}), "reserved_group"),
    "nested-group-0003": (_with({"00081140": {"vr": "SQ", "Value": [{"00030010": {"vr": "LO", "Value": ["X"]}}]}}),
                          "reserved_group"),
    "bits-allocated-12": (_with({"00280100": {"vr": "US", "Value": [12]}}), "invalid_bits_allocated"),
    "bits-allocated-0": (_with({"00280100": {"vr": "US", "Value": [0]}}), "invalid_bits_allocated"),
    "interior-null-us": (_with({"00181310": {"vr": "US", "Value": [128, None, 0, 32]}}), "null_in_value"),
    "interior-null-at": (_with({"00209165": {"vr": "AT", "Value": [None, "00100010"]}}), "null_in_value"),
    "nested-interior-null-fd": (_with({"00081140": {"vr": "SQ", "Value": [{"00189219": {"vr": "FD", "Value": [None, 1.0]}}]}}),
                                "null_in_value"),
    "sequences-65-deep": (_with(_nest(65, {"00081030": {"vr": "LO", "Value": ["deep"]}})), "too_deep"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_headers_the_rules_refuse_are_refused_alike_by_both_paths(case: str) -> None:
    header, reason = REFUSED[case]
    assert fast(header, "1.2.3.4", EXPLICIT_LE) == reference(header, "1.2.3.4", EXPLICIT_LE) == reason


# Shapes the rules make writable, which the fast path now takes too.
NORMALISED = {
    "non-latin1-without-charset": _with({"00081030": {"vr": "LO", "Value": ["山田"]}}),
    "non-latin1-under-empty-charset": _with({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Иванов^Иван"}]}}, ""),
    "ds-null-in-multi": _with({"00280030": {"vr": "DS", "Value": [None, 1.0]}, "00200013": {"vr": "IS", "Value": [4, None]}}),
    "ds-all-null": _with({"00280030": {"vr": "DS", "Value": [None, None]}}),
    "us-trailing-nulls": _with({"00181310": {"vr": "US", "Value": [128, 0, 0, 32, None]}}),
    "at-fd-only-nulls": _with({"00209165": {"vr": "AT", "Value": [None]}, "00189219": {"vr": "FD", "Value": [None, None]}}),
    "nested-trailing-null": _with({"00081140": {"vr": "SQ", "Value": [
        {"00081150": _uid_elem(CT_IMAGE)},
        {"00081160": {"vr": "IS", "Value": [1]},
         "00089215": {"vr": "SQ", "Value": [{"00189219": {"vr": "FD", "Value": [1.5, None]}}]}}]}}),
    "empty-pixel-bulkdata-uri": _with({"7FE00010": {"vr": "OW", "BulkDataURI": ""}}),
    "sequences-64-deep": _with(_nest(64, {"00081030": {"vr": "LO", "Value": ["deep"]}})),
}


@pytest.mark.parametrize("case", sorted(NORMALISED))
def test_normalised_shapes_take_the_fast_path_with_identical_bytes(case: str) -> None:
    header = NORMALISED[case]
    snapshot = json.dumps(header, sort_keys=True)
    ours = fast(header, "1.2.3.4", EXPLICIT_LE)
    assert isinstance(ours, tuple), ours
    assert ours == reference(header, "1.2.3.4", EXPLICIT_LE)
    assert json.dumps(header, sort_keys=True) == snapshot, "normalising modified the caller's header"


def test_long_vrs_match_pydicom() -> None:
    assert {str(vr.value) for vr in EXPLICIT_VR_LENGTH_32} == fast_encoder.LONG_VRS


# ---------------------------------------------------------------- generated headers

HANDLED_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT",
               "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT", "OB", "OD", "OF", "OL", "OV", "OW", "SQ")
# Tags the cases set themselves, and tags whose random values the header rules would refuse (VM 1 UIDs,
# BitsAllocated): generated headers are valid by construction, so a refusal is a false positive of the rules.
EXCLUDED_TAGS = {0x00080005, 0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00280100, 0x7FE00001, 0x7FE00002,
                 0x7FE00003, 0x7FE00008, 0x7FE00009, 0x7FE00010}
TAGS_BY_VR = {vr: sorted(t for t, entry in DicomDictionary.items()
                         if entry[0] == vr and t >> 16 >= 8 and t & 0xFFFF and t >> 16 != 0xFFFE
                         and t not in EXCLUDED_TAGS)
              for vr in HANDLED_VRS}
TAGS_BY_VR = {vr: tags for vr, tags in TAGS_BY_VR.items() if tags}
PLAIN = string.ascii_letters + string.digits + " .-_^,;:/()+*&%$#@!?'\"<>[]{}|~`"
LATIN1 = "éüñßÆøÅ"
WIDE = "山田太郎やまだ"
# Text each character set can carry. None declared (absent or empty) takes any text: non-ASCII makes it ISO_IR 192.
CHARSETS = {None: PLAIN + LATIN1 + WIDE, "": PLAIN + WIDE, "ISO_IR 6": PLAIN, "ISO_IR 100": PLAIN + LATIN1,
            "ISO_IR 192": PLAIN + LATIN1 + WIDE}


def _text(alphabet: str, max_size: int = 16) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.sampled_from(alphabet), max_size=max_size)


def _value_strategy(vr: str, alphabet: str, depth: int = 0) -> st.SearchStrategy[Any]:
    """One value of ``vr`` as the DICOM JSON model carries it (UIDs below the top level may carry spaces)."""
    digits = st.from_regex(r"[0-9]{1,14}", fullmatch=True)
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "AE": _text(PLAIN, 16),
        "AS": st.from_regex(r"[0-9]{3}[DWMY]", fullmatch=True),
        "CS": _text(string.ascii_uppercase + string.digits + " _", 16),
        "DA": st.from_regex(r"[0-9]{8}", fullmatch=True),
        "DT": digits,
        "TM": st.from_regex(r"[0-9]{2,6}(\.[0-9]{1,6})?", fullmatch=True),
        "UR": _text(string.ascii_letters + string.digits + ":/.?=&%-_~", 40),
        "LO": _text(alphabet, 64),
        "SH": _text(alphabet, 16),
        "UC": _text(alphabet, 80),
        "LT": _text(alphabet + "\\\r\n", 200),
        "ST": _text(alphabet + "\\\r\n", 200),
        "UT": _text(alphabet + "\\\r\n", 300),
        "UI": st.from_regex(r"[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){1,5}" + (" ?" if depth else ""), fullmatch=True),
        "PN": st.fixed_dictionaries({}, optional={
            "Alphabetic": _text(alphabet + "^=", 20), "Ideographic": _text(alphabet + "^", 20),
            "Phonetic": _text(alphabet + "^", 20)}),
        "DS": st.one_of(st.floats(width=64), st.integers(-10**9, 10**9),
                        st.from_regex(r" ?-?[0-9]{1,5}(\.[0-9]{1,6})?([eE]-?[0-9]{1,2})? ?", fullmatch=True)),
        "IS": st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(-1e6, 1e6),
                        st.from_regex(r" ?[+-]?0*[0-9]{1,9} ?", fullmatch=True)),
        "US": st.integers(0, 2**16 - 1), "SS": st.integers(-2**15, 2**15 - 1),
        "UL": st.integers(0, 2**32 - 1), "SL": st.integers(-2**31, 2**31 - 1),
        "UV": st.integers(0, 2**64 - 1), "SV": st.integers(-2**63, 2**63 - 1),
        "FL": st.floats(width=32), "FD": st.one_of(st.floats(), st.integers(-10**6, 10**6)),
        "AT": st.integers(0, 2**32 - 1).map(lambda t: f"{t:08X}"),
    }
    return strategies[vr]


@st.composite
def elements(draw: st.DrawFn, vr: str, alphabet: str, depth: int) -> dict[str, Any]:
    """One element of ``vr``: empty forms, single and multiple values, items, InlineBinary."""
    form = draw(st.sampled_from(("value", "value", "value", "value", "value", "absent", "empty-list", "null")))
    if form == "absent":
        return {"vr": vr}
    if form == "empty-list":
        return {"vr": vr, "Value": []}
    if form == "null" and vr != "SQ":
        return {"vr": vr, "Value": [None]}
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW"):
        b64 = base64.b64encode(draw(st.binary(max_size=33))).decode()
        return {"vr": vr, "InlineBinary": draw(st.sampled_from((b64, [b64])))}
    if vr == "SQ":
        items = draw(st.lists(st.one_of(st.none(), datasets(alphabet, depth + 1)), max_size=3))
        return {"vr": vr, "Value": items}
    values = draw(st.lists(_value_strategy(vr, alphabet, depth), min_size=1, max_size=4))
    if vr in ("AE", "AS", "CS", "DA", "DT", "TM", "UR", "LO", "SH", "UC", "PN", "DS", "IS") and len(values) > 1:
        # null in a string VR: an empty value at its position (PS3.18 F.2.5)
        values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from((None, values[0])))
    elif vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT") and draw(st.integers(0, 3)) == 0:
        values += [None] * draw(st.integers(1, 2))  # trailing nulls in a binary VR are dropped
    return {"vr": vr, "Value": values}


@st.composite
def private_block(draw: st.DrawFn, alphabet: str, depth: int) -> dict[str, Any]:
    """A private creator and a few elements in its block, UN among them."""
    group = draw(st.sampled_from((0x0009, 0x0011, 0x0029, 0x7FE1)))
    block = draw(st.integers(0x10, 0x12))
    out: dict[str, Any] = {f"{group:04X}{block:04X}": {"vr": "LO", "Value": [draw(_text(PLAIN, 20)) or "ACME"]}}
    for element in draw(st.sets(st.integers(0, 0xFF), max_size=4)):
        key = f"{group:04X}{(block << 8) | element:04X}"
        vr = draw(st.sampled_from(("UN", "LO", "DS", "US", "SQ" if depth < 2 else "SH", "OB")))
        if vr == "UN":
            out[key] = {"vr": "UN", "InlineBinary": base64.b64encode(draw(st.binary(max_size=9))).decode()}
        else:
            out[key] = draw(elements(vr, alphabet, depth))
    return out


@st.composite
def datasets(draw: st.DrawFn, alphabet: str, depth: int = 0) -> dict[str, Any]:
    """A dataset of random dictionary tags across the handled VRs (no SQ below depth 2)."""
    vrs = [vr for vr in TAGS_BY_VR if vr != "SQ" or depth < 2]
    out: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 12 if depth == 0 else 4))):
        vr = draw(st.sampled_from(vrs))
        tag = draw(st.sampled_from(TAGS_BY_VR[vr]))
        out[f"{tag:08X}"] = draw(elements(vr, alphabet, depth))
    if draw(st.integers(0, 3)) == 0:
        out.update(draw(private_block(alphabet, depth)))
    return out


# Rare shapes the fast path must hand to pydicom (or reproduce exactly).
ODD_SHAPES = [
    {"00283006": {"vr": "OW", "BulkDataURI": "http://elsewhere/x"}},
    {"00081030": {"vr": "LO", "Value": ["\ud800"]}},
    {"00280030": {"vr": "DS", "Value": ["1\\2"]}},
    {"00100010": {"vr": "PN", "Value": ["Doe^John"]}},
    {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A=\\B"}]}},
    {"00081155": {"vr": "UI", "Value": [" 1.2 \\ 1.3 "]}},
    {"00200013": {"vr": "IS", "Value": ["1.5"]}},
    {"00280010": {"vr": "US", "Value": [-1]}},
    {"00189218": {"vr": "FL", "Value": [1e300]}},
    {"00081140": {"vr": "SQ", "Value": [{"00080005": {"vr": "CS", "Value": ["ISO_IR 100"]}}]}},
    {"00080000": {"vr": "UL", "Value": [4]}},
    {"00081030": {"vr": "UN", "InlineBinary": "YWI="}},
    {"00209165": {"vr": "AT", "Value": ["0x00100010"]}},
]


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, dict[str, bytes] | None]:
    """(header, uid, transfer syntax, extended offsets)."""
    charset = draw(st.sampled_from(list(CHARSETS)))
    header = draw(datasets(CHARSETS[charset]))
    uid = draw(st.from_regex(r"1\.2\.[1-9][0-9]{0,20}(\.[1-9][0-9]{0,5}){0,3}", fullmatch=True))
    header["00080016"] = _uid_elem(draw(st.sampled_from((CT_IMAGE, "1.2.840.10008.5.1.4.1.1.4"))))
    header["00080018"] = _uid_elem(uid)
    if charset is not None:
        header["00080005"] = {"vr": "CS", "Value": [charset]}
    if draw(st.booleans()):
        header["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{uid}.j2c"}
    if draw(st.booleans()):
        header["7FE00001"] = {"vr": "OV", "InlineBinary": base64.b64encode(b"\x00" * 8).decode()}
    if draw(st.booleans()):
        header.update(draw(st.fixed_dictionaries({}, optional={
            "00020000": st.just({"vr": "UL", "Value": [123]}),
            "00020001": st.just({"vr": "OB", "InlineBinary": "AAE="}),
            "00020013": st.just({"vr": "SH", "Value": ["OTHER_WRITER"]}),
            "00020016": st.builds(lambda t: {"vr": "AE", "Value": [t]}, _text(string.ascii_uppercase, 16)),
            "00020100": st.just(_uid_elem("1.2.3.99")),
            "00020102": st.builds(lambda b: {"vr": "OB", "InlineBinary": base64.b64encode(b).decode()},
                                  st.binary(max_size=7)),
        })))
    ts = draw(st.sampled_from(TRANSFER_SYNTAXES))
    extended = None
    if draw(st.booleans()):
        n = draw(st.integers(1, 4))
        extended = {"offsets": struct.pack(f"<{n}Q", *draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n))),
                    "lengths": struct.pack(f"<{n}Q", *draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)))}
    return header, uid, ts, extended


def _compare(header: dict[str, Any], uid: str, ts: str, extended: dict[str, bytes] | None) -> str:
    """Assert the fast path matches pydicom or falls back: "fast", "fallback" or "refused" (the same HeaderError)."""
    snapshot = json.dumps(header, sort_keys=True, default=repr)
    ours = fast(header, uid, ts, extended, f"{uid}.j2c")
    assert json.dumps(header, sort_keys=True, default=repr) == snapshot, "the fast path modified the header"
    if ours is None:
        return "fallback"
    assert ours == reference(header, uid, ts, extended, f"{uid}.j2c")
    return "refused" if isinstance(ours, str) else "fast"


HYPOTHESIS = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])


def test_generated_headers_are_byte_identical_and_rarely_fall_back() -> None:
    stats: collections.Counter[str] = collections.Counter()

    @settings(HYPOTHESIS, max_examples=300)
    @given(case=cases())
    def check(case: tuple[dict[str, Any], str, str, dict[str, bytes] | None]) -> None:
        stats[_compare(*case)] += 1

    check()
    total = stats["fast"] + stats["fallback"] + stats["refused"]
    assert total >= 300
    assert stats["refused"] == 0, stats  # every generated header is valid: the rules must refuse none
    assert stats["fallback"] <= 0.05 * total, stats


def test_generated_headers_with_an_odd_shape_fall_back_or_are_byte_identical() -> None:
    stats: collections.Counter[str] = collections.Counter()

    @settings(HYPOTHESIS, max_examples=100)
    @given(case=cases(), odd=st.sampled_from(ODD_SHAPES))
    def check(case: tuple[dict[str, Any], str, str, dict[str, bytes] | None], odd: dict[str, Any]) -> None:
        header, uid, ts, extended = case
        stats[_compare({**header, **odd}, uid, ts, extended)] += 1

    check()
    assert stats["fallback"] + stats["refused"] >= 0.8 * sum(stats.values()), stats


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | _text(PLAIN + LATIN1 + WIDE + "\\=^\x00", 12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(("Alphabetic", "Ideographic", "Phonetic", "vr", "Value", "00100010")), children, max_size=3),
    max_leaves=6)


@st.composite
def chaotic_elements(draw: st.DrawFn) -> tuple[str, Any]:
    """An element whose VR, keys and values may be anything the JSON model can carry."""
    vr = draw(st.sampled_from((*HANDLED_VRS, "UN", "US or SS", "XX", "cs")))
    tag = draw(st.sampled_from(TAGS_BY_VR.get(vr, TAGS_BY_VR["LO"]) + [0x00091001, 0x00090010, 0x00100000]))
    key = f"{tag:08X}" if draw(st.integers(0, 9)) else f"{tag:08x}"
    elem: dict[str, Any] = {"vr": vr}
    value_key = draw(st.sampled_from(("Value", "Value", "Value", "InlineBinary", None)))
    if value_key == "InlineBinary":
        elem[value_key] = draw(st.one_of(st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode()),
                                         _text(string.ascii_letters + "=!", 6)))
    elif value_key == "Value":
        elem[value_key] = draw(st.one_of(st.lists(ANY_JSON, max_size=3),
                                         st.lists(_value_strategy(vr, PLAIN + LATIN1), max_size=3)
                                         if vr in TAGS_BY_VR and vr not in ("SQ", "OB", "OD", "OF", "OL", "OV", "OW")
                                         else ANY_JSON))
    return key, elem


def test_chaotic_headers_fall_back_or_are_byte_identical() -> None:
    stats: collections.Counter[str] = collections.Counter()

    @settings(HYPOTHESIS, max_examples=150)
    @given(case=cases(), extra=st.lists(chaotic_elements(), min_size=1, max_size=3))
    def check(case: tuple[dict[str, Any], str, str, dict[str, bytes] | None], extra: list[tuple[str, Any]]) -> None:
        header, uid, ts, extended = case
        header = {**header, **dict(extra)}
        stats[_compare(header, uid, ts, extended)] += 1

    check()
    assert stats["fast"] and stats["fallback"], stats
