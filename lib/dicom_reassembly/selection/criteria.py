"""Cohort selection criteria, compiled: one ``Criterion`` per rule, and their evaluation against DICOM JSON headers.

Everything is validated when compiling (no header is needed: the VR comes from the DICOM dictionary), so a bad
criterion stops the job before any work. Criteria are compiled once (parsed dates, durations, sets) because
evaluation runs once per header, on billions of headers. A ``Criterion`` holds no secret: it is what Spark
executors receive.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from ..errors import CriteriaError

if TYPE_CHECKING:  # spec imports this module
    from .spec import CriteriaSpec

log = logging.getLogger(__name__)
OPERATIONS = ("EQUALS", "GREATER", "LESS", "IN")
SUPPORTED_VRS = ("DA", "CS", "AS")
_ALLOWED_OPERATIONS = {
    "DA": frozenset(OPERATIONS),
    "AS": frozenset(OPERATIONS),
    "CS": frozenset(("EQUALS", "IN")),  # codes have no order
}
_CRITERION_FIELDS = frozenset(("dicom_tag", "operation", "reference"))
# AS durations in 1/48 day: with M = 365.25/12 = 30.4375 days and Y = 365.25 days every unit is a whole number,
# so comparisons are exact integers and 030Y == 360M holds without float tolerance.
_AS_UNITS = {"D": 48, "W": 7 * 48, "M": 1461, "Y": 17532}
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_AS_REFERENCE = re.compile(r"(\d{3})([DWMY])")
_AS_VALUE = re.compile(r"(\d{1,3})([DWMY])")  # values: tolerate missing zero padding ("30Y"), it is unambiguous
_TAG_TEXT = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)|([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_CONTROL = {c: " " for c in range(0x20)}
_MAX_SHOWN = 64


def show(value: Any, limit: int = _MAX_SHOWN) -> str:
    """A user value for a one-line message: JSON-quoted, control characters escaped, truncated."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str, limit: int = _MAX_SHOWN) -> str:
    """Header text made safe for a one-line ledger reason."""
    text = text.translate(_CONTROL)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.lru_cache(maxsize=1 << 16)
def _parse_da(text: str) -> int | None:
    """DA ``YYYYMMDD`` -> the int YYYYMMDD (ordered like the calendar), None if not a real date."""
    s = text.strip()
    if len(s) != 8 or not (s.isascii() and s.isdigit()):
        return None
    try:
        date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None
    return int(s)


@functools.lru_cache(maxsize=1 << 14)
def _parse_as(text: str) -> int | None:
    """AS ``nnnD/W/M/Y`` -> duration in 1/48 day, None if malformed."""
    m = _AS_VALUE.fullmatch(text.strip())
    if m is None or not m.group(1).isascii():
        return None
    return int(m.group(1)) * _AS_UNITS[m.group(2)]


def _parse_cs(text: str) -> str | None:
    """CS: trimmed text, None when empty."""
    s = text.strip()
    return s or None


_PARSERS = {"DA": _parse_da, "AS": _parse_as, "CS": _parse_cs}


def _render_values(values: Any) -> str:
    """An element's values for a reason: multi-values joined by backslash, ``<empty>`` when there is nothing."""
    if values is None:
        return "<empty>"
    if not isinstance(values, list):
        values = [values]
    parts = []
    for v in values:
        if v is None:
            parts.append("")
        elif isinstance(v, str):
            parts.append(v.strip())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(str(v))
        else:
            parts.append(json.dumps(v, ensure_ascii=False, sort_keys=True, default=str))
    text = "\\".join(parts)
    if not text.strip("\\ "):
        return "<empty>"
    return _one_line(text)


@dataclass(frozen=True)
class Criterion:
    """One validated, compiled criterion. Holds no secret; safe to ship to Spark executors."""

    index: int
    tag: int
    keyword: str
    vr: str
    operation: str
    reference: str | tuple[str, ...]
    key: str = field(repr=False, compare=False)
    key_alt: str | None = field(repr=False, compare=False)
    label: str = field(repr=False, compare=False)
    reference_text: str = field(repr=False, compare=False)
    ref_values: frozenset[Any] = field(repr=False, compare=False)
    ref_point: Any = field(repr=False, compare=False)

    @property
    def tag_text(self) -> str:
        """The tag as ``(gggg,eeee)``."""
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    def to_public(self) -> dict[str, Any]:
        """The canonical JSON form (tag as a list of two hex strings)."""
        ref: Any = list(self.reference) if isinstance(self.reference, tuple) else self.reference
        return {"dicom_tag": [f"{self.tag >> 16:04X}", f"{self.tag & 0xFFFF:04X}"],
                "operation": self.operation, "reference": ref}

    def _reason(self, value_text: str, note: str = "") -> str:
        return f"{self.label} {value_text} not {self.operation} {self.reference_text}{note}"

    def check(self, header: Mapping[str, Any]) -> str | None:
        """None when the criterion holds for this header, else the one-line reason."""
        elem = header.get(self.key)
        if elem is None and self.key_alt is not None:
            elem = header.get(self.key_alt)
        if elem is None:
            return self._reason("<missing>")
        if not isinstance(elem, Mapping):
            return self._reason("<unparseable>")
        values = elem.get("Value")
        vr = elem.get("vr") or self.vr
        if vr != self.vr:
            shown = "<binary>" if values is None and ("InlineBinary" in elem or "BulkDataURI" in elem) else None
            return self._reason(shown or _render_values(values),
                                f" (header VR {_one_line(str(vr), 8)}, criterion needs {self.vr})")
        if not values:
            return self._reason("<empty>")
        parse = _PARSERS[self.vr]
        op = self.operation
        parsed_any = False
        for part in value_parts(values):
            x = parse(part)
            if x is None:
                continue
            parsed_any = True
            if op == "GREATER":
                if x > self.ref_point:
                    return None
            elif op == "LESS":
                if x < self.ref_point:
                    return None
            elif x in self.ref_values:
                return None
        shown = _render_values(values)
        if shown == "<empty>":
            return self._reason(shown)
        return self._reason(shown, "" if parsed_any else " (unparseable value)")


