"""The header half: DICOM JSON model (PS3.18 Annex F) to a pydicom dataset.

The JSON is parsed once; the parsed dict serves both the manifest's key tags
and the dataset. Group 0002 goes to the file meta. A BulkDataURI is resolved
only when it points at the instance's own pixel member. Before a header is
encoded it must meet :mod:`header_rules` (limits, VMs, UIDs, character sets,
nulls); pydicom's warnings are collected into the error or a debug log line,
never printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson
from pydicom.dataset import Dataset, FileMetaDataset

from ..errors import HeaderError
from .header_rules import MAX_HEADER_BYTES, MAX_JSON_DEPTH, MAX_SEQUENCE_DEPTH, check_header, json_too_deep
from .uids import uid_problem

log = logging.getLogger(__name__)

SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
PIXEL_DATA_TAGS = ("7FE00010", "7FE00008", "7FE00009")
# We write our own offset tables; stale ones from the source must not survive, nor its
# Encapsulated Pixel Data Value Total Length.
OFFSET_TABLE_TAGS = ("7FE00001", "7FE00002", "7FE00003")

# orjson parses and serialises 3-6x faster than json and gives the same result, except in cases these checks find
# in the text, each with one translate and a few substring searches: an integer token of 19 digits or more, which
# orjson reads as a float past 64 bits; in its output, a float Python would write differently (an exponent, a
# fraction below 1e-4 written out, 16 integer digits or more: checked against 600,000 random doubles) or a null
# (orjson writes NaN and infinities as null). A number token follows ``[``, ``:``, ``,`` or (in a partner's text)
# white space; a match inside a string only costs the slower path.
def _table(**classes: bytes) -> bytes:
    table = bytearray(b"x" * 256)
    for char, members in classes.items():
        for c in members:
            table[c] = ord(char)
    return bytes(table)


_RAW_TOKENS = _table(**{"0": b"0123456789", "S": b"[:, \t\r\n-"})
_OUT_TOKENS = _table(**{"0": b"0123456789", "S": b"[:,", "-": b"-", ".": b".", "e": b"e"})
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[list(b"[{")] = 1
_BRACKET_STEP[list(b"]}")] = -1
_ONE_BRACKET = bytes.maketrans(b"{}", b"[]")
# Beyond this many brackets the passes (one per level) could cost more than the linear scan.
_PASSES_UP_TO = 1 << 16

# Manifest column -> (tag, type). Typed columns later stages filter or group on.
KEY_TAGS: dict[str, tuple[str, type]] = {
    "sop_class_uid": (SOP_CLASS_UID, str),
    "header_sop_instance_uid": (SOP_INSTANCE_UID, str),
    "study_instance_uid": ("0020000D", str),
    "series_instance_uid": ("0020000E", str),
    "modality": ("00080060", str),
    "study_date": ("00080020", str),
    "patient_age": ("00101010", str),
    "patient_sex": ("00100040", str),
    "body_part_examined": ("00180015", str),
    "manufacturer": ("00080070", str),
    "lossy_image_compression": ("00282110", str),
    "photometric_interpretation": ("00280004", str),
    "instance_number": ("00200013", int),
    "rows": ("00280010", int),
    "columns": ("00280011", int),
    "number_of_frames": ("00280008", int),
    "samples_per_pixel": ("00280002", int),
    "bits_allocated": ("00280100", int),
    "bits_stored": ("00280101", int),
    "pixel_representation": ("00280103", int),
}


def header_size(raw: bytes | str) -> int:
    """A header's size in bytes (UTF-8 for text)."""
    if isinstance(raw, str):
        # A character is 1 to 4 bytes: encode only when the count alone cannot decide.
        return len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
    return len(raw)


def too_large(size: int, max_bytes: int) -> HeaderError:
    """The error for a header of ``size`` bytes above ``max_bytes``."""
    return HeaderError("too_large", f"header is {size} bytes, above max_header_bytes ({max_bytes})")


