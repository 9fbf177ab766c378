"""Hypothesis strategies for whole deliveries, and what a run must make of them.

An instance is a header (tests/header_strategies.py) and a pixel payload
(tests/pixel_strategies.py) drawn for one geometry, in one of the SHAPES
(a pair, an orphan half, duplicates, conflicts, a misplaced header). Its
members, and members of no instance (non-regular ones with lying size fields,
odd names, bad UIDs), are spread over text and image archives
(tests/tar_layout.py) with odd names and damage. Every piece carries its
``intent`` under the issue-16 rules, so ``Instance.expected`` is the set of
ledger statuses its rows must have when its members survive the tar layer;
``expectation_problems`` checks a run against all of it. Reprs are short, so a
falsifying example reads as a description of the delivery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from header_strategies import SOP_CLASSES, UID_ROOT, Header, HeaderSpec, header_specs, make_header
from hypothesis import strategies as st
from pixel_strategies import (
    J2K_SOURCES,
    Geometry,
    Pixels,
    j2k_encoded,
    j2k_pixels,
    native_array,
    native_geometries,
    native_payload,
    native_pixels,
)
from tar_layout import DAMAGE_KINDS, IN_HEADER, NON_REGULAR, Damage, Entry, Placed, ShortRepr, build_archive

DEFAULT_TEMPLATE = "{sop_instance_uid}.dcm"
# Two instances whose study and SOP UIDs concatenate to the same text get one key under this template.
COLLIDING_TEMPLATE = "{study_instance_uid}{sop_instance_uid}.dcm"
PIXEL_EXTENSIONS = (".j2c", ".j2k", ".raw", ".pixels")


@dataclass(eq=False)
class Instance(ShortRepr):
    """One UID's members and the statuses its ledger rows must have (None: only the invariants)."""

    uid: str
    shape: str
    headers: list[Header]
    pixels: list[Pixels]
    expected: frozenset[str] | None
    pixel_ext: str = ".j2c"

    def __repr__(self) -> str:
        exp = "/".join(sorted(self.expected)) if self.expected else "?"
        return f"Instance({self.uid} {self.shape} {self.headers} {self.pixels} -> {exp})"


@dataclass(eq=False)
class ArchiveSpec(ShortRepr):
    """One tar file: its entries in order, at most one damage, and how many zero blocks end it."""

    role: str  # text | images
    name: str
    entries: list[Entry]
    damage: Damage | None = None
    end_blocks: int = 2

    def __repr__(self) -> str:
        return f"Archive({self.role}/{self.name} {self.entries} {self.damage or ''} end={self.end_blocks})"


@dataclass(eq=False)
class Delivery(ShortRepr):
    """Instances spread over archives, and the key template the run writes them under."""

    instances: list[Instance]
    archives: list[ArchiveSpec]
    key_template: str = DEFAULT_TEMPLATE

    def __repr__(self) -> str:
        lines = ["Delivery(", *(f"  {i!r}" for i in self.instances), *(f"  {a!r}" for a in self.archives),
                 f"  key_template={self.key_template!r})"]
        return "\n".join(lines)

    def write(self, root: str) -> dict[str, tuple[ArchiveSpec, list[Placed]]]:
        """Write the archives under root/text and root/images; per archive path: its spec and placed entries."""
        layout = {}
        for role in ("text", "images"):
            os.makedirs(os.path.join(root, role), exist_ok=True)
        for a in self.archives:
            data, placed = build_archive(a.entries, a.damage, a.end_blocks)
            path = os.path.join(root, a.role, a.name)
            with open(path, "wb") as f:
                f.write(data)
            layout[path] = (a, placed)
        return layout


# ---------------------------------------------------------------- instances and deliveries

SHAPES = ("pair", "pair", "pair", "header_only", "pixels_only", "dup_header", "dup_pixels", "conflict_headers",
          "conflict_pixels", "misplaced_header")


def expected_statuses(shape: str, h: str, p: str) -> frozenset[str] | None:
    """The statuses an instance's ledger rows must have, from its shape and its header and pixel intents."""
    if shape == "pixels_only":
        return frozenset({"orphan_pixels"})
    if shape == "misplaced_header":
        return frozenset({"invalid_header"})
    if h != "valid":
        # An invalid header may be refused when indexed or when assembled: copies and orphans then differ.
        return frozenset({"invalid_header"}) if h == "invalid" and shape == "pair" and p == "valid" else None
    if shape == "header_only":
        return frozenset({"orphan_header"})
    if shape.startswith("conflict"):
        return frozenset({"conflict"})
    one = {"valid": "written", "invalid": "invalid_pixels"}.get(p)
    if one is None:
        return None
    return frozenset({one, "duplicate"} if shape.startswith("dup") else {one})


