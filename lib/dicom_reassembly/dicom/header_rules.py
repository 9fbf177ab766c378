"""Header rules: what a DICOM JSON header must meet before it is written, and the limits on it.

Both encoders (``fast_encoder`` and the pydicom path in ``dicom_json``) encode the
header :func:`check_header` returns, so they see the same normalised input and stay
byte-identical. Every problem is a HeaderError (ledger status ``invalid_header``)
whose detail names the element. The rules:

- size and nesting are bounded (``too_large``, ``too_deep``): 64 sequence levels is
  several times what real objects use (SR content trees, the deepest, rarely pass 10)
  and keeps pydicom's recursive reader and writer, about six Python frames a level,
  far inside the interpreter's default limit of 1000 frames;
- no elements in groups 0001, 0003, 0005, 0007 or FFFF (PS3.5 7.1), at any level;
- VM 1 for SOPClassUID, SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID;
- UIDs (``invalid_uid_value``: the member's own name is a UID, so the instance still joins its pixels;
  the manifest's ``invalid_uid`` is for member names) at the top level follow PS3.5 9.1 exactly: they identify this object, its study,
  series and frame of reference. Nested UIDs reference other objects and are copied as
  the source had them (a legacy leading zero must still match the object it names, and
  the source file carried the same value), so only what corrupts their encoding is
  refused there: NUL, backslash, control and non-ASCII characters;
- BitsAllocated 1 or a multiple of 8;
- text: default-repertoire VRs (AE, CS, UI, ...) hold ASCII only; when no Specific
  Character Set is declared and other text is not ASCII, ``ISO_IR 192`` is set; a
  declared set that cannot encode the text is an error, never ``?`` replacements;
- ``null`` in a Value array (PS3.18 F.2.5): an empty value at that position in string
  VRs (the encoders do that); trailing nulls of binary VRs are dropped; an interior
  null in a binary VR is an error.
"""

from __future__ import annotations

import codecs
import warnings
from typing import Any

from ..errors import HeaderError
from .uids import encoding_problem, uid_problem

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_SEQUENCE_DEPTH = 64
# The JSON nesting those sequence levels need: dataset, element, Value list per level, plus a PN object.
MAX_JSON_DEPTH = 3 * MAX_SEQUENCE_DEPTH + 4

SPECIFIC_CHARACTER_SET = "00080005"
UTF8_CHARSET = "ISO_IR 192"
SINGLE_VALUED_UIDS = frozenset({"00080016", "00080018", "0020000D", "0020000E"})
BITS_ALLOCATED = "00280100"
# File meta elements the writer replaces (part10.build_file_meta): their source values are never written.
OWNED_META = frozenset({"00020000", "00020001", "00020002", "00020003", "00020010", "00020012", "00020013"})
BINARY_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})
DEFAULT_REPERTOIRE_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UR"})
TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_DEFAULT_TERMS = ("", "ISO_IR 6", "ISO 2022 IR 6")


def element_name(key: str) -> str:
    """``Keyword (GGGG,EEEE)`` for a tag key, or the key itself when it is not a tag."""
    from pydicom.datadict import keyword_for_tag  # here, so that config can import the limits without pydicom

    try:
        tag = int(key, 16)
    except ValueError:
        return repr(key)
    keyword = keyword_for_tag(tag) if len(key) == 8 else ""
    where = f"({key[:4]},{key[4:]})".upper()
    return f"{keyword} {where}" if keyword else where


def _where(path: tuple[tuple[str, int], ...], key: str) -> str:
    """The element at ``key`` under ``path``, named for a reason: innermost first."""
    text = element_name(key)
    for seq_key, index in reversed(path):
        text += f" in item {index + 1} of {element_name(seq_key)}"
    return text