def parse_header(raw: bytes | str, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """Parse a header member into a dict keyed by upper-case tag.

    Raises HeaderError: ``too_large`` above ``max_bytes``, ``too_deep`` when nested past the
    limit (json.loads recurses, so a document thousands deep raises RecursionError inside it).
    """
    size = header_size(raw)
    if size > max_bytes:
        raise too_large(size, max_bytes)
    too_deep = HeaderError("too_deep", f"JSON nests more than {MAX_JSON_DEPTH} levels deep "
                           f"(more than {MAX_SEQUENCE_DEPTH} sequence levels)")
    try:
        obj = _loads(raw)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeaderError("malformed_json", str(exc).splitlines()[0][:200]) from exc
    depth = _json_depth(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if depth > MAX_JSON_DEPTH if depth is not None else json_too_deep(obj):
        raise too_deep
    if isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], dict):
        obj = obj[0]  # a QIDO/WADO metadata response holds a list of one dataset
    if not isinstance(obj, dict):
        raise HeaderError("malformed_json", f"top level is {type(obj).__name__}, not an object")
    # Keys upper-cased only when one changes: one C-speed test of all of them, as upper() maps each character alone.
    keys = "".join(obj)
    if keys.upper() != keys:
        obj = {k.upper(): v for k, v in obj.items()}
    return obj


