"""Hypothesis strategies for DICOM JSON headers, inside the model and outside it.

A header is rendered from a ``HeaderSpec``: a plain valid header for a pixel
geometry, changed by up to two ``mods`` and written in one ``form``. Its intent
follows from the mods: VALID_MODS must still be written, INVALID_MODS are
``invalid_header`` under the issue-16 rules, ANY_MODS only keep the invariants.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st
from pixel_strategies import Geometry
from tar_layout import ShortRepr

UID_ROOT = "1.2.826.0.1.3680043.10.543"
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
               "OT": "1.2.840.10008.5.1.4.1.1.7", "US": "1.2.840.10008.5.1.4.1.1.3.1"}


@dataclass(frozen=True)
class HeaderSpec:
    """The choices a header is rendered from; ``mods`` name the ways it leaves a plain valid header."""

    uid: str
    geometry: Geometry
    study: str
    series: str
    sop_class: str
    instance_number: int
    mods: tuple[str, ...] = ()
    form: str = "plain"  # plain | lowercase_keys | list_wrapper | malformed:<how>
    param: int = 0  # a drawn number some mods use (a cut position, a depth, a size)


@dataclass(eq=False)
class Header(ShortRepr):
    """A header member's bytes, the spec they come from, and their intent."""

    data: bytes
    spec: HeaderSpec
    intent: str
    patient_name: str | None  # what PatientName must read back as, when the header is valid

    def __repr__(self) -> str:
        mods = ",".join(self.spec.mods) or "plain"
        return f"Header({mods}, {self.spec.form}, {len(self.data)}B, {self.intent})"


# Header mods by what the issue-16 rules make of them.
VALID_MODS = ("latin1", "utf8", "non_ascii_no_charset", "string_nulls", "binary_trailing_null", "sequence",
              "bulkdata_own", "huge_text", "private")
INVALID_MODS = ("binary_interior_null", "multi_uid", "uid_nul", "uid_newline", "uid_trailing_space", "reserved_group",
                "too_deep", "charset_cannot_encode", "bits_allocated_12", "uid_mismatch", "missing_sop_class",
                "bulkdata_elsewhere")
ANY_MODS = ("wrong_vr", "deep", "huge_lo", "uid_leading_zero", "chaotic")
CHARSET_MODS = ("latin1", "utf8", "non_ascii_no_charset", "charset_cannot_encode")
MALFORMED = ("truncated", "not_utf8", "two_datasets", "scalar", "empty")
KEY_UIDS = {"sop_class": "00080016", "sop_instance": "00080018", "study": "0020000D", "series": "0020000E"}
RESERVED_GROUPS = ("0001", "0003", "0005", "0007", "FFFF")
DEEP_LEVELS = 3000  # far past any sane nesting limit, and past Python's recursion limit in json and pydicom
# PatientName and the Specific Character Set declared with it (None: not declared).
NAMES = {"latin1": (("Müller^Jürgen",), "ISO_IR 100"), "utf8": (("山田^太郎", "Ünal^Çağrı"), "ISO_IR 192"),
         "non_ascii_no_charset": (("Müller^Jürgen", "山田^太郎"), None),
         "charset_cannot_encode": (("山田^太郎",), "ISO_IR 100")}


def patient_name(spec: HeaderSpec) -> str:
    """The PatientName a spec's mods give it."""
    for m in spec.mods:
        if m in NAMES:
            options = NAMES[m][0]
            return options[spec.param % len(options)]
    return "DOE^JOHN"