def value_parts(values: Any) -> Iterator[str]:
    """The text parts of an element's ``Value`` that criteria compare, unparsed.

    A value that is not a list is one value; values that are not strings are skipped; a backslash cannot occur
    inside a DA, CS or AS value, so one inside a string can only be a flattened multi-value, and splits it.
    """
    for v in values if isinstance(values, list) else (values,):
        if isinstance(v, str):
            yield from (v.split("\\") if "\\" in v else (v,))


@functools.lru_cache(maxsize=4096)
def dictionary_vr(key: str) -> str | None:
    """The DICOM dictionary's VR of a tag given as ``GGGGEEEE``, or None (private, unknown, or not hex)."""
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(int(key, 16)))
    except (KeyError, ValueError):
        return None


def selectable_values(header: Mapping[str, Any]) -> dict[str, list[str]]:
    """What criteria can select on in a header: every top-level DA, CS and AS element, by tag (``GGGGEEEE``).

    An element counts when its VR (the header's, or the dictionary's when the header gives none) is the
    dictionary's, as ``Criterion.check`` requires; its parts are stripped and empty ones left out, which is
    what each VR's parser does before comparing. A criterion holds on the header exactly when it holds on
    these parts (``selection.sql`` compiles criteria to SQL over them; tests prove both agree).
    """
    out: dict[str, list[str]] = {}
    for key in sorted({k.upper() for k in header if isinstance(k, str)}):
        elem = header.get(key)
        if elem is None:  # as ``Criterion.check`` looks: the upper-case key, else the lower-case one
            elem = header.get(key.lower())
        if not isinstance(elem, Mapping):
            continue
        vr = dictionary_vr(key)
        if vr not in SUPPORTED_VRS or (elem.get("vr") or vr) != vr:
            continue
        values = elem.get("Value")
        parts = [s for s in (p.strip() for p in value_parts(values)) if s] if values else []
        out[key] = parts
    return out


def first_failure(criteria: CriteriaSpec | Sequence[Criterion], header: Mapping[str, Any]) -> str | None:
    """None when every criterion holds (AND) for ``header`` (DICOM JSON dict), else the first failure's reason."""
    crits = getattr(criteria, "criteria", criteria)  # a CriteriaSpec, or its criteria
    if not isinstance(header, Mapping):
        header = {}
    for c in crits:
        reason = c.check(header)
        if reason is not None:
            return reason
    return None


def matches(criteria: CriteriaSpec | Sequence[Criterion], header: Mapping[str, Any]) -> bool:
    """True when every criterion holds for ``header``."""
    return first_failure(criteria, header) is None


def first_failure_json(criteria: CriteriaSpec | Sequence[Criterion], header_json: str | bytes | None) -> str | None:
    """``first_failure`` on a header's JSON text; text that is not a JSON object fails every criterion."""
    crits = getattr(criteria, "criteria", criteria)  # a CriteriaSpec, or its criteria
    if not crits:
        return None
    try:
        header = json.loads(header_json) if header_json is not None else None
    except (ValueError, TypeError):
        header = None
    return first_failure(crits, header if isinstance(header, Mapping) else {})


def _parse_tag(raw: Any, where: str) -> int:
    """A tag from ["gggg","eeee"], "ggggeeee", "(gggg,eeee)", "gggg,eeee" or a dictionary keyword."""
    if isinstance(raw, (list, tuple)):
        if len(raw) == 2 and all(isinstance(p, str) and _HEX4.fullmatch(p) for p in raw):
            return (int(raw[0], 16) << 16) | int(raw[1], 16)
    elif isinstance(raw, str):
        s = raw.strip()
        m = _TAG_TEXT.fullmatch(s)
        if m:
            g, e = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            return (int(g, 16) << 16) | int(e, 16)
        if _KEYWORD.fullmatch(s):
            from pydicom.datadict import tag_for_keyword

            tag = tag_for_keyword(s)
            if tag is None:
                raise CriteriaError("unknown_tag", f"{where}: {show(s)} is not a DICOM keyword")
            return int(tag)
    raise CriteriaError("bad_tag", f"{where}: malformed dicom_tag {show(raw)} (expected [\"gggg\", \"eeee\"] hex)")


