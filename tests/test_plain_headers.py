"""The header rules' short walk for plain texts (ASCII, no escapes, no null) against their whole walk: the same
header back, or the same error with the same detail, on generated headers near every rule's edge."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files

from dicom_reassembly.dicom import header_rules
from dicom_reassembly.dicom.dicom_json import parse_header
from dicom_reassembly.dicom.header_rules import MAX_SEQUENCE_DEPTH, check_header
from dicom_reassembly.errors import HeaderError

GOOD_UID = "1.2.826.0.1.3680043.10.543.7"
UIDS = st.sampled_from([GOOD_UID, "1.2.03.4", "1.2.3.", "", " 1.2.3", "1.2.3\x7f", "1." + "2" * 70, "1.2.3"])
KEYS = st.sampled_from(["00080016", "00080018", "0020000D", "0020000E", "00280100", "00020003", "00020010",
                        "00081150", "00100010", "00080060", "00181310", "00090010", "00010010", "00070010",
                        "FFFF0010", "ffff0010", "fFfF0010", "00081140"])
VRS = st.sampled_from(["UI", "CS", "US", "LO", "PN", "DS", "SQ", "XX", None])
SCALARS = st.one_of(UIDS, st.integers(-3, 70), st.sampled_from([8.0, 12, 16, True, None, "CT", "Müller", "a\\b"]))


def _element(vr: str | None, values: list[Any]) -> Any:
    elem: dict[str, Any] = {} if vr is None else {"vr": vr}
    if values:
        elem["Value"] = values
    return elem


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A dataset near every rule's edge; mostly plain, so the short walk is taken as often as not."""
    out: dict[str, Any] = {}
    for key in draw(st.lists(KEYS, max_size=6, unique=True)):
        vr = draw(VRS)
        if vr == "SQ" and depth < 3:
            out[key] = _element("SQ", draw(st.lists(datasets(depth + 1), max_size=2)))
        elif draw(st.integers(0, 9)) == 0:
            out[key] = draw(st.sampled_from(["text", 7, [1, 2]]))  # not an element at all
        else:
            out[key] = _element(vr, draw(st.lists(SCALARS, max_size=3)))
    return out


def _deep(levels: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081030": {"vr": "LO", "Value": ["deepest"]}}
    for _ in range(levels):
        item = {"00081140": {"vr": "SQ", "Value": [item]}}
    return item


def _outcome(header: dict[str, Any], raw: bytes | None) -> Any:
    try:
        return "ok", check_header(header, raw)
    except HeaderError as exc:
        return exc.reason, exc.detail


def _agree(header: dict[str, Any], raw: bytes) -> bool:
    """Both walks agree on ``header`` parsed from ``raw``; returns whether the short one was taken."""
    parsed = parse_header(raw)
    assert _outcome(parsed, raw) == _outcome(parsed, None)
    return header_rules._plain(raw) and header_rules._plainly_valid(parsed)


@settings(max_examples=400, deadline=None)
@given(datasets(), st.booleans(), st.sampled_from([None, 1]))
def test_the_short_walk_agrees_with_the_whole_walk(header: dict[str, Any], ascii_only: bool, indent: int | None) -> None:
    raw = json.dumps(header, ensure_ascii=ascii_only, indent=indent).encode("utf-8")
    _agree(header, raw)


def test_the_short_walk_is_taken_for_a_plain_header_and_returns_it_unchanged() -> None:
    header = {"00080016": {"vr": "UI", "Value": [GOOD_UID]}, "00280100": {"vr": "US", "Value": [16]},
              "00081140": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2.03.4"]}}]}}
    raw = json.dumps(header).encode()
    assert _agree(header, raw)  # a nested legacy UID is copied as the source had it
    parsed = parse_header(raw)
    assert check_header(parsed, raw) is parsed


def test_sequences_at_and_past_the_limit_agree() -> None:
    # Past the limit the JSON is too deep to parse too: the rules are given the dict itself.
    for levels, reason in ((MAX_SEQUENCE_DEPTH, "ok"), (MAX_SEQUENCE_DEPTH + 1, "too_deep")):
        header = _deep(levels)
        raw = json.dumps(header).encode()
        assert _outcome(header, raw) == _outcome(header, None) and _outcome(header, raw)[0] == reason


def test_every_dicom_json_file_pydicom_ships_agrees() -> None:
    files = get_testdata_files("*.json")
    assert files
    for name in files:
        with open(name, "rb") as f:
            raw = f.read()
        try:
            parsed = parse_header(raw)
        except HeaderError:
            continue
        assert _outcome(parsed, raw) == _outcome(parsed, None), name


def test_a_reserved_group_in_any_case_at_any_level_agrees() -> None:
    for key in ("FFFF0010", "ffff0010", "fFfF0010", "00030010"):
        nested = {"00081140": {"vr": "SQ", "Value": [{key: {"vr": "LO", "Value": ["x"]}}]}}
        for header in ({key: {"vr": "LO", "Value": ["x"]}}, nested):
            raw = json.dumps(header).encode()
            parsed = parse_header(raw)
            assert _outcome(parsed, raw) == _outcome(parsed, None) and _outcome(parsed, raw)[0] == "reserved_group"