def _e(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def base_model(spec: HeaderSpec) -> dict[str, Any]:
    """A plain valid header for the spec's geometry."""
    g = spec.geometry
    modality = next(k for k, v in SOP_CLASSES.items() if v == spec.sop_class)
    model = {
        "00080016": _e("UI", spec.sop_class), "00080018": _e("UI", spec.uid), "00080020": _e("DA", "20240102"),
        "00080060": _e("CS", modality), "00100010": _e("PN", {"Alphabetic": "DOE^JOHN"}), "00100020": _e("LO", "P-1"),
        "0020000D": _e("UI", spec.study), "0020000E": _e("UI", spec.series), "00200013": _e("IS", spec.instance_number),
        "00280002": _e("US", g.samples), "00280004": _e("CS", g.photometric), "00280010": _e("US", g.rows),
        "00280011": _e("US", g.columns), "00280100": _e("US", g.bits_allocated), "00280101": _e("US", g.bits_stored),
        "00280102": _e("US", g.bits_stored - 1), "00280103": _e("US", int(g.signed)),
    }
    if g.samples > 1:
        model["00280006"] = _e("US", g.planar)
    if g.frames > 1 or spec.param % 2:
        model["00280008"] = _e("IS", g.frames)
    return model


def _nested(levels: int) -> str:
    """A ReferencedImageSequence nested ``levels`` deep, as JSON text (json.dumps would recurse)."""
    opening = '{"vr":"SQ","Value":[' + '{"00081140":{"vr":"SQ","Value":[' * (levels - 1)
    return opening + "{}" + "]}}" * (levels - 1) + "]}"


def _apply(model: dict[str, Any], mod: str, spec: HeaderSpec) -> str | None:
    """Change ``model`` in place for one mod; return raw JSON text to splice in as 00081140, if any."""
    p = spec.param
    if mod in NAMES:
        charset = NAMES[mod][1]
        model["00100010"] = _e("PN", {"Alphabetic": patient_name(spec)})
        if charset:
            model["00080005"] = _e("CS", charset)
    elif mod == "string_nulls":
        model["00080008"] = _e("CS", "ORIGINAL", None, "AXIAL")
    elif mod == "binary_trailing_null":
        model["00181310"] = _e("US", 128, 0, 0, 32, None)  # pydicom's test1.json
    elif mod == "binary_interior_null":
        model["00181310"] = _e("US", 128, None, 0, 32)
    elif mod == "sequence":
        item = {"00081150": _e("UI", SOP_CLASSES["CT"]), "00081155": _e("UI", f"{UID_ROOT}.9.{p % 7}")}
        for _ in range(p % 3):
            item = {**item, "00081140": _e("SQ", dict(item))}
        model["00081140"] = _e("SQ", item, {})
    elif mod == "bulkdata_own":
        model["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{spec.uid}.j2c"}
    elif mod == "bulkdata_elsewhere":
        model["7FE00010"] = {"vr": "OB", "BulkDataURI": "http://elsewhere.example/other.j2c"}
    elif mod == "huge_text":
        model["0040A160"] = _e("UT", "x" * (64 * 1024 + p % 4096))
    elif mod == "huge_lo":
        model["00081030"] = _e("LO", "y" * (70_000 + p % 100))
    elif mod == "private":
        model.update({"00090010": _e("LO", "FUZZ CREATOR"), "00091001": _e("LO", "private"),
                      "00091002": {"vr": "UN", "InlineBinary": base64.b64encode(b"\x01\x02\x03").decode()}})
    elif mod == "multi_uid":
        tag = list(KEY_UIDS.values())[p % 4]
        model[tag] = _e("UI", model[tag]["Value"][0], f"{UID_ROOT}.77")
    elif mod in ("uid_nul", "uid_newline", "uid_trailing_space"):
        tag = KEY_UIDS["study" if p % 2 else "series"]
        v = model[tag]["Value"][0]
        model[tag] = _e("UI", {"uid_nul": v[:5] + "\x00" + v[5:], "uid_newline": v + "\n", "uid_trailing_space": v + " "}[mod])
    elif mod == "uid_leading_zero":
        model["0020000D"] = _e("UI", "1.2.03.4")
    elif mod == "reserved_group":
        model[f"{RESERVED_GROUPS[p % 5]}0010"] = _e("LO", "reserved")
    elif mod == "bits_allocated_12":
        model.update({"00280100": _e("US", 12), "00280101": _e("US", 12), "00280102": _e("US", 11)})
    elif mod == "uid_mismatch":
        model["00080018"] = _e("UI", f"{spec.uid}.9")
    elif mod == "missing_sop_class":
        del model["00080016"]
    elif mod == "wrong_vr":
        tag, elem = [("00280010", _e("DS", "abc")), ("00100010", _e("US", "Doe")), ("00200013", _e("IS", "one")),
                     ("00080020", _e("DA", 20240101)), ("00280011", _e("US", "32"))][p % 5]
        model[tag] = elem
    elif mod == "chaotic":
        vr = ["US", "SQ", "PN", "OB", "AT", "XX", "FD"][p % 7]
        model["00189999"] = {"vr": vr, "Value": [[1, {"a": None}], "x", -(2**70), 1e308, {"Alphabetic": 3}][: 1 + p % 5]}
    elif mod == "too_deep":
        return _nested(DEEP_LEVELS)
    elif mod == "deep":
        return _nested(10 + p % 300)
    return None


def render(spec: HeaderSpec) -> bytes:
    """The header member's bytes."""
    model = base_model(spec)
    spliced = [s for s in (_apply(model, m, spec) for m in spec.mods) if s]
    if spec.form == "lowercase_keys":
        model = {k.lower(): v for k, v in model.items()}
    text = json.dumps(model, ensure_ascii=False, separators=(",", ":"))
    if spliced:
        model.pop("00081140", None)
        text = json.dumps(model, ensure_ascii=False, separators=(",", ":"))[:-1] + ',"00081140":' + spliced[0] + "}"
    if spec.form == "list_wrapper":
        text = f"[{text}]"
    data = text.encode("utf-8")
    how = spec.form.partition(":")[2]
    if how == "truncated":
        return data[: 1 + spec.param % (len(data) - 1)]
    if how == "not_utf8":
        return data[:-1] + b"\xff}"
    if how == "two_datasets":
        return b"[" + data + b"," + data + b"]"
    if how == "scalar":
        return b"42"
    if how == "empty":
        return b""
    return data


def header_intent(spec: HeaderSpec) -> str:
    if spec.form.startswith("malformed"):
        return "invalid"
    if any(m in ANY_MODS for m in spec.mods):
        return "any"
    return "invalid" if any(m in INVALID_MODS for m in spec.mods) else "valid"


def make_header(spec: HeaderSpec) -> Header:
    intent = header_intent(spec)
    return Header(render(spec), spec, intent, patient_name(spec) if intent == "valid" else None)


@st.composite
def header_specs(draw: st.DrawFn, uid: str, g: Geometry, study: str | None = None, mods: bool = True) -> HeaderSpec:
    """A plain header, or one with up to two mods (at most one about the character set) and an odd form."""
    g_class = "US" if g.samples == 3 else draw(st.sampled_from(("CT", "MR", "OT")))
    spec = HeaderSpec(uid, g, study or f"{uid}.1", f"{uid}.2", SOP_CLASSES[g_class], draw(st.integers(1, 9)),
                      param=draw(st.integers(0, 10**6)))
    if not mods:
        return spec
    chosen = draw(st.lists(st.sampled_from(VALID_MODS + INVALID_MODS + ANY_MODS), max_size=2, unique=True))
    chosen = [m for m in chosen if m not in CHARSET_MODS] + [m for m in chosen if m in CHARSET_MODS][:1]
    form = draw(st.sampled_from(("plain", "plain", "plain", "lowercase_keys", "list_wrapper", "malformed")))
    if form == "malformed":
        form = f"malformed:{draw(st.sampled_from(MALFORMED))}"
    return replace(spec, mods=tuple(chosen), form=form)
