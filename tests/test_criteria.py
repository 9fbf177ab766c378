"""Selection criteria: validation, semantics per VR and operation, reasons, file forms, and secret hygiene."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_reassembly.errors import CriteriaError
from dicom_reassembly.io.clients import S3Settings
from dicom_reassembly.selection.criteria import first_failure, first_failure_json, matches
from dicom_reassembly.selection.spec import CriteriaSpec, load_criteria, parse_criteria, redact

KEY_ID = "AKIAEXAMPLEKEYID42"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzSECRETzz"
S3_PARAMS = {"endpoint": "https://s3.example.org", "bucket": "deliveries", "credentials": f"{KEY_ID}:{SECRET}",
             "region": "eu-west-3"}

STUDY_DATE = ["0008", "0020"]
MODALITY = ["0008", "0060"]
IMAGE_TYPE = ["0008", "0008"]
PATIENT_AGE = ["0010", "1010"]


def crit(tag: Any, op: str, ref: Any) -> dict[str, Any]:
    return {"dicom_tag": tag, "operation": op, "reference": ref}


def one(tag: Any, op: str, ref: Any) -> CriteriaSpec:
    return parse_criteria([crit(tag, op, ref)])


def elem(vr: str | None, *values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {} if vr is None else {"vr": vr}
    if values:
        out["Value"] = list(values)
    return out


def header_with(key: str, element: dict[str, Any]) -> dict[str, Any]:
    return {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}, key: element}


# --- semantics: every operation x VR, boundaries included --------------------------------------------------------

DA_CASES = [
    # (operation, reference, header value, holds)
    ("GREATER", "2022-01-01", "20220102", True),
    ("GREATER", "2022-01-01", "20220101", False),  # strict
    ("GREATER", "2022-01-01", "20211231", False),
    ("LESS", "2022-01-01", "20211231", True),
    ("LESS", "2022-01-01", "20220101", False),  # strict
    ("LESS", "2022-01-01", "20220102", False),
    ("EQUALS", "2022-01-01", "20220101", True),
    ("EQUALS", "2022-01-01", "20220102", False),
    ("EQUALS", "2024-02-29", "20240229", True),  # leap day is a real date
    ("IN", ["2021-12-31", "2022-01-01"], "20220101", True),
    ("IN", ["2021-12-31", "2022-01-01"], "20220102", False),
    ("GREATER", "1999-12-31", "20000101", True),  # across a year boundary
    ("LESS", "2000-01-01", "19991231", True),
    ("GREATER", "2022-01-01", "20220101 ", False),  # padding does not change the date
    ("EQUALS", "2022-01-01", "20220101 ", True),
]


@pytest.mark.parametrize(("op", "ref", "value", "holds"), DA_CASES)
def test_da_operations(op: str, ref: Any, value: str, holds: bool) -> None:
    spec = one(STUDY_DATE, op, ref)
    assert matches(spec, header_with("00080020", elem("DA", value))) is holds


CS_CASES = [
    ("EQUALS", "CT", ["CT"], True),
    ("EQUALS", "CT", ["MR"], False),
    ("EQUALS", "CT", [" CT "], True),  # trimmed
    ("EQUALS", " CT ", ["CT"], True),  # reference trimmed too
    ("EQUALS", "CT", ["ct"], False),  # exact, case-sensitive
    ("EQUALS", "CT", ["CTX"], False),  # no prefix match
    ("IN", ["CT", "MR"], ["MR"], True),
    ("IN", ["CT", "MR"], ["PT"], False),
    ("IN", ["CT"], ["CT "], True),
]


@pytest.mark.parametrize(("op", "ref", "values", "holds"), CS_CASES)
def test_cs_operations(op: str, ref: Any, values: list[str], holds: bool) -> None:
    spec = one(MODALITY, op, ref)
    assert matches(spec, header_with("00080060", elem("CS", *values))) is holds


AS_CASES = [
    ("EQUALS", "360M", "030Y", True),  # 30 * 365.25 == 360 * 365.25 / 12 exactly
    ("EQUALS", "030Y", "360M", True),
    ("GREATER", "360M", "030Y", False),
    ("LESS", "360M", "030Y", False),
    ("EQUALS", "001Y", "012M", True),
    ("EQUALS", "001Y", "052W", False),  # 364 days vs 365.25
    ("GREATER", "052W", "001Y", True),
    ("LESS", "001Y", "052W", True),
    ("LESS", "001Y", "365D", True),  # 365 < 365.25
    ("GREATER", "365D", "366D", True),
    ("EQUALS", "001W", "007D", True),
    ("EQUALS", "001M", "030D", False),  # a month is 30.4375 days
    ("GREATER", "030D", "001M", True),
    ("GREATER", "029Y", "030Y", True),
    ("GREATER", "030Y", "030Y", False),  # strict
    ("LESS", "030Y", "030Y", False),
    ("LESS", "018Y", "017Y", True),
    ("IN", ["360M", "040Y"], "030Y", True),
    ("IN", ["360M", "040Y"], "031Y", False),
    ("EQUALS", "030Y", "30Y", True),  # unpadded value is unambiguous
    ("EQUALS", "000D", "000Y", True),
]


@pytest.mark.parametrize(("op", "ref", "value", "holds"), AS_CASES)
def test_as_operations(op: str, ref: Any, value: str, holds: bool) -> None:
    spec = one(PATIENT_AGE, op, ref)
    assert matches(spec, header_with("00101010", elem("AS", value))) is holds


def test_reason_format_matches_the_issue_example() -> None:
    spec = one(STUDY_DATE, "GREATER", "2022-01-01")
    assert first_failure(spec, header_with("00080020", elem("DA", "20040119"))) == \
        "(0008,0020) StudyDate 20040119 not GREATER 2022-01-01"


def test_reason_renders_in_reference_as_list() -> None:
    spec = one(MODALITY, "IN", ["CT", "MR"])
    assert first_failure(spec, header_with("00080060", elem("CS", "PT"))) == "(0008,0060) Modality PT not IN [CT, MR]"


def test_multi_valued_cs_passes_when_any_value_passes() -> None:
    header = header_with("00080008", elem("CS", "ORIGINAL", "PRIMARY"))
    assert first_failure(one(IMAGE_TYPE, "EQUALS", "PRIMARY"), header) is None
    assert first_failure(one(IMAGE_TYPE, "EQUALS", "ORIGINAL"), header) is None
    assert first_failure(one(IMAGE_TYPE, "IN", ["DERIVED", "PRIMARY"]), header) is None
    assert first_failure(one(IMAGE_TYPE, "EQUALS", "DERIVED"), header) == \
        "(0008,0008) ImageType ORIGINAL\\PRIMARY not EQUALS DERIVED"


def test_flattened_backslash_value_counts_as_multi_valued() -> None:
    header = header_with("00080008", elem("CS", "ORIGINAL\\PRIMARY"))
    assert first_failure(one(IMAGE_TYPE, "EQUALS", "PRIMARY"), header) is None
    assert first_failure(one(IMAGE_TYPE, "EQUALS", "ORIGINALX"), header) == \
        "(0008,0008) ImageType ORIGINAL\\PRIMARY not EQUALS ORIGINALX"


def test_multi_valued_da_any_value() -> None:
    spec = one(STUDY_DATE, "GREATER", "2022-01-01")
    assert matches(spec, header_with("00080020", elem("DA", "20000101", "20230101")))
    assert first_failure(spec, header_with("00080020", elem("DA", "20000101", "20010101"))) == \
        "(0008,0020) StudyDate 20000101\\20010101 not GREATER 2022-01-01"


def test_real_pydicom_header() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    header = ds.to_json_dict()
    spec = parse_criteria([
        crit(STUDY_DATE, "LESS", "2005-01-01"),
        crit("Modality", "IN", ["CT", "MR"]),
        crit(IMAGE_TYPE, "EQUALS", "AXIAL"),
        crit(PATIENT_AGE, "LESS", "001D"),  # CT_small has PatientAge 000Y
    ])
    assert first_failure(spec, header) is None
    late = parse_criteria([crit(STUDY_DATE, "GREATER", "2022-01-01")])
    assert first_failure(late, header) == "(0008,0020) StudyDate 20040119 not GREATER 2022-01-01"


def test_and_reports_the_first_failing_criterion() -> None:
    spec = parse_criteria([
        crit(MODALITY, "EQUALS", "CT"),
        crit(STUDY_DATE, "GREATER", "2022-01-01"),
        crit(PATIENT_AGE, "GREATER", "050Y"),
    ])
    header = {"00080060": elem("CS", "CT"), "00080020": elem("DA", "20040119"), "00101010": elem("AS", "040Y")}
    assert first_failure(spec, header) == "(0008,0020) StudyDate 20040119 not GREATER 2022-01-01"
    header["00080020"] = elem("DA", "20230101")
    assert first_failure(spec, header) == "(0010,1010) PatientAge 040Y not GREATER 050Y"
    header["00101010"] = elem("AS", "051Y")
    assert first_failure(spec, header) is None
    assert first_failure(spec.criteria, header) is None  # the bare criteria tuple works too


def test_empty_criteria_select_everything() -> None:
    spec = parse_criteria([])
    assert first_failure(spec, {}) is None
    assert first_failure_json(spec, "not json") is None


# --- missing, empty, unparseable, VR mismatches -------------------------------------------------------------------

@pytest.mark.parametrize(("element", "shown"), [
    (None, "<missing>"),
    (elem("DA"), "<empty>"),
    ({"vr": "DA", "Value": []}, "<empty>"),
    ({"vr": "DA", "Value": [""]}, "<empty>"),
    ({"vr": "DA", "Value": [None]}, "<empty>"),
    ({"vr": "DA", "Value": ["  "]}, "<empty>"),
])
def test_missing_and_empty_values_fail(element: dict[str, Any] | None, shown: str) -> None:
    header = {} if element is None else {"00080020": element}
    for op, ref in (("EQUALS", "2022-01-01"), ("LESS", "2099-01-01"), ("GREATER", "1900-01-01")):
        assert first_failure(one(STUDY_DATE, op, ref), header) == f"(0008,0020) StudyDate {shown} not {op} {ref}"


@pytest.mark.parametrize(("tag", "key", "vr", "value", "ref"), [
    (STUDY_DATE, "00080020", "DA", "2023-01-01", "2022-01-01"),  # ISO in the header is not a DA
    (STUDY_DATE, "00080020", "DA", "20230230", "2022-01-01"),  # no such day
    (STUDY_DATE, "00080020", "DA", "2023.01.01", "2022-01-01"),
    (PATIENT_AGE, "00101010", "AS", "30 years", "001Y"),
    (PATIENT_AGE, "00101010", "AS", "030y", "001Y"),
])
def test_unparseable_values_fail_and_say_so(tag: list[str], key: str, vr: str, value: str, ref: str) -> None:
    reason = first_failure(one(tag, "GREATER", ref), {key: elem(vr, value)})
    assert reason is not None
    assert reason.endswith(f"{value} not GREATER {ref} (unparseable value)")


def test_non_string_values_fail_without_raising() -> None:
    reason = first_failure(one(STUDY_DATE, "GREATER", "2022-01-01"), {"00080020": elem("DA", 20230101)})
    assert reason == "(0008,0020) StudyDate 20230101 not GREATER 2022-01-01 (unparseable value)"


def test_vr_taken_from_dictionary_when_header_has_none() -> None:
    spec = one(MODALITY, "EQUALS", "CT")
    assert first_failure(spec, {"00080060": {"Value": ["CT"]}}) is None
    assert first_failure(spec, {"00080060": {"Value": ["MR"]}}) == "(0008,0060) Modality MR not EQUALS CT"


def test_header_vr_other_than_the_dictionary_fails_with_reason() -> None:
    spec = one(MODALITY, "EQUALS", "CT")
    assert first_failure(spec, {"00080060": elem("LO", "CT")}) == \
        "(0008,0060) Modality CT not EQUALS CT (header VR LO, criterion needs CS)"
    assert first_failure(spec, {"00080060": {"vr": "UN", "InlineBinary": "Q1Qg"}}) == \
        "(0008,0060) Modality <binary> not EQUALS CT (header VR UN, criterion needs CS)"
    assert first_failure(one(STUDY_DATE, "LESS", "2022-01-01"), {"00080020": elem("CS", "20000101")}) == \
        "(0008,0020) StudyDate 20000101 not LESS 2022-01-01 (header VR CS, criterion needs DA)"


@pytest.mark.parametrize("header", [
    {"00080060": "CT"},
    {"00080060": ["CT"]},
    {"00080060": {"vr": "CS", "Value": [{"Alphabetic": "x"}]}},
    {"00080060": {"vr": "CS", "Value": "CT\nMR"}},
    {"00080060": {"vr": 7, "Value": ["CT"]}},
    [],
    None,
])
def test_garbage_headers_fail_without_raising(header: Any) -> None:
    reason = first_failure(one(MODALITY, "EQUALS", "XA"), header)
    assert reason is not None and reason.startswith("(0008,0060) Modality ")
    assert "\n" not in reason


def test_lowercase_json_keys_are_tolerated() -> None:
    spec = one(["0010", "21A0"], "EQUALS", "YES")
    assert first_failure(spec, {"001021a0": elem("CS", "YES")}) is None
    assert first_failure(spec, {"001021A0": elem("CS", "YES")}) is None
    assert first_failure(spec, {"001021A0": elem("CS", "NO")}) == "(0010,21A0) SmokingStatus NO not EQUALS YES"
    assert one("(0010,21a0)", "EQUALS", "YES").criteria_public()[0]["dicom_tag"] == ["0010", "21A0"]


def test_first_failure_json() -> None:
    spec = one(MODALITY, "EQUALS", "CT")
    assert first_failure_json(spec, json.dumps({"00080060": elem("CS", "CT")})) is None
    assert first_failure_json(spec, b'{"00080060": {"vr": "CS", "Value": ["MR"]}}') == \
        "(0008,0060) Modality MR not EQUALS CT"
    assert first_failure_json(spec, "{truncated") == "(0008,0060) Modality <missing> not EQUALS CT"
    assert first_failure_json(spec, None) == "(0008,0060) Modality <missing> not EQUALS CT"


def test_long_values_are_truncated_in_reasons() -> None:
    reason = first_failure(one(MODALITY, "EQUALS", "CT"), {"00080060": elem("CS", *(["ABCDEFGHIJ"] * 20))})
    assert reason is not None and len(reason) < 140 and "..." in reason


# --- tag spellings and hashing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag", [["0008", "0020"], "00080020", "(0008,0020)", "0008,0020", "StudyDate",
                                 ("0008", "0020"), " (0008,0020) "])
def test_tag_spellings_are_equivalent(tag: Any) -> None:
    spec = one(tag, "GREATER", "2022-01-01")
    (c,) = spec.criteria
    assert (c.tag, c.keyword, c.vr) == (0x00080020, "StudyDate", "DA")
    assert spec.criteria_public() == [{"dicom_tag": ["0008", "0020"], "operation": "GREATER",
                                       "reference": "2022-01-01"}]


def test_sha256_is_of_the_canonical_criteria_json() -> None:
    spec = parse_criteria({"criteria": [{"reference": ["CT", "MR"], "operation": "IN", "dicom_tag": "Modality"}],
                           "input_s3_parameters": S3_PARAMS})
    canonical = '[{"dicom_tag":["0008","0060"],"operation":"IN","reference":["CT","MR"]}]'
    assert spec.sha256() == hashlib.sha256(canonical.encode()).hexdigest()


def test_sha256_stable_across_key_order_and_forms() -> None:
    a = parse_criteria([crit(STUDY_DATE, "GREATER", "2022-01-01"), crit(MODALITY, "IN", ["CT", "MR"])])
    b = parse_criteria({"criteria": [
        {"reference": "2022-01-01", "operation": "GREATER", "dicom_tag": "(0008,0020)"},
        {"operation": "IN", "dicom_tag": "00080060", "reference": ["CT", "MR"]},
    ], "input_s3_parameters": S3_PARAMS})
    assert a.sha256() == b.sha256()
    assert a.sha256() != parse_criteria([crit(STUDY_DATE, "GREATER", "2022-01-02"),
                                         crit(MODALITY, "IN", ["CT", "MR"])]).sha256()
    assert a.sha256() != parse_criteria([crit(MODALITY, "IN", ["CT", "MR"]),
                                         crit(STUDY_DATE, "GREATER", "2022-01-01")]).sha256()
    # the public criteria parse back to the same spec
    assert parse_criteria(json.loads(b.to_public_json())["criteria"]).sha256() == a.sha256()


# --- validation errors ----------------------------------------------------------------------------------------------

VALID = crit(MODALITY, "EQUALS", "CT")

BAD_CRITERIA = [
    # (criterion at index 1, reason, text the message must contain)
    (crit(STUDY_DATE, "BETWEEN", "2022-01-01"), "unknown_operation", "(0008,0020) StudyDate: unknown operation"),
    (crit(STUDY_DATE, "greater", "2022-01-01"), "unknown_operation", "(0008,0020)"),
    (crit(STUDY_DATE, None, "2022-01-01"), "unknown_operation", "(0008,0020)"),
    (crit(["0010", "0010"], "EQUALS", "DOE^JOHN"), "unsupported_vr", "(0010,0010) PatientName"),
    (crit("Rows", "GREATER", "512"), "unsupported_vr", "(0028,0010) Rows"),
    (crit(["0009", "1001"], "EQUALS", "X"), "unknown_tag", "(0009,1001)"),
    (crit("NotAKeyword", "EQUALS", "X"), "unknown_tag", "NotAKeyword"),
    (crit(["0008"], "EQUALS", "X"), "bad_tag", "0008"),
    (crit(["0008", "002G"], "EQUALS", "X"), "bad_tag", "002G"),
    (crit([8, 32], "EQUALS", "X"), "bad_tag", "[8, 32]"),
    (crit("8,32", "EQUALS", "X"), "bad_tag", "8,32"),
    (crit(None, "EQUALS", "X"), "bad_tag", "null"),
    (crit(MODALITY, "IN", "CT"), "bad_reference_shape", "(0008,0060) Modality"),
    (crit(MODALITY, "IN", []), "bad_reference_shape", "(0008,0060) Modality"),
    (crit(MODALITY, "EQUALS", ["CT"]), "bad_reference_shape", "(0008,0060) Modality"),
    (crit(STUDY_DATE, "GREATER", {"date": "2022-01-01"}), "bad_reference_shape", "(0008,0020) StudyDate"),
    (crit(STUDY_DATE, "GREATER", 20220101), "bad_reference_type", "(0008,0020) StudyDate"),
    (crit(MODALITY, "IN", ["CT", 5]), "bad_reference_type", "reference[1]"),
    (crit(STUDY_DATE, "GREATER", "2022-13-01"), "bad_date", "2022-13-01"),
    (crit(STUDY_DATE, "GREATER", "2022-02-30"), "bad_date", "2022-02-30"),
    (crit(STUDY_DATE, "GREATER", "20220101"), "bad_date", "YYYY-MM-DD"),
    (crit(STUDY_DATE, "GREATER", "2022-1-1"), "bad_date", "2022-1-1"),
    (crit(STUDY_DATE, "IN", ["2022-01-01", "01/02/2022"]), "bad_date", "01/02/2022"),
    (crit(PATIENT_AGE, "GREATER", "30Y"), "bad_age", "30Y"),
    (crit(PATIENT_AGE, "GREATER", "030y"), "bad_age", "030y"),
    (crit(PATIENT_AGE, "EQUALS", "030"), "bad_age", "(0010,1010) PatientAge"),
    (crit(PATIENT_AGE, "IN", ["030Y", "1 year"]), "bad_age", "1 year"),
    (crit(MODALITY, "EQUALS", "  "), "bad_code_string", "(0008,0060) Modality"),
    (crit(MODALITY, "EQUALS", "CT\\MR"), "bad_code_string", "(0008,0060) Modality"),
    (crit(MODALITY, "GREATER", "CT"), "operation_not_allowed", "(0008,0060) Modality"),
    (crit(IMAGE_TYPE, "LESS", "PRIMARY"), "operation_not_allowed", "(0008,0008) ImageType"),
    ({"dicom_tag": MODALITY, "operation": "EQUALS"}, "missing_field", "(0008,0060) Modality: missing field 'reference'"),
    ({"operation": "EQUALS", "reference": "CT"}, "missing_field", "dicom_tag"),
    ({"dicom_tag": MODALITY, "operation": "EQUALS", "reference": "CT", "refrence": "MR"}, "unknown_field",
     "refrence"),
    ("Modality EQUALS CT", "criterion_not_object", "str"),
]


@pytest.mark.parametrize(("bad", "reason", "fragment"), BAD_CRITERIA)
def test_validation_errors(bad: Any, reason: str, fragment: str) -> None:
    with pytest.raises(CriteriaError) as info:
        parse_criteria([VALID, bad])
    err = info.value
    assert err.reason == reason
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"{reason}: criteria[1]")
    assert fragment in message


@pytest.mark.parametrize(("doc", "reason"), [
    (42, "criteria_bad_document"),
    ("criteria", "criteria_bad_document"),
    ({"crit": []}, "criteria_bad_document"),
    ({"criteria": {"dicom_tag": MODALITY}}, "criteria_bad_document"),
    ({"parameters": [crit(MODALITY, "EQUALS", "CT")]}, "criteria_bad_document"),
    ({"parameters": {"input_s3_parameters": None}}, "criteria_bad_document"),
])
def test_bad_documents(doc: Any, reason: str) -> None:
    with pytest.raises(CriteriaError) as info:
        parse_criteria(doc)
    assert info.value.reason == reason
    assert "\n" not in str(info.value)


def _with_s3(**changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = dict(S3_PARAMS)
    for k, v in changes.items():
        if v is ...:
            params.pop(k)
        else:
            params[k] = v
    return {"input_s3_parameters": params, "criteria": [VALID]}


@pytest.mark.parametrize(("doc", "reason"), [
    ({"input_s3_parameters": "s3://deliveries", "criteria": []}, "bad_s3_parameters"),
    (_with_s3(bucket=...), "bad_s3_parameters"),
    (_with_s3(region=...), "bad_s3_parameters"),
    (_with_s3(bucket="s3://deliveries"), "bad_s3_parameters"),
    (_with_s3(bucket=""), "bad_s3_parameters"),
    (_with_s3(endpoint=f"https://{KEY_ID}:{SECRET}@s3.example.org"), "bad_s3_parameters"),
    (_with_s3(endpoint="s3.example.org"), "bad_s3_parameters"),
    (_with_s3(secret=SECRET), "bad_s3_parameters"),
    (_with_s3(credentials=...), "bad_credentials"),
    (_with_s3(credentials=SECRET), "bad_credentials"),
    (_with_s3(credentials=f"{KEY_ID}:"), "bad_credentials"),
    (_with_s3(credentials=f":{SECRET}"), "bad_credentials"),
    (_with_s3(credentials=[KEY_ID, SECRET]), "bad_credentials"),
])
def test_bad_s3_parameters_never_echo_secrets(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(CriteriaError) as info:
        parse_criteria(doc)
    message = str(info.value)
    assert info.value.reason == reason
    assert message.startswith(f"{reason}: input_s3_parameters")
    assert "\n" not in message
    assert SECRET not in message and KEY_ID not in message
    assert SECRET not in repr(info.value.args)


def test_s3_parameters_build_settings() -> None:
    spec = parse_criteria({"input_s3_parameters": dict(S3_PARAMS, credentials=f"{KEY_ID}:{SECRET}:with:colons"),
                           "criteria": [VALID]})
    assert spec.s3 == S3Settings(endpoint_url="https://s3.example.org", region="eu-west-3", access_key_id=KEY_ID,
                                 secret_access_key=f"{SECRET}:with:colons")
    assert spec.bucket == "deliveries"
    no_endpoint = parse_criteria(_with_s3(endpoint=...))
    assert no_endpoint.s3 is not None and no_endpoint.s3.endpoint_url is None
    assert parse_criteria([VALID]).s3 is None
    assert parse_criteria({"input_s3_parameters": None, "criteria": [VALID]}).s3 is None


# --- files ---------------------------------------------------------------------------------------------------------

def test_load_bare_list_file(tmp_path: Path) -> None:
    path = tmp_path / "criteria.json"
    path.write_text(json.dumps([crit(STUDY_DATE, "GREATER", "2022-01-01"), crit(MODALITY, "IN", ["CT", "MR"])]))
    spec = load_criteria(str(path))
    assert spec.s3 is None and spec.bucket is None
    assert [(c.keyword, c.operation, c.reference) for c in spec.criteria] == [
        ("StudyDate", "GREATER", "2022-01-01"), ("Modality", "IN", ("CT", "MR"))]


def test_load_orchestrator_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "params.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"input_s3_parameters": S3_PARAMS,
                                                   "criteria": [crit(MODALITY, "EQUALS", "CT")]}).encode())
    with caplog.at_level(logging.DEBUG, logger="dicom_reassembly"):
        spec = load_criteria(str(path))
    assert spec.s3 is not None and spec.s3.secret_access_key == SECRET and spec.s3.access_key_id == KEY_ID
    assert spec.bucket == "deliveries"
    assert SECRET not in caplog.text and KEY_ID not in caplog.text
    assert "loaded 1 criteria" in caplog.text


def test_the_orchestrators_parameters_wrapper_is_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Prefect flow-run request shape (issue 19): the brief's parameters object inside ``parameters``, next to
    the flow's other parameters."""
    doc = {"parameters": {"input_s3_parameters": S3_PARAMS, "criteria": [crit(MODALITY, "IN", ["CT", "MR"])],
                          "text": "s3://in/text", "images": "s3://in/images", "out": "s3://out/dcm",
                          "work": "s3://work/c1", "poll_seconds": 60}}
    path = tmp_path / "flow-run.json"
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="dicom_reassembly"):
        spec = load_criteria(str(path))
    assert spec.criteria[0].reference == ("CT", "MR") and spec.bucket == "deliveries"
    assert spec.s3 is not None and spec.s3.secret_access_key == SECRET
    assert caplog.text == ""  # the flow's own parameters are not typos
    assert parse_criteria(doc).sha256() == parse_criteria(doc["parameters"]).sha256()
    with caplog.at_level(logging.WARNING, logger="dicom_reassembly"):
        parse_criteria({"parameters": {"criteria": [], "critera": []}, "id": 1})
    assert '"critera"' in caplog.text and '"id"' in caplog.text