def _dictionary_entry(tag: int, where: str) -> tuple[str, str]:
    """(VR, keyword) from the DICOM dictionary; the VR decides how values compare."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    tag_text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        raise CriteriaError("unknown_tag", f"{where} {tag_text}: not in the DICOM dictionary (private or unknown "
                                           f"tag; only DA, CS and AS elements can be selected on)") from None
    return vr, keyword_for_tag(tag) or ""


def _compile_scalar(vr: str, raw: Any, where: str) -> tuple[str, Any]:
    """(canonical reference text, comparable key) for one reference value of ``vr``."""
    if not isinstance(raw, str):
        raise CriteriaError("bad_reference_type", f"{where}: reference {show(raw)} must be a string for VR {vr}")
    if vr == "DA":
        s = raw.strip()
        if not _ISO_DATE.fullmatch(s) or not s.isascii():
            raise CriteriaError("bad_date", f"{where}: invalid date {show(raw)} (expected YYYY-MM-DD)")
        try:
            d = date.fromisoformat(s)
        except ValueError:
            raise CriteriaError("bad_date", f"{where}: invalid date {show(raw)} (no such calendar day)") from None
        return s, d.year * 10000 + d.month * 100 + d.day
    if vr == "AS":
        s = raw.strip()
        m = _AS_REFERENCE.fullmatch(s)
        if m is None or not s.isascii():
            raise CriteriaError("bad_age", f"{where}: invalid age {show(raw)} (expected nnnD, nnnW, nnnM or nnnY, "
                                           f"e.g. 030Y)")
        return s, int(m.group(1)) * _AS_UNITS[m.group(2)]
    s = raw.strip()
    if not s or "\\" in s or any(ord(ch) < 0x20 for ch in s):
        raise CriteriaError("bad_code_string", f"{where}: invalid code string {show(raw)} (must be non-empty, "
                                               f"without backslash or control characters)")
    return s, s


def compile_criterion(index: int, raw: Any) -> Criterion:
    where = f"criteria[{index}]"
    if not isinstance(raw, Mapping):
        raise CriteriaError("criterion_not_object", f"{where}: expected an object with dicom_tag, operation, "
                                                    f"reference, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _CRITERION_FIELDS)
    if unknown:
        raise CriteriaError("unknown_field", f"{where}: unknown field {show(unknown[0], 40)} (allowed: dicom_tag, "
                                             f"operation, reference)")
    if "dicom_tag" not in raw:
        raise CriteriaError("missing_field", f"{where}: missing field 'dicom_tag'")
    tag = _parse_tag(raw["dicom_tag"], where)
    tag_text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    vr, keyword = _dictionary_entry(tag, where)
    label = f"{tag_text} {keyword}" if keyword else tag_text
    where = f"{where} {label}"
    missing = [k for k in ("operation", "reference") if k not in raw]
    if missing:
        raise CriteriaError("missing_field", f"{where}: missing field {missing[0]!r}")
    op = raw["operation"]
    if op not in OPERATIONS:
        raise CriteriaError("unknown_operation", f"{where}: unknown operation {show(op, 40)} "
                                                 f"(expected one of {', '.join(OPERATIONS)})")
    if vr not in _ALLOWED_OPERATIONS:
        raise CriteriaError("unsupported_vr", f"{where}: VR {vr} is not supported (only DA, CS and AS)")
    if op not in _ALLOWED_OPERATIONS[vr]:
        raise CriteriaError("operation_not_allowed", f"{where}: {op} is not allowed on VR {vr} "
                                                     f"(allowed: {', '.join(sorted(_ALLOWED_OPERATIONS[vr]))})")
    ref = raw["reference"]
    if op == "IN":
        if not isinstance(ref, list) or not ref:
            raise CriteriaError("bad_reference_shape", f"{where}: IN needs a non-empty list reference, got "
                                                       f"{show(ref, 40)}")
        compiled = [_compile_scalar(vr, item, f"{where} reference[{i}]") for i, item in enumerate(ref)]
        texts = tuple(t for t, _ in compiled)
        return Criterion(index=index, tag=tag, keyword=keyword, vr=vr, operation=op, reference=texts,
                         key=f"{tag:08X}", key_alt=_alt_key(tag), label=label,
                         reference_text="[" + ", ".join(texts) + "]",
                         ref_values=frozenset(k for _, k in compiled), ref_point=None)
    if isinstance(ref, (list, dict)):
        raise CriteriaError("bad_reference_shape", f"{where}: {op} needs a single value reference, got "
                                                   f"{type(ref).__name__}")
    text, key = _compile_scalar(vr, ref, where)
    return Criterion(index=index, tag=tag, keyword=keyword, vr=vr, operation=op, reference=text,
                     key=f"{tag:08X}", key_alt=_alt_key(tag), label=label, reference_text=text,
                     ref_values=frozenset((key,)), ref_point=key)


def _alt_key(tag: int) -> str | None:
    """Lower-case JSON key for producers that do not upper-case hex digits, when it differs."""
    low = f"{tag:08x}"
    return low if low != f"{tag:08X}" else None