def _loads(raw: bytes | str) -> Any:
    """``json.loads``, through orjson when that gives the same object; json's own errors and values otherwise.

    orjson refuses what json accepts beyond RFC 8259 (NaN, Infinity, lone surrogates, a BOM, depth past 1024):
    json then decides, so its errors (RecursionError included) and values are what callers see.
    """
    if not _may_hold_big_int(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def _json_depth(data: bytes) -> int | None:
    """How deep the lists and objects of a parsed JSON text nest, from its brackets outside strings (C-speed byte
    operations, where walking the parsed object takes ~4x longer); None when a string holds an escaped quote,
    which this reading of the text cannot place. A depth past MAX_JSON_DEPTH may be given as MAX_JSON_DEPTH + 1."""
    if b"\\" in data and b'\\"' in data:  # a one-byte search first: most headers hold no backslash at all
        return None
    marks = data.translate(None, _NOT_STRUCTURE)
    # Strings without brackets leave their two quotes side by side: drop them. Any quote left means a string
    # holds a bracket (the leftmost such string's opening quote finds no partner), and then a scan must decide.
    brackets = marks.replace(b'""', b"")
    if b'"' in brackets or len(brackets) > _PASSES_UP_TO:
        return _scanned_depth(marks)
    # The text parsed, so its brackets pair up: each pass removes every innermost pair, one level.
    brackets = brackets.translate(_ONE_BRACKET)
    depth = 0
    while brackets and depth <= MAX_JSON_DEPTH:
        brackets = brackets.replace(b"[]", b"")
        depth += 1
    return depth


def _scanned_depth(marks: bytes) -> int:
    """The depth from a text's quotes and brackets (``marks``) by one linear scan: what is between an odd quote
    and the next is in a string."""
    if not marks:
        return 0
    codes = np.frombuffer(marks, np.uint8)
    steps = _BRACKET_STEP[codes].astype(np.int32)
    steps[(np.cumsum(codes == ord('"'), dtype=np.int32) & 1).astype(bool)] = 0  # odd quotes before: in a string
    return int(steps.cumsum().max())


def _may_hold_big_int(raw: bytes | str) -> bool:
    """Whether ``raw`` (JSON text) may hold an integer token of 19 digits or more."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return b"S" + b"0" * 19 in data.translate(_RAW_TOKENS)


def _orjson_canonical(header: dict[str, Any]) -> bytes | None:
    """orjson's sorted, compact JSON of ``header`` when it is byte for byte json.dumps's; None when it may not be."""
    try:
        data = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # an integer past 64 bits, a lone surrogate
        return None
    tokens = data.translate(_OUT_TOKENS)
    if (b"null" in data or b"S" + b"0" * 16 in tokens or b"S-" + b"0" * 16 in tokens
            or _has_small_fraction(data) or _has_exponent(tokens)):
        return None
    return data


def _has_small_fraction(data: bytes) -> bool:
    """Whether a number token (after ``[``, ``:`` or ``,``, perhaps signed) is a fraction below 1e-4 written out:
    one search for its digits, then a look at what precedes each (rare) match, not a search per prefix."""
    at = data.find(b"0.0000")
    while at >= 0:
        start = at - 1 if at and data[at - 1] == ord("-") else at
        if start and data[start - 1] in b"[:,":
            return True
        at = data.find(b"0.0000", at + 1)
    return False


def _has_exponent(tokens: bytes) -> bool:
    """Whether a number token (``S``, then digits, ``.`` and ``-`` as ``0.-``) has an exponent; a digit before
    an ``e`` inside a string (base64 data, text) is looked at and passed over."""
    at = tokens.find(b"0e")
    while at >= 0:
        start = at
        while start > 0 and tokens[start - 1] in b"0.-":
            start -= 1
        if start > 0 and tokens[start - 1] == ord("S"):
            return True
        at = tokens.find(b"0e", at + 2)
    return False


def canonical_sha256(header: dict[str, Any]) -> str:
    """Hash of the header's content, independent of key order and whitespace.

    The hash of ``json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in UTF-8, as
    manifests have always recorded it (duplicates indexed in different runs compare equal). orjson writes the same
    bytes for most headers, and is used when it provably does (``_orjson_canonical``).
    """
    data = _orjson_canonical(header)
    if data is None:
        data = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def first_value(header: dict[str, Any], tag: str) -> Any:
    """The first value of an element, PN as its Alphabetic string; None when absent or empty."""
    elem = header.get(tag)
    if not isinstance(elem, dict):
        return None
    values = elem.get("Value")
    if not isinstance(values, list) or not values:
        return None
    v = values[0]
    if isinstance(v, dict):
        return v.get("Alphabetic")
    return v


def as_int(v: Any) -> int | None:
    """An IS/US value as an int that fits 32-bit columns (the manifest's, the catalogue's), or None."""
    try:
        n = int(float(v)) if isinstance(v, str) else int(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if -(2**31) <= n < 2**31 else None


def key_tags(header: dict[str, Any]) -> dict[str, Any]:
    """The typed key tags of a header, for the manifest."""
    out: dict[str, Any] = {}
    for column, (tag, kind) in KEY_TAGS.items():
        v = first_value(header, tag)
        if v is None:
            out[column] = None
        elif kind is int:
            out[column] = as_int(v)
        else:
            out[column] = str(v).strip()
    out["pixel_ref"] = pixel_ref(header)
    return out


def pixel_ref(header: dict[str, Any]) -> str | None:
    """The BulkDataURI of the header's Pixel Data, if it names one."""
    for tag in PIXEL_DATA_TAGS:
        elem = header.get(tag)
        if isinstance(elem, dict) and isinstance(elem.get("BulkDataURI"), str) and elem["BulkDataURI"].strip():
            return elem["BulkDataURI"]
    return None


def check_identity(header: dict[str, Any], uid: str) -> tuple[str, str]:
    """Check the SOP UIDs; return (sop_class_uid, sop_instance_uid) or raise HeaderError."""
    sop_instance = first_value(header, SOP_INSTANCE_UID)
    sop_class = first_value(header, SOP_CLASS_UID)
    if not sop_instance:
        raise HeaderError("missing_sop_instance_uid", "SOPInstanceUID (0008,0018) is missing")
    if not sop_class:
        raise HeaderError("missing_sop_class_uid", "SOPClassUID (0008,0016) is missing")
    sop_instance, sop_class = str(sop_instance).strip(), str(sop_class).strip()
    for name, value in (("SOPInstanceUID", sop_instance), ("SOPClassUID", sop_class)):
        problem = uid_problem(value)
        if problem:
            # Not the manifest's invalid_uid, which says a member's name is no UID and keeps it out of the join.
            raise HeaderError("invalid_uid_value", f"{name} {value!r} is {problem}")
    if sop_instance != uid:
        raise HeaderError("uid_mismatch", f"header SOPInstanceUID {sop_instance} differs from member UID {uid}")
    return sop_class, sop_instance


def points_at_pixel_member(uri: str, uid: str, pixel_member: str | None) -> bool:
    """Whether a Pixel Data BulkDataURI names the instance's own pixel member."""
    if not uri.strip():
        return True  # an empty URI names nothing (pydicom's own test1.json has one): the pixel member supplies the value
    path = unquote(urlsplit(uri).path or uri).rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if pixel_member and last == pixel_member.rsplit("/", 1)[-1]:
        return True
    stem, _, ext = last.rpartition(".")
    # A numeric "extension" is a UID component: <uid>.5 is another instance, not our file.
    return last == uid or (stem == uid and not ext.isdigit())


def _refuse_bulkdata(tag: str, vr: str, value: str) -> Any:
    raise HeaderError("unresolved_bulkdata", f"BulkDataURI on {tag} ({vr}) points outside the pixel member: {value}")


def prepare_header(header: dict[str, Any], uid: str, raw: bytes | None = None) -> tuple[str, str, dict[str, Any]]:
    """Identity and header rules: (sop_class_uid, sop_instance_uid, the header to encode). Raises HeaderError.

    ``raw``, the bytes ``header`` was parsed from, lets the rules skip checks its text cannot fail."""
    sop_class, sop_instance = check_identity(header, uid)
    return sop_class, sop_instance, check_header(header, raw)


def warned(caught: list[warnings.WarningMessage]) -> str:
    """pydicom's warnings as a suffix for an error's detail (pydicom warns, then fails)."""
    if not caught:
        return ""
    first = str(caught[0].message).splitlines()[0][:160]
    more = f" (+{len(caught) - 1} more)" if len(caught) > 1 else ""
    return f"; pydicom warned: {first}{more}"


def _empty_numbers(ds: Dataset) -> None:
    """null in a multi-valued DS/IS is an empty value at its position (PS3.18 F.2.5); pydicom would write "None"."""
    for elem in ds.iterall():
        if elem.VR in ("DS", "IS") and elem.VM > 1 and any(v is None for v in elem.value):
            elem.value = ["" if v is None else v for v in elem.value]


def build_dataset(header: dict[str, Any], uid: str, pixel_member: str | None = None) -> tuple[Dataset, FileMetaDataset]:
    """Build the dataset (without Pixel Data) and the file meta from a parsed header.

    ``header`` is not modified. Raises HeaderError for unusable headers.
    """
    _, _, header = prepare_header(header, uid)
    body: dict[str, Any] = {}
    meta_json: dict[str, Any] = {}
    for tag, elem in header.items():
        if tag.startswith("0002"):
            meta_json[tag] = elem
        elif tag in PIXEL_DATA_TAGS:
            if isinstance(elem, dict) and "BulkDataURI" in elem and not points_at_pixel_member(str(elem["BulkDataURI"]), uid, pixel_member):
                _refuse_bulkdata(tag, str(elem.get("vr")), str(elem["BulkDataURI"]))
        elif tag not in OFFSET_TABLE_TAGS:
            body[tag] = elem
    with warnings.catch_warnings(record=True) as caught:
        # pydicom warns about values the partner sent as they are (e.g. a nested UID with a
        # leading zero); they are kept verbatim, so the warning is a debug note, not noise per instance.
        warnings.simplefilter("always")
        try:
            ds = Dataset.from_json(body, _refuse_bulkdata)
            meta = FileMetaDataset(Dataset.from_json(meta_json, _refuse_bulkdata)) if meta_json else FileMetaDataset()
            _empty_numbers(ds)
        except HeaderError:
            raise
        except Exception as exc:  # pydicom raises assorted types for a bad JSON model
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise HeaderError("invalid_json_model", f"{type(exc).__name__}: {first}{warned(caught)}") from exc
    for w in caught:
        log.debug("header %s: %s", uid, w.message)
    return ds, meta