def test_a_deeply_nested_criteria_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The regression: json.loads recursed into a document nested thousands deep and raised RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text(json.dumps({"criteria": [crit(MODALITY, "IN", "@")]}).replace('"@"', "[" * 100_000 + "]" * 100_000))
    with pytest.raises(CriteriaError) as info:
        load_criteria(str(path))
    assert info.value.reason == "criteria_too_deep"
    assert str(info.value) == f"criteria_too_deep: the criteria file is nested deeper than 32 levels ({path})"


def test_a_criteria_file_larger_than_the_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: nothing past the cap is ever read
    with pytest.raises(CriteriaError) as info:
        load_criteria(str(path))
    assert info.value.reason == "criteria_too_large" and "larger than 16777216 bytes" in str(info.value)


def test_the_reassemble_job_refuses_deep_criteria_in_one_line_before_spark(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import importlib.util
    import os

    import dicom_reassembly.session as session

    monkeypatch.setattr(session, "get_session", lambda *a, **k: pytest.fail("Spark was started"))
    path = tmp_path / "deep.json"
    path.write_text("[" * 50_000 + "]" * 50_000)
    job = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "reassemble.py")
    spec = importlib.util.spec_from_file_location("job_reassemble", job)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--manifest", "m", "--out", "o", "--ledger", "l", "--criteria", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: criteria_too_deep:")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input_s3_parameters": S3_PARAMS,
                               "criteria": [VALID, crit(STUDY_DATE, "GREATER", "2022-13-01")]}))
    with pytest.raises(CriteriaError) as info:
        load_criteria(str(bad))
    assert info.value.reason == "bad_date"
    assert info.value.uri == str(bad)
    assert str(info.value).startswith("bad_date: criteria[1] (0008,0020) StudyDate: invalid date")