def json_too_deep(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when lists and objects in ``obj`` nest deeper than ``limit``; iterative, so any depth is safe."""
    stack = [(obj, 1)] if type(obj) in (dict, list) else []
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _declared(dataset: dict[str, Any]) -> list[str] | None:
    """A dataset's own Specific Character Set terms, or None when it declares none (absent or empty)."""
    elem = dataset.get(SPECIFIC_CHARACTER_SET)
    values = elem.get("Value") if type(elem) is dict else None
    if type(values) is not list or not any(isinstance(v, str) and v.strip() for v in values):
        return None
    return [v.strip() if isinstance(v, str) else "" for v in values]


def _codecs(terms: list[str]) -> list[str]:
    """Python codecs for the terms, as pydicom uses them; the default repertoire is ASCII, not pydicom's Latin-1."""
    from pydicom.charset import convert_encodings

    with warnings.catch_warnings():  # an unknown term makes pydicom warn and use its default; so do we
        warnings.simplefilter("ignore")
        try:
            names = convert_encodings(list(terms))
        except Exception:  # noqa: BLE001 - terms pydicom cannot map at all: nothing beyond ASCII is safe
            return ["ascii"]
    if terms[0] in _DEFAULT_TERMS:
        names[0] = "ascii"
    return names


def _encodes(text: str, codec: str) -> bool:
    from pydicom.charset import custom_encoders  # the ISO 2022 encoders pydicom writes Japanese with

    try:
        if codec in custom_encoders:
            custom_encoders[codec](text)
        else:
            codecs.encode(text, codec)
    except (UnicodeError, ValueError, LookupError):
        return False
    return True


def _encodable(text: str, encodings: list[str]) -> bool:
    """Whether pydicom's encode_string writes ``text`` without replacement characters.

    It tries each encoding on the whole value, then (with code extensions) splits the value
    among them, which works when every character is encodable by one of them.
    """
    if any(_encodes(text, c) for c in encodings):
        return True
    return len(encodings) > 1 and all(ch.isascii() or any(_encodes(ch, c) for c in encodings) for ch in text)


def _texts(value: Any) -> list[str]:
    """The strings a text value holds: a PN object's component groups, or the value itself."""
    if type(value) is dict:
        return [v for v in value.values() if isinstance(v, str)]
    return [value] if isinstance(value, str) else []


# Groups that shall not be used (PS3.5 7.1), as key prefixes.
_RESERVED_PREFIXES = frozenset({"0001", "0003", "0005", "0007", "FFFF", "ffff"})
# What each VR's values are checked for (a dict lookup per element keeps the walk cheap).
_SEQUENCE, _BINARY, _UID, _ASCII, _TEXT = range(5)
# Top-level groups with rules of their own, and the elements those rules are about.
_TOP_GROUPS = frozenset({"0002", "0008", "0020", "0028"})
_TOP_RULES = SINGLE_VALUED_UIDS | {BITS_ALLOCATED}
_CHECK = {"SQ": _SEQUENCE, "UI": _UID, **dict.fromkeys(BINARY_VRS, _BINARY),
          **dict.fromkeys(DEFAULT_REPERTOIRE_VRS, _ASCII), **dict.fromkeys(TEXT_VRS, _TEXT)}


class _Check:
    """One walk over a header: errors raise, fixes are collected and applied afterwards."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.fixes: list[tuple[tuple[tuple[str, int], ...], str, dict[str, Any]]] = []
        self.needs_utf8 = False

    def run(self) -> dict[str, Any]:
        stack: list[tuple[dict[str, Any], tuple[tuple[str, int], ...], list[str] | None]] = [
            (self.header, (), _declared(self.header))]
        check = _CHECK.get
        while stack:
            dataset, path, terms = stack.pop()
            top = not path
            if not top:
                terms = _declared(dataset) or terms
            for key, elem in dataset.items():
                if not isinstance(key, str):
                    continue
                group = key[:4]
                if group in _RESERVED_PREFIXES or (group[:1] in ("f", "F") and group.upper() == "FFFF"):
                    raise HeaderError("reserved_group", f"{_where(path, key)}: group {group.upper()} is reserved "
                                      "and must not be used (PS3.5 7.1)")
                if type(elem) is not dict:
                    continue  # not the JSON model: pydicom reports it
                values = elem.get("Value")
                if type(values) is not list or not values:
                    continue
                kind = check(elem.get("vr"))
                if kind is None:
                    continue
                if top and group in _TOP_GROUPS:
                    if key in OWNED_META:
                        continue  # replaced by the writer's own value
                    if key in _TOP_RULES:
                        self._top_level(key, values)
                    if kind == _TEXT and group == "0002":
                        kind = _ASCII  # the file meta has no character set
                if kind == _SEQUENCE:
                    if len(path) >= MAX_SEQUENCE_DEPTH:
                        raise HeaderError("too_deep", f"{element_name(key)} at sequence level {len(path) + 1}: "
                                          f"sequences nest more than {MAX_SEQUENCE_DEPTH} sequence levels deep")
                    for index, item in enumerate(values):
                        if type(item) is dict:
                            stack.append((item, (*path, (key, index)), terms))
                elif kind == _BINARY:
                    if None in values:
                        self._nulls(key, elem, values, path)
                elif kind == _UID:
                    for v in values:
                        problem = (uid_problem(v) if top else encoding_problem(v)) if isinstance(v, str) and v else None
                        if problem:
                            raise HeaderError("invalid_uid_value", f"{_where(path, key)} {v[:80]!r} is {problem}")
                elif kind == _ASCII:
                    for v in values:
                        if isinstance(v, str) and not v.isascii():
                            raise HeaderError("unencodable_text", f"{_where(path, key)} {v[:80]!r}: {elem.get('vr')} "
                                              "holds only the default repertoire (ASCII)")
                else:
                    for v in values:
                        if not (v.isascii() if isinstance(v, str) else all(t.isascii() for t in _texts(v))):
                            for text in _texts(v):
                                if not text.isascii():
                                    self._text(key, path, text, terms)
        return self._fixed()

    @staticmethod
    def _top_level(key: str, values: list[Any]) -> None:
        """Rules for the elements that describe this object itself."""
        if key in SINGLE_VALUED_UIDS and len(values) > 1:
            raise HeaderError("invalid_vm", f"{element_name(key)} has {len(values)} values; its VM is 1")
        if key == BITS_ALLOCATED:
            _Check._bits_allocated(values)

    @staticmethod
    def _bits_allocated(values: list[Any]) -> None:
        for v in values:
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)  # other types are pydicom's to refuse
            if numeric and not (v == 1 or (v > 0 and v % 8 == 0)):  # nan and inf fail both tests
                raise HeaderError("invalid_bits_allocated",
                                  f"BitsAllocated (0028,0100) is {v}; it must be 1 or a multiple of 8")

    def _nulls(self, key: str, elem: dict[str, Any], values: list[Any], path: tuple[tuple[str, int], ...]) -> None:
        end = len(values)
        while end and values[end - 1] is None:
            end -= 1
        if None in values[:end]:
            position = values.index(None) + 1
            raise HeaderError("null_in_value", f"{_where(path, key)} has null at value {position} of {len(values)}; "
                              f"{elem.get('vr')} values cannot be empty in the middle")
        self.fixes.append((path, key, {**elem, "Value": values[:end]}))

    def _text(self, key: str, path: tuple[tuple[str, int], ...], text: str, terms: list[str] | None) -> None:
        if terms is None:
            if not _encodes(text, "utf_8"):
                raise HeaderError("unencodable_text", f"{_where(path, key)} {text[:80]!r} is not valid Unicode text")
            self.needs_utf8 = True
        elif not _encodable(text, _codecs(terms)):
            declared = "\\".join(terms)
            raise HeaderError("unencodable_text", f"{_where(path, key)} {text[:80]!r} cannot be encoded in the "
                              f"declared SpecificCharacterSet {declared!r}")

    def _fixed(self) -> dict[str, Any]:
        """The header with the fixes applied; containers on a fix's path are copied, the input is never changed."""
        if not self.fixes and not self.needs_utf8:
            return self.header
        root = dict(self.header)
        if self.needs_utf8:
            root[SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": [UTF8_CHARSET]}
        datasets: dict[tuple[tuple[str, int], ...], dict[str, Any]] = {(): root}
        elements: dict[tuple[Any, ...], dict[str, Any]] = {}
        for path, key, new in self.fixes:
            for depth in range(len(path)):
                prefix, (seq_key, index) = path[:depth], path[depth]
                if path[: depth + 1] in datasets:
                    continue
                parent = datasets[prefix]
                seq = elements.get((prefix, seq_key))
                if seq is None:
                    seq = elements[(prefix, seq_key)] = {**parent[seq_key], "Value": list(parent[seq_key]["Value"])}
                    parent[seq_key] = seq
                item = seq["Value"][index] = dict(seq["Value"][index])
                datasets[path[: depth + 1]] = item
            datasets[path][key] = new
        return root


def _plain(raw: bytes) -> bool:
    """Whether the strings parsed from ``raw`` are exactly its bytes, all ASCII, with no null anywhere (JSON lets
    no control character through unescaped but DEL, which a UID must not hold)."""
    return raw.isascii() and b"\\" not in raw and b"\x7f" not in raw and b"null" not in raw


def _plainly_valid(header: dict[str, Any]) -> bool:
    """True when a header with a plain text (``_plain``) meets every rule; False when the whole walk must decide.

    In such a text no character-set, null or UID-encoding rule can apply and nothing needs fixing: what is
    left is the reserved groups, the sequence depth, the top level's UIDs and its VM and BitsAllocated rules,
    in a walk of a third of the cost.
    """
    for key in _TOP_RULES:
        elem = header.get(key)
        values = elem.get("Value") if type(elem) is dict else None
        if type(values) is list and values and _CHECK.get(elem.get("vr")) is not None:
            try:
                _Check._top_level(key, values)
            except HeaderError:
                return False
    stack: list[tuple[dict[str, Any], int]] = [(header, 0)]
    while stack:
        dataset, level = stack.pop()
        for key, elem in dataset.items():
            group = key[:4]
            if group in _RESERVED_PREFIXES or (group[:1] in ("f", "F") and group.upper() == "FFFF"):
                return False
            if type(elem) is dict:
                vr = elem.get("vr")
                if vr == "SQ":
                    values = elem.get("Value")
                    if type(values) is list and values:
                        if level >= MAX_SEQUENCE_DEPTH:
                            return False
                        stack.extend((item, level + 1) for item in values if type(item) is dict)
                elif vr == "UI" and not level and key not in OWNED_META:
                    values = elem.get("Value")
                    if type(values) is list and any(isinstance(v, str) and v and uid_problem(v) for v in values):
                        return False
    return True


def check_header(header: dict[str, Any], raw: bytes | None = None) -> dict[str, Any]:
    """Apply the rules to a parsed header; return it, or a fixed copy. Raises HeaderError.

    ``raw``, the text ``header`` was parsed from, lets a plain one (ASCII, no escapes) skip to a walk of what
    it can still fail; the whole walk decides otherwise, and names the first problem in the header's order."""
    if raw is not None and _plain(raw) and _plainly_valid(header):
        return header
    return _Check(header).run()
