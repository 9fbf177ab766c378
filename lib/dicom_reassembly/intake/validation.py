"""Rules a received instance must meet before it is stored: the reassembly's header rules, over a pydicom Dataset.

The rules of ``dicom.header_rules`` (with its reason codes), applied to a dataset that arrived as bytes
(C-STORE, STOW-RS) rather than as DICOM JSON. Received bytes are stored as sent, so where the JSON path
repairs (a missing character set becomes ``ISO_IR 192``), this one refuses:

- SOPClassUID, SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID present, VM 1, valid UIDs (``uids``);
- they agree with what the request announced (C-STORE's Affected SOP Class/Instance UID);
- no element in groups 0001, 0003, 0005, 0007 or FFFF, and no file meta (group 0002) inside the dataset;
- BitsAllocated 1 or a multiple of 8;
- text in the declared character set: a character set pydicom knows, every text value decodable in it,
  and no byte above 0x7F when none is declared (the default repertoire is ASCII).

A refusal is a ``Refused`` error carrying the DIMSE status to answer with (PS3.4 Annex B.2.3).
"""

from __future__ import annotations

import warnings
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..dicom.header_rules import TEXT_VRS
from ..dicom.uids import uid_problem
from ..errors import HeaderError

# DIMSE status codes (PS3.4 Annex B.2.3, PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
FORBIDDEN_GROUPS = frozenset({0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF})
_DELIMITERS = {"PN": {0x5E, 0x3D}}  # ^ and =: the component and group separators of PN
_TEXT_DELIMITERS = {0x5C, 0x0D, 0x0A, 0x09, 0x0C}  # backslash, CR, LF, TAB, FF


class Refused(HeaderError):
    """A received instance that must not be stored; ``dimse_status`` is the answer to the sender."""

    def __init__(self, dimse_status: int, reason: str, detail: str = "") -> None:
        self.dimse_status = dimse_status
        super().__init__(reason, detail)


def read_dataset(path: str) -> Dataset:
    """Read a spooled Part 10 file; an unreadable one is refused as ``unreadable_dataset`` (0xC000)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the checks below decide; pydicom's notes are not ours to print
            return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise Refused(CANNOT_UNDERSTAND, "unreadable_dataset", _first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _element(ds: Dataset, keyword: str) -> Any:
    """The data element (not its value, as ``Dataset.get`` gives), or None."""
    try:
        return ds[keyword]
    except KeyError:
        return None


def check_dataset(ds: Dataset, sop_class_uid: str | None = None, sop_instance_uid: str | None = None) -> None:
    """Raise ``Refused`` when ``ds`` breaks a rule; the expected UIDs come from the request, when it names them."""
    values: dict[str, str] = {}
    for keyword in IDENTITY:
        elem = _element(ds, keyword)
        if elem is None or elem.value in (None, ""):
            raise Refused(DOES_NOT_MATCH_SOP_CLASS, "missing_uid", f"{keyword} is missing")
        if elem.VM != 1:
            raise Refused(CANNOT_UNDERSTAND, "invalid_vm", f"{keyword} has {elem.VM} values, not 1")
        value = str(elem.value)
        problem = uid_problem(value)
        if problem:
            raise Refused(CANNOT_UNDERSTAND, "invalid_uid_value", f"{keyword} {value[:70]!r} is {problem}")
        values[keyword] = value
    if sop_class_uid and values["SOPClassUID"] != sop_class_uid:
        raise Refused(DOES_NOT_MATCH_SOP_CLASS, "sop_class_mismatch",
                      f"dataset SOPClassUID {values['SOPClassUID']} is not the announced {sop_class_uid}")
    if sop_instance_uid and values["SOPInstanceUID"] != sop_instance_uid:
        raise Refused(CANNOT_UNDERSTAND, "sop_instance_mismatch",
                      f"dataset SOPInstanceUID {values['SOPInstanceUID']} is not the announced {sop_instance_uid}")
    bits = _element(ds, "BitsAllocated")
    if bits is not None and bits.VM == 1 and isinstance(bits.value, int) and not (
            bits.value == 1 or (bits.value > 0 and bits.value % 8 == 0)):
        raise Refused(CANNOT_UNDERSTAND, "invalid_bits_allocated", f"BitsAllocated {bits.value} is not 1 or 8k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # once for the walk: per element it cost more than the checks
        _check_elements(ds, None, "")


def _check_elements(ds: Dataset, inherited: list[str] | None, path: str) -> None:
    """Walk every element (sequences included): groups, character set and text, each value parsed once."""
    encodings = inherited
    if 0x00080005 in ds:
        declared = ds.get_item(0x00080005)
        raw = declared.value if isinstance(declared, RawDataElement) else None
        names = _charset_names(raw if raw is not None else ds.SpecificCharacterSet)
        encodings = _encodings(names) if names else None
    for tag in list(ds.keys()):
        group = tag.group
        where = f"{path}({group:04X},{tag.element:04X})"
        if group in FORBIDDEN_GROUPS:
            raise Refused(CANNOT_UNDERSTAND, "reserved_group", f"{where} is in group {group:04X}")
        if group == 0x0002:
            raise Refused(CANNOT_UNDERSTAND, "file_meta_in_dataset", f"{where} belongs to the file meta")
        raw = ds.get_item(tag)
        vr = raw.VR if isinstance(raw, RawDataElement) else ds[tag].VR
        if vr is None or vr == "UN" and isinstance(raw, RawDataElement):
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        if isinstance(raw, RawDataElement) and vr in TEXT_VRS and raw.value:
            _check_text(bytes(raw.value), vr, encodings, where)
        if vr == "SQ":
            try:
                items = ds[tag].value
            except Exception as exc:  # pydicom raises assorted types for a broken sequence
                raise Refused(CANNOT_UNDERSTAND, "unreadable_element", f"{where}: {_first_line(exc)}") from exc
            for i, item in enumerate(items or []):
                _check_elements(item, encodings, f"{where}[{i}]")
        else:
            try:
                ds[tag]  # noqa: B018 - converts the raw element: a value pydicom cannot parse is refused here
            except Exception as exc:  # pydicom raises assorted types for a bad value
                raise Refused(CANNOT_UNDERSTAND, "unreadable_element", f"{where}: {_first_line(exc)}") from exc


def _charset_names(value: Any) -> list[str]:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("ascii", "replace").split("\\")
    if isinstance(value, str):
        value = [value]
    return [str(v).strip() for v in value or []]


def _encodings(names: list[str]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encodings = convert_encodings(names)
        except LookupError as exc:
            raise Refused(CANNOT_UNDERSTAND, "unknown_character_set", f"SpecificCharacterSet {names}") from exc
    if caught:
        raise Refused(CANNOT_UNDERSTAND, "unknown_character_set",
                      f"SpecificCharacterSet {names}: {str(caught[0].message)[:120]}")
    return encodings


def _check_text(value: bytes, vr: str, encodings: list[str] | None, where: str) -> None:
    if encodings is None:
        if any(b > 0x7F for b in value):
            raise Refused(CANNOT_UNDERSTAND, "undeclared_character_set",
                          f"{where} ({vr}) has non-ASCII text and no SpecificCharacterSet")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decode_bytes(value, encodings, _DELIMITERS.get(vr, _TEXT_DELIMITERS))
        except (UnicodeDecodeError, LookupError) as exc:
            raise Refused(CANNOT_UNDERSTAND, "text_not_in_character_set", f"{where} ({vr})") from exc
    if caught:
        raise Refused(CANNOT_UNDERSTAND, "text_not_in_character_set", f"{where} ({vr}) does not decode in {encodings}")