def test_load_not_json_drops_the_document(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"input_s3_parameters": {"credentials": "' + f"{KEY_ID}:{SECRET}" + '"}, "criteria": [')
    with pytest.raises(CriteriaError) as info:
        load_criteria(str(path))
    assert info.value.reason == "criteria_not_json"
    assert "\n" not in str(info.value)
    # the JSON decoder's exception holds the whole document; it must not ride along as cause or context
    assert info.value.__cause__ is None and info.value.__suppress_context__
    path.write_bytes(b"\xff\xfe[]")
    with pytest.raises(CriteriaError, match="criteria_not_json"):
        load_criteria(str(path))


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CriteriaError) as info:
        load_criteria(str(tmp_path / "nope.json"))
    assert info.value.reason == "criteria_unreadable"
    with pytest.raises(CriteriaError) as info:
        load_criteria(str(tmp_path))
    assert info.value.reason == "criteria_unreadable"


def test_load_from_s3(s3: Any) -> None:
    s3.create_bucket(Bucket="orchestrator")
    body = json.dumps({"input_s3_parameters": S3_PARAMS, "criteria": [crit(MODALITY, "IN", ["CT", "MR"])]})
    s3.put_object(Bucket="orchestrator", Key="runs/42/params.json", Body=body.encode())
    spec = load_criteria("s3://orchestrator/runs/42/params.json")
    assert spec.criteria[0].reference == ("CT", "MR")
    assert spec.s3 is not None and spec.s3.region == "eu-west-3"
    with pytest.raises(CriteriaError) as info:
        load_criteria("s3://orchestrator/runs/43/params.json")
    assert info.value.reason == "criteria_unreadable"


# --- secrets --------------------------------------------------------------------------------------------------------

@pytest.fixture()
def secret_spec() -> CriteriaSpec:
    return parse_criteria({"input_s3_parameters": S3_PARAMS, "criteria": [VALID]})


def test_secret_not_in_repr_str_or_public_json(secret_spec: CriteriaSpec) -> None:
    for text in (repr(secret_spec), str(secret_spec), secret_spec.to_public_json(), json.dumps(
            secret_spec.to_public_dict()), repr(secret_spec.s3), repr(secret_spec.criteria), f"{secret_spec}"):
        assert SECRET not in text and KEY_ID not in text


def test_public_dict_masks_credentials(secret_spec: CriteriaSpec) -> None:
    assert secret_spec.to_public_dict() == {
        "criteria": [{"dicom_tag": ["0008", "0060"], "operation": "EQUALS", "reference": "CT"}],
        "input_s3_parameters": {"endpoint": "https://s3.example.org", "bucket": "deliveries",
                                "region": "eu-west-3", "credentials": "***"},
    }
    assert parse_criteria([VALID]).to_public_dict() == {
        "criteria": [{"dicom_tag": ["0008", "0060"], "operation": "EQUALS", "reference": "CT"}]}


def test_spec_refuses_pickling_but_criteria_pickle(secret_spec: CriteriaSpec) -> None:
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(secret_spec)
    blob = pickle.dumps(secret_spec.criteria)
    assert SECRET.encode() not in blob and KEY_ID.encode() not in blob
    restored = pickle.loads(blob)
    assert first_failure(restored, {"00080060": elem("CS", "MR")}) == "(0008,0060) Modality MR not EQUALS CT"


def test_redact(secret_spec: CriteriaSpec) -> None:
    text = f"url=https://x?k={KEY_ID}&s={SECRET} creds={KEY_ID}:{SECRET} again {SECRET}"
    out = redact(text, secret_spec)
    assert SECRET not in out and KEY_ID not in out
    assert out == "url=https://x?k=***&s=*** creds=*** again ***"
    assert redact(text, secret_spec.s3) == out
    assert redact(text, None) == text
    assert redact(text, parse_criteria([VALID])) == text