@st.composite
def instances(draw: st.DrawFn, uid: str, *, study: str | None = None, header_mods: bool = True,
              pixel_variants: bool = True, shapes: tuple[str, ...] = SHAPES) -> Instance:
    """One UID's members: a header and a pixel payload drawn for one geometry, in one of the SHAPES."""
    if draw(st.booleans()):
        pixels, g = draw(native_pixels(draw(native_geometries()), pixel_variants))
    else:
        pixels, g = draw(j2k_pixels(pixel_variants))
    spec = draw(header_specs(uid, g, study, header_mods))
    header = make_header(spec)
    shape = draw(st.sampled_from(shapes))
    headers, pixel_list = [header], [pixels]
    if shape == "header_only":
        pixel_list = []
    elif shape == "pixels_only":
        headers = []
    elif shape == "dup_header":
        headers = [header, header]
    elif shape == "dup_pixels":
        pixel_list = [pixels, pixels]
    elif shape == "conflict_headers":
        headers = [header, make_header(replace(spec, instance_number=spec.instance_number + 1))]
    elif shape == "conflict_pixels":
        same_size = bytes([pixels.payload[0] ^ 1]) + pixels.payload[1:] if pixels.payload else b""
        other = same_size if same_size and draw(st.booleans()) else pixels.payload + b"\0\0"
        pixel_list = [pixels, Pixels(other, "other copy", "any")]
    return Instance(uid, shape, headers, pixel_list, expected_statuses(shape, header.intent, pixels.intent),
                    draw(st.sampled_from(PIXEL_EXTENSIONS)))


@st.composite
def colliding_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Two (study, SOP instance) UID pairs whose concatenations are one string: 1.2.5 + 34.7 and 1.2.53 + 4.7."""
    stem = f"{UID_ROOT}.{draw(st.integers(1, 999))}"
    a, b = draw(st.integers(1, 9)), draw(st.integers(1, 99))
    tail = f".{draw(st.integers(1, 999))}"
    return [(stem, f"{a}{b}{tail}"), (f"{stem}{a}", f"{b}{tail}")]


@st.composite
def damages(draw: st.DrawFn, entries: int) -> Damage:
    kinds = DAMAGE_KINDS if entries else tuple(k for k in DAMAGE_KINDS if k not in IN_HEADER)
    kind = draw(st.sampled_from(kinds))
    if kind == "truncate":
        return Damage(kind, cut_fraction=draw(st.floats(0, 1, exclude_max=True)))
    at = draw(st.integers(0, entries - 1 if kind in IN_HEADER else entries))
    # A first byte that is not zero: a block of zeros is the other kind of damage.
    garbage = bytes([draw(st.integers(1, 255))]) + draw(st.binary(max_size=1100)) if kind == "garbage" else b""
    return Damage(kind, at, garbage)


LONG_DIR = "delivery-" + "d" * 100 + "/"


@st.composite
def entries_for(draw: st.DrawFn, name: str, data: bytes, naming: bool) -> Entry:
    if not naming:
        return Entry(name, data)
    folder = draw(st.sampled_from(("", "", "series-1/", LONG_DIR)))
    return Entry(folder + name, data, naming=draw(st.sampled_from(("ustar", "gnu", "pax"))),
                 pax_size=draw(st.integers(0, 4)) == 4)  # rare, and shrinks to False


@st.composite
def extra_entries(draw: st.DrawFn, uids: list[str]) -> Entry:
    """Members that belong to no instance: non-regular ones with a lying size field, odd names, bad UIDs."""
    kind = draw(st.sampled_from(("non_regular", "non_regular", "unexpected", "invalid_uid")))
    if kind == "non_regular":
        name = draw(st.sampled_from((f"{uids[0]}.j2c", f"{uids[0]}.json", "series-1", "link.json")))
        size = draw(st.sampled_from((0, 1, 511, 4096, 1 << 20)) | st.integers(0, 1 << 21))
        return Entry(name, type=draw(st.sampled_from(NON_REGULAR)), claimed_size=size)
    if kind == "unexpected":
        return Entry("README.txt", b"delivered by the fuzzer\n")
    return Entry(draw(st.sampled_from(("01.2.3.json", "1..2.j2c", "1.2.x.raw"))), b"{}")


@st.composite
def deliveries(draw: st.DrawFn, *, max_instances: int = 4, header_mods: bool = True, pixel_variants: bool = True,
               shapes: tuple[str, ...] = SHAPES, tar_damage: bool = True, extras: bool = True, naming: bool = True,
               collisions: bool = False) -> Delivery:
    """Instances spread over one or two text and image archives, with extra members, odd names and damage."""
    numbers = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=max_instances, unique=True))
    insts = [draw(instances(f"{UID_ROOT}.{n}", header_mods=header_mods, pixel_variants=pixel_variants, shapes=shapes))
             for n in numbers]
    template = DEFAULT_TEMPLATE
    if collisions and draw(st.booleans()):
        template = COLLIDING_TEMPLATE
        for study, sop in draw(colliding_pairs()):
            inst = draw(instances(sop, study=study, header_mods=False, pixel_variants=False, shapes=("pair",)))
            inst.expected = None  # one of the two may be refused as a conflict
            insts.append(inst)
    text: list[list[Entry]] = [[] for _ in range(draw(st.integers(1, 2)))]
    images: list[list[Entry]] = [[] for _ in range(draw(st.integers(1, 2)))]
    for inst in insts:
        for h in inst.headers:
            where = images if inst.shape == "misplaced_header" else text
            where[draw(st.integers(0, len(where) - 1))].append(draw(entries_for(f"{inst.uid}.json", h.data, naming)))
        for p in inst.pixels:
            images[draw(st.integers(0, len(images) - 1))].append(
                draw(entries_for(f"{inst.uid}{inst.pixel_ext}", p.payload, naming)))
    if extras:
        for e in draw(st.lists(extra_entries([i.uid for i in insts]), max_size=3)):
            (text + images)[draw(st.integers(0, len(text) + len(images) - 1))].append(e)
    archives = []
    for role, groups in (("text", text), ("images", images)):
        for i, group in enumerate(groups):
            ordered = draw(st.permutations(group))
            damage = draw(st.none() | damages(len(ordered))) if tar_damage else None
            archives.append(ArchiveSpec(role, f"{role}-{i}.tar", list(ordered), damage,
                                        draw(st.sampled_from((2, 2, 0, 20)))))
    return Delivery(insts, archives, template)


def showcase_delivery() -> Delivery:
    """A hand-built delivery with one of each outcome: a fixed example for the Spark comparison and the meta-tests."""
    uid = [f"{UID_ROOT}.{n}" for n in range(1, 10)]
    src = J2K_SOURCES[0]
    frames, arr = j2k_encoded(src)
    g = src.geometry()
    j2k = Pixels(frames[0], "j2k:u8", "valid", arr)
    ng = Geometry(3, 4, 1, 1, 16, 12, True, "MONOCHROME2")
    data, narr = native_payload(ng, native_array(ng, 0))
    native = Pixels(data, "native 3x4 16/12s", "valid", narr[0])

    def header(i: int, geometry: Geometry, mods: tuple[str, ...] = (), number: int = 1) -> Header:
        return make_header(HeaderSpec(uid[i], geometry, f"{uid[i]}.1", f"{uid[i]}.2", SOP_CLASSES["CT"], number, mods))

    dup = header(2, g)
    insts = [
        Instance(uid[0], "pair", [header(0, g)], [j2k], frozenset({"written"})),
        Instance(uid[1], "pair", [header(1, ng)], [native], frozenset({"written"}), ".raw"),
        Instance(uid[2], "dup_header", [dup, dup], [j2k], frozenset({"written", "duplicate"})),
        Instance(uid[3], "conflict_headers", [header(3, g), header(3, g, number=2)], [j2k], frozenset({"conflict"})),
        Instance(uid[4], "header_only", [header(4, g)], [], frozenset({"orphan_header"})),
        Instance(uid[5], "pixels_only", [], [native], frozenset({"orphan_pixels"}), ".raw"),
        Instance(uid[6], "pair", [header(6, g, ("missing_sop_class",))], [j2k], frozenset({"invalid_header"})),
        Instance(uid[7], "pair", [header(7, g)], [Pixels(b"\x00\x01\x02", "native -1021", "invalid")],
                 frozenset({"invalid_pixels"}), ".raw"),
        Instance(uid[8], "pixels_only", [], [j2k], None),
    ]

    def member(i: int, ext: str, data: bytes, folder: str = "") -> Entry:
        return Entry(f"{folder}{uid[i]}{ext}", data)

    text = [
        ArchiveSpec("text", "text-0.tar", [member(0, ".json", insts[0].headers[0].data, "series-1/"),
                                           member(1, ".json", insts[1].headers[0].data),
                                           member(2, ".json", dup.data), member(3, ".json", insts[3].headers[0].data),
                                           Entry("series-1", type="directory")]),
        ArchiveSpec("text", "text-1.tar", [member(4, ".json", insts[4].headers[0].data, LONG_DIR),
                                           member(6, ".json", insts[6].headers[0].data),
                                           member(7, ".json", insts[7].headers[0].data),
                                           member(2, ".json", dup.data), member(3, ".json", insts[3].headers[1].data),
                                           Entry("README.txt", b"hello\n"), Entry("link.json", type="symlink")]),
    ]
    images = [
        ArchiveSpec("images", "images-0.tar", [member(i, ".j2c", j2k.payload) for i in (0, 2, 3, 6)]
                    + [member(1, ".raw", native.payload)]),
        ArchiveSpec("images", "images-1.tar", [member(5, ".raw", native.payload), member(7, ".raw", b"\x00\x01\x02"),
                                               Entry("01.2.3.j2c", b"{}")]),
        ArchiveSpec("images", "images-2.tar", [member(8, ".j2c", j2k.payload)], Damage("truncate", cut_fraction=0.5)),
    ]
    return Delivery(insts, text + images)


# ---------------------------------------------------------------- what the delivery's intents require of a run


def expectation_problems(delivery: Delivery, layout: dict[str, tuple[ArchiveSpec, list[Placed]]], manifest: list[dict],
                         ledger: list[dict], decode: Any) -> dict[str, list[str]]:
    """What breaks the delivery's intents, by kind.

    - lost: an intact member is not in the manifest at its offsets (a member silently swallowed);
    - silent: a damaged member is missing while its archive's row says nothing is wrong;
    - false_alarm: an archive without damage has an error row;
    - status: an instance whose members are all intact has other statuses than its intents require;
    - pixels / text: a valid instance decodes to other pixels, or PatientName does not read back.
    ``decode(path)`` returns (dataset, array).
    """
    found: dict[str, list[str]] = {k: [] for k in ("lost", "silent", "false_alarm", "status", "pixels", "text")}
    rows_by_archive: dict[str, list[dict]] = {}
    archive_row = {}
    for r in manifest:
        if r["kind"] == "archive":
            archive_row[r["archive_uri"]] = r
        else:
            rows_by_archive.setdefault(r["archive_uri"], []).append(r)
    broken_names: set[str] = set()
    for path, (spec, placed) in layout.items():
        error = (archive_row.get(path) or {}).get("error")
        rows = rows_by_archive.get(path, [])
        for p in placed:
            base = p.entry.name.rsplit("/", 1)[-1]
            if p.fate != "intact":
                broken_names.add(base)
            hit = [r for r in rows if r["member_name"] == p.entry.name and r["header_offset"] == p.header_offset]
            if p.fate == "intact" and not any(r["data_offset"] == p.data_offset and (
                    not p.entry.regular or r["size"] == len(p.entry.data)) for r in hit):
                broken_names.add(base)  # its instance's statuses follow from the loss: not a finding of their own
                got = [(r["header_offset"], r["data_offset"], r["size"]) for r in hit]
                found["lost"].append(f"{path}: {p.entry!r} at {p.header_offset}/{p.data_offset} is not listed as such "
                                     f"(rows {got}; archive error {error})")
            elif p.fate == "damaged" and not hit and error is None:
                found["silent"].append(f"{path}: {p.entry!r} after {spec.damage!r} is missing and the archive row has no error")
        if spec.damage is None and error is not None and (spec.entries or spec.end_blocks):
            found["false_alarm"].append(f"{path}: no damage, but {error}: {archive_row[path]['error_detail']}")
    by_uid: dict[str, list[dict]] = {}
    for r in ledger:
        by_uid.setdefault(r["sop_instance_uid"], []).append(r)
    for inst in delivery.instances:
        names = {f"{inst.uid}.json", f"{inst.uid}{inst.pixel_ext}"}
        if inst.expected is None or names & broken_names:
            continue
        rows = by_uid.get(inst.uid, [])
        statuses = frozenset(r["status"] for r in rows)
        if statuses != inst.expected:
            found["status"].append(f"{inst!r}: got {sorted((r['status'], r['reason']) for r in rows)}")
            continue
        if "written" not in statuses:
            continue
        for r in rows:
            if r["status"] != "written" or not r["output_uri"] or not os.path.isfile(r["output_uri"]):
                continue
            try:
                ds, arr = decode(r["output_uri"])
            except Exception:  # written_problems reports it
                continue
            want = inst.pixels[0].expected
            if want is not None and (arr.shape != want.shape or not np.array_equal(arr, want)):
                found["pixels"].append(f"{inst!r}: decoded pixels differ from the source")
            name = inst.headers[0].patient_name
            charset = ds.get("SpecificCharacterSet")
            if name is not None and (str(ds.get("PatientName", "")) != name or (
                    not name.isascii() and charset in (None, "", "ISO_IR 6"))):
                found["text"].append(f"{inst!r}: PatientName {name!r} reads back as {str(ds.get('PatientName'))!r} "
                                     f"under SpecificCharacterSet {charset!r}")
    return found
