"""Deterministic partner-style sample deliveries built from pydicom's bundled test files.

A delivery is ``root/text/*.tar`` (``<SOPInstanceUID>.json`` DICOM JSON headers without group 0002 and Pixel Data),
``root/images/*.tar`` (``<SOPInstanceUID>.j2c`` pixel payloads: J2K codestreams, JP2 files or raw native bytes),
``root/sources/<uid>.dcm`` (the reference Part 10 file each written instance should reassemble to) and
``root/expected.json`` (the intended outcome of every instance, member and archive). ``make demo`` writes it to
``data/``, so ``data/text`` and ``data/images`` are where the partner's brief (and ``dicom-reassembly uid``) expect them.

This module deliberately uses only pydicom, numpy, pylibjpeg-openjpeg and :mod:`tarfile`, never the reassembly code
it is meant to test.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import io
import json
import logging
import os
import random
import shutil
import struct
import sys
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_reassembly.errors import ConfigError

log = logging.getLogger(__name__)

GENERATOR = "dicom_reassembly.sample_data"
FORMAT_VERSION = 1
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
# Fixed tar metadata: identical bytes on every run and every machine.
TAR_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z
TAR_FORMAT = tarfile.PAX_FORMAT
N_TEXT_ARCHIVES = 3
N_IMAGE_ARCHIVES = 3
SUBFOLDER_ARCHIVE = 1  # text-001.tar stores its members under SUBFOLDER/
SUBFOLDER = "batch1"
STATUSES = ("written", "duplicate", "conflict", "orphan_header", "orphan_pixels", "invalid_header", "invalid_pixels",
            "unreadable_archive")


@dataclass(frozen=True)
class Variant:
    """One way of turning a bundled pydicom test file into a sample instance."""

    key: str
    source: str
    payload: str  # expected classification: native | j2k | jp2 | multiframe-j2k
    build: str  # native | j2k | jp2-wrap | jp2-bundled | encode-j2k
    use_mct: bool = False
    note: str = ""


VARIANTS: tuple[Variant, ...] = (
    Variant("ct-native", "CT_small.dcm", "native", "native", note="native CT, 16-bit signed"),
    Variant("mr-native", "MR_small.dcm", "native", "native", note="native MR, 16-bit signed"),
    Variant("mr-j2k-lossless", "MR_small_jp2klossless.dcm", "j2k", "j2k", note="J2K reversible, no lossy flag"),
    Variant("nm-j2k-lossy", "JPEG2000.dcm", "j2k", "j2k", note="J2K irreversible 9-7, LossyImageCompression 01"),
    Variant("ct-j2k-lossy-flag", "693_J2KI.dcm", "j2k", "j2k",
            note="reversible 5-3 codestream but LossyImageCompression 01 -> .91"),
    Variant("us-j2k-colour", "examples_jpeg2k.dcm", "j2k", "j2k", note="colour J2K lossless, YBR_RCT"),
    Variant("sc-jp2-bundled", "GDCMJ2K_TextGBR.dcm", "jp2", "jp2-bundled",
            note="real-world JP2 file format (rreq, ICC colr, uuid boxes) inside Pixel Data"),
    Variant("mr-jp2-wrapped", "MR_small_jp2klossless.dcm", "jp2", "jp2-wrap", note="codestream wrapped in minimal JP2"),
    Variant("rgb-odd-native", "SC_rgb_small_odd.dcm", "native", "native", note="native RGB 3x3, odd length 27"),
    Variant("rgb-2frame-native", "SC_rgb_rle_2frame.dcm", "native", "native", note="RLE decompressed, 2 frames"),
    Variant("rtdose-native", "rtdose.dcm", "native", "native", note="implicit VR source, 32-bit, 15 frames"),
    Variant("seg-1bit-native", "liver_1frame.dcm", "native", "native", note="1-bit packed SEG"),
    Variant("us-palette-native", "examples_palette.dcm", "native", "native",
            note="PALETTE COLOR, LUT data as InlineBinary"),
    Variant("rgb-2frame-j2k", "SC_rgb_rle_2frame.dcm", "multiframe-j2k", "encode-j2k", use_mct=True,
            note="2 frames encoded lossless with MCT -> YBR_RCT"),
    Variant("rgb16-2frame-j2k", "SC_rgb_rle_16bit_2frame.dcm", "multiframe-j2k", "encode-j2k", use_mct=False,
            note="2 frames 16-bit RGB encoded lossless without MCT"),
)
VARIANTS_BY_KEY = {v.key: v for v in VARIANTS}
# Good instances of the damaged delivery: small and quick.
DAMAGED_GOOD_VARIANTS = ("ct-native", "mr-j2k-lossless", "rgb-odd-native", "mr-native")


@dataclass
class Instance:
    """One generated instance: header JSON model, pixel payload and reference dataset."""

    uid: str
    variant: Variant
    header: dict[str, Any]
    pixels: bytes
    transfer_syntax: str
    frames: int
    reference: Dataset
    bulk_data_uri: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Member:
    """A tar member to write: a regular file (``data``), a directory or a symlink."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink
    linkname: str = ""


# ---------------------------------------------------------------- identifiers


def make_uid(key: str) -> str:
    """A deterministic ``2.25.<int>`` UID (PS3.5 9.1 / B.2) derived from ``key``; at most 44 characters."""
    digest = hashlib.sha256(f"dicom-reassembly-sample:{key}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _hash_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"dicom-reassembly-sample-value:{key}".encode()).digest()[:8], "big")


def _study_date(study_key: str) -> str:
    """A valid DA value between 2016 and 2022."""
    return (dt.date(2016, 1, 1) + dt.timedelta(days=_hash_int(study_key) % 2500)).strftime("%Y%m%d")


def _patient_age(key: str) -> str:
    """A valid AS value, 18Y to 89Y."""
    return f"{18 + _hash_int(key) % 72:03d}Y"


# ---------------------------------------------------------------- J2K / JP2 helpers


def _strip_pad(frame: bytes) -> bytes:
    """Drop the single fragment padding byte some writers leave after the J2K EOC marker."""
    if frame.startswith(J2K_SOC_SIZ) and not frame.endswith(b"\xff\xd9") and frame[-3:-1] == b"\xff\xd9":
        return frame[:-1]
    return frame


def _jp2_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level JP2 boxes as (type, start, end)."""
    boxes = []
    pos = 0
    while pos + 8 <= len(data):
        length, box_type = struct.unpack(">I4s", data[pos:pos + 8])
        if length == 1:
            length = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif length == 0:
            length = len(data) - pos
        if length < 8 or pos + length > len(data):
            break
        boxes.append((box_type, pos, pos + length))
        pos += length
    return boxes


def _trim_jp2(data: bytes) -> tuple[bytes, bytes]:
    """A JP2 file trimmed to its boxes (fragment padding removed) and its bare ``jp2c`` codestream."""
    boxes = _jp2_boxes(data)
    end = boxes[-1][2]
    for box_type, start, stop in boxes:
        if box_type == b"jp2c":
            return data[:end], data[start + 8:stop]
    raise ConfigError("sample_source_invalid", "bundled JP2 has no jp2c box")


def _siz(codestream: bytes) -> tuple[int, int, list[int]]:
    """(height, width, Ssiz per component) from the SIZ marker segment."""
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", codestream[8:24])
    csiz = struct.unpack(">H", codestream[40:42])[0]
    ssiz = [codestream[42 + 3 * i] for i in range(csiz)]
    return ysiz - yosiz, xsiz - xosiz, ssiz


def _is_reversible(codestream: bytes) -> bool:
    """True when the main-header COD marker says the reversible 5-3 wavelet."""
    pos = 2
    while pos + 4 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[pos:pos + 4])
        if marker == 0xFF52:  # COD: Scod, SGcod(4), then decomposition levels, xcb, ycb, style, transform
            return codestream[pos + 13] == 1
        if marker == 0xFF90:  # first tile-part: main header ended without COD
            break
        pos += 2 + length
    raise ConfigError("sample_source_invalid", "codestream has no COD marker")


def wrap_jp2(codestream: bytes) -> bytes:
    """A minimal valid JP2 file: signature, ftyp, jp2h (ihdr + enumerated colr) and jp2c."""
    height, width, ssiz = _siz(codestream)
    bpc = ssiz[0] if len(set(ssiz)) == 1 else 0xFF
    ihdr = struct.pack(">I4sIIHBBBB", 22, b"ihdr", height, width, len(ssiz), bpc, 7, 0, 0)
    colour_space = 17 if len(ssiz) == 1 else 16  # greyscale / sRGB
    colr = struct.pack(">I4sBBBI", 15, b"colr", 1, 0, 0, colour_space)
    jp2h = struct.pack(">I4s", 8 + len(ihdr) + len(colr), b"jp2h") + ihdr + colr
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"jp2 ", 0, b"jp2 ")
    jp2c = struct.pack(">I4s", 8 + len(codestream), b"jp2c") + codestream
    return JP2_SIGNATURE + ftyp + jp2h + jp2c


# ---------------------------------------------------------------- instance building


def read_source(name: str) -> Dataset:
    """A bundled pydicom test file; never downloads."""
    try:
        path = get_testdata_file(name, download=False)
    except (ValueError, OSError) as exc:  # pydicom raises for names it only knows how to download
        raise ConfigError("sample_source_missing", f"{name}: {exc}") from exc
    if not path:
        raise ConfigError("sample_source_missing", f"{name} is not bundled with this pydicom")
    return pydicom.dcmread(path)


def _native_length(ds: Dataset) -> int:
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated)
    return (bits * int(ds.get("NumberOfFrames", 1) or 1) + 7) // 8


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _set_encapsulated(ds: Dataset, frames: Sequence[bytes], ts: str) -> None:
    ds.PixelData = encapsulate(list(frames), has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(ts)


def _build_pixels(ds: Dataset, variant: Variant) -> tuple[bytes, str]:
    """Turn ``ds`` into its reference form in place; return (payload, expected transfer syntax)."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    nframes = _frames(ds)
    if variant.build == "native":
        if ts.is_compressed:
            # RLE and friends: pydicom decodes; the UID is replaced by ours afterwards anyway.
            ds.decompress(generate_instance_uid=False)
        elif not ts.is_little_endian:
            raise ConfigError("sample_source_invalid", f"{variant.source}: big endian sources are not used")
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return bytes(ds.PixelData[:_native_length(ds)]), ExplicitVRLittleEndian
    if variant.build == "encode-j2k":
        import openjpeg  # pylibjpeg-openjpeg; only needed for this variant

        arr = ds.pixel_array
        if nframes == 1:
            arr = arr[None, ...]
        photometric = 1 if ds.PhotometricInterpretation == "RGB" else (2 if ds.SamplesPerPixel == 1 else 0)
        frames = [bytes(openjpeg.encode(np.ascontiguousarray(frame), bits_stored=int(ds.BitsStored),
                                        photometric_interpretation=photometric, use_mct=variant.use_mct))
                  for frame in arr]
        if variant.use_mct and int(ds.SamplesPerPixel) == 3:
            ds.PhotometricInterpretation = "YBR_RCT"
        if "PlanarConfiguration" in ds:
            ds.PlanarConfiguration = 0
        _set_encapsulated(ds, frames, J2K_LOSSLESS)
        return b"".join(frames), J2K_LOSSLESS
    raw_frames = [_strip_pad(f) for f in generate_frames(ds.PixelData, number_of_frames=nframes)]
    if variant.build == "jp2-bundled":
        trimmed = [_trim_jp2(f) for f in raw_frames]
        payload = b"".join(t[0] for t in trimmed)
        codestreams = [t[1] for t in trimmed]
    else:
        codestreams = raw_frames
        payload = b"".join(codestreams)
        if variant.build == "jp2-wrap":
            payload = b"".join(wrap_jp2(c) for c in codestreams)
    for c in codestreams:
        if not c.startswith(J2K_SOC_SIZ):
            raise ConfigError("sample_source_invalid", f"{variant.source}: frame is not a J2K codestream")
    lossy_flag = str(ds.get("LossyImageCompression", "")) == "01"
    expected = J2K_LOSSLESS if all(_is_reversible(c) for c in codestreams) and not lossy_flag else J2K_LOSSY
    # The reference holds exactly what DICOM allows: bare codestreams, one fragment per frame.
    _set_encapsulated(ds, codestreams, expected)
    return payload, expected


def header_json(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model of ``ds`` without group 0002 and Pixel Data; other binary stays InlineBinary."""
    body = Dataset()
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag == 0x7FE00010:
            continue
        body.add(elem)
    with warnings.catch_warnings():
        # rtdose.dcm's nested ReferencedSOPInstanceUID has a leading-zero component; it is kept as the partner sent it.
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        return body.to_json_dict(bulk_data_threshold=10**9)


def json_bytes(model: dict[str, Any]) -> bytes:
    """Deterministic JSON member bytes."""
    return json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def build_instance(variant: Variant, copy_index: int, group: int, *, uid_key: str | None = None) -> Instance:
    """One instance of ``variant``; UIDs, dates and ages derive from the keys only."""
    key = uid_key or f"{variant.key}:{copy_index}"
    uid = make_uid(key)
    ds = read_source(variant.source)
    payload, ts = _build_pixels(ds, variant)
    # Group lengths would be stale after our edits and are retired anyway.
    for tag in [e.tag for e in ds if e.tag.element == 0]:
        del ds[tag]
    modality = str(ds.get("Modality", "") or "OT")
    study_key = f"study:{copy_index}:{group}"
    ds.Modality = modality
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = make_uid(study_key)
    ds.SeriesInstanceUID = make_uid(f"series:{copy_index}:{group}:{modality}")
    ds.StudyDate = _study_date(study_key)
    ds.PatientAge = _patient_age(key)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = UID(ds.file_meta.TransferSyntaxUID)
    ds.file_meta = meta
    return Instance(uid=uid, variant=variant, header=header_json(ds), pixels=payload, transfer_syntax=ts,
                    frames=_frames(ds), reference=ds)


def with_bulk_data_uri(inst: Instance, uri: str | None = None, tag: str = "7FE00010") -> dict[str, Any]:
    """A copy of the header whose ``tag`` carries a BulkDataURI (default: the pixel member)."""
    model = copy.deepcopy(inst.header)
    bits = int(inst.reference.get("BitsAllocated", 8))
    vr = "OW" if tag == "7FE00010" and bits > 8 and inst.variant.payload == "native" else "OB"
    model[tag] = {"vr": vr, "BulkDataURI": uri or f"{inst.uid}.j2c"}
    return model


# ---------------------------------------------------------------- writing


def _tar_bytes(members: Sequence[Member]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A deterministic tar; returns its bytes and each member's (data offset, size)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=TAR_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime = TAR_MTIME
            info.uid = info.gid = 1000
            info.uname = info.gname = "partner"
            if m.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif m.kind == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, m.linkname
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        offsets = {i.name: (i.offset_data, i.size) for i in tar.getmembers()}
    return data, offsets


def _shuffled(members: list[Member], seed: str) -> list[Member]:
    out = list(members)
    random.Random(seed).shuffle(out)
    return out


def _write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _write_reference(root: str, inst: Instance) -> str:
    rel = f"sources/{inst.uid}.dcm"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        pydicom.dcmwrite(buf, inst.reference, enforce_file_format=True)
    _write_file(os.path.join(root, rel), buf.getvalue())
    return rel


def _prepare_root(root: str, overwrite: bool) -> None:
    """Refuse to mix a new delivery into foreign files; replace one we generated before."""
    if os.path.isdir(root) and os.listdir(root):
        marker = os.path.join(root, "expected.json")
        ours = False
        if os.path.isfile(marker):
            try:
                with open(marker, encoding="utf-8") as fh:
                    ours = json.load(fh).get("generator") == GENERATOR
            except (OSError, ValueError):
                ours = False
        if not (ours or overwrite):
            raise ConfigError("output_not_empty", f"{root} is not empty and holds no generated delivery (no "
                                                  "expected.json of ours): move its contents away, or pass "
                                                  "--overwrite to replace its text/, images/ and sources/")
        for sub in ("text", "images", "sources"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        if os.path.exists(marker):
            os.remove(marker)
    os.makedirs(root, exist_ok=True)


class _Delivery:
    """Collects archive members and the expected outcome, then writes everything."""

    def __init__(self, root: str, damaged: bool, copies: int) -> None:
        self.root = root
        self.archives: dict[str, list[Member]] = {}
        self.raw_archives: dict[str, bytes] = {}
        self.expected: dict[str, Any] = {"generator": GENERATOR, "format_version": FORMAT_VERSION,
                                         "damaged": damaged, "copies": copies, "instances": {}, "members": [],
                                         "archives": {}}

    def add(self, archive: str, member: Member) -> None:
        self.archives.setdefault(archive, []).append(member)

    def expect_member(self, archive: str, member: str, status: str, reason: str | None = None, *,
                      uid: str | None = None, role: str = "") -> None:
        if status not in STATUSES:
            raise ConfigError("sample_bad_status", status)
        self.expected["members"].append({"archive": archive, "member": member, "uid": uid, "role": role,
                                         "status": status, "reason": reason})

    def expect_instance(self, uid: str, entry: dict[str, Any]) -> None:
        if entry["status"] not in STATUSES:
            raise ConfigError("sample_bad_status", entry["status"])
        self.expected["instances"][uid] = entry

    def instance_entry(self, inst: Instance | None, status: str, *, header: list[str] | None,
                       pixels: list[str] | None, reason: str | None = None, source: str | None = None,
                       payload: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "source": source or (inst.variant.source if inst else None),
            "variant": inst.variant.key if inst else None,
            "case": inst.extra.get("case") if inst else None,
            "status": status, "reason": reason,
            "payload": payload or (inst.variant.payload if inst and pixels else None),
            "header": header, "pixels": pixels,
            "transfer_syntax": inst.transfer_syntax if inst and status == "written" else None,
            "frames": inst.frames if inst else None,
            "bulk_data_uri": bool(inst and inst.bulk_data_uri),
            "reference": None,
        }
        if inst is not None:
            ref = inst.reference
            entry.update({"sop_class_uid": str(ref.SOPClassUID), "modality": str(ref.Modality),
                          "study_date": str(ref.StudyDate), "patient_age": str(ref.PatientAge),
                          "study_instance_uid": str(ref.StudyInstanceUID),
                          "series_instance_uid": str(ref.SeriesInstanceUID),
                          "rows": int(ref.Rows), "columns": int(ref.Columns),
                          "samples_per_pixel": int(ref.get("SamplesPerPixel", 1)),
                          "bits_allocated": int(ref.BitsAllocated),
                          "photometric_interpretation": str(ref.PhotometricInterpretation)})
            if status == "written":
                entry["reference"] = _write_reference(self.root, inst)
        return entry

    def write(self) -> dict[str, Any]:
        for rel in sorted(set(self.archives) | set(self.raw_archives)):
            role = rel.split("/", 1)[0]
            self.expected["archives"].setdefault(rel, {"role": role, "status": "ok", "reason": None})
            if rel in self.raw_archives:
                data = self.raw_archives[rel]
            else:
                data, _ = _tar_bytes(_shuffled(self.archives[rel], f"order:{rel}"))
            _write_file(os.path.join(self.root, rel), data)
        self.expected["members"].sort(key=lambda m: (m["archive"], m["member"]))
        _write_file(os.path.join(self.root, "expected.json"),
                    json.dumps(self.expected, sort_keys=True, indent=1).encode("utf-8") + b"\n")
        return self.expected


def _text_archive(i: int) -> str:
    return f"text/text-{i:03d}.tar"


def _image_archive(i: int) -> str:
    return f"images/images-{i:03d}.tar"


def _member_name(archive_index: int, base: str, role: str) -> str:
    return f"{SUBFOLDER}/{base}" if role == "text" and archive_index == SUBFOLDER_ARCHIVE else base


def _add_good(d: _Delivery, inst: Instance, text_i: int, image_i: int, *,
              header_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add a well-formed instance with header and pixels in differently numbered archives."""
    t_arch, i_arch = _text_archive(text_i), _image_archive(image_i)
    t_name = _member_name(text_i, f"{inst.uid}.json", "text")
    i_name = f"{inst.uid}.j2c"
    d.add(t_arch, Member(t_name, json_bytes(header_model or inst.header)))
    d.add(i_arch, Member(i_name, inst.pixels))
    d.expect_member(t_arch, t_name, "written", uid=inst.uid, role="header")
    d.expect_member(i_arch, i_name, "written", uid=inst.uid, role="pixels")
    entry = d.instance_entry(inst, "written", header=[t_arch, t_name], pixels=[i_arch, i_name])
    d.expect_instance(inst.uid, entry)
    return entry


def _write_clean(d: _Delivery, copies: int) -> None:
    n = 0
    for copy_index in range(copies):
        for v_index, variant in enumerate(VARIANTS):
            inst = build_instance(variant, copy_index, v_index % 2)
            model = None
            if n % 5 == 2:  # a few headers point at their pixel member instead of omitting Pixel Data
                inst.bulk_data_uri = True
                model = with_bulk_data_uri(inst)
            text_i = n % N_TEXT_ARCHIVES
            _add_good(d, inst, text_i, (text_i + 1) % N_IMAGE_ARCHIVES, header_model=model)
            n += 1


def _damaged_case(key: str, variant: str = "mr-native") -> Instance:
    inst = build_instance(VARIANTS_BY_KEY[variant], 0, 0, uid_key=f"damaged:{key}")
    inst.extra["case"] = key
    return inst


def _write_damaged(d: _Delivery, copies: int) -> None:
    """Good instances plus one instance (or archive) per damage category."""
    t0, t1, t2 = (_text_archive(i) for i in range(3))
    i0, i1, i2, i3 = (_image_archive(i) for i in range(4))
    not_tar, empty_tar = _text_archive(3), _image_archive(4)

    good: list[Instance] = []
    n = 0
    for copy_index in range(copies):
        for v_index, key in enumerate(DAMAGED_GOOD_VARIANTS):
            inst = build_instance(VARIANTS_BY_KEY[key], copy_index, v_index % 2)
            good.append(inst)
            if n >= 2:  # the first two go to the truncated archive below
                text_i = n % 3
                _add_good(d, inst, text_i, (text_i + 1) % 3)
            n += 1

    def header_only(inst: Instance, arch: str, model: dict[str, Any] | None = None, data: bytes | None = None,
                    status: str = "written", reason: str | None = None, name: str | None = None) -> list[str]:
        index = int(arch[-7:-4])
        member = _member_name(index, name or f"{inst.uid}.json", "text")
        d.add(arch, Member(member, data if data is not None else json_bytes(model or inst.header)))
        d.expect_member(arch, member, status, reason, uid=inst.uid, role="header")
        return [arch, member]

    def pixels_only(inst: Instance, arch: str, data: bytes | None = None, status: str = "written",
                    reason: str | None = None, name: str | None = None) -> list[str]:
        member = name or f"{inst.uid}.j2c"
        d.add(arch, Member(member, inst.pixels if data is None else data))
        d.expect_member(arch, member, status, reason, uid=inst.uid, role="pixels")
        return [arch, member]

    def record(inst: Instance, status: str, reason: str | None, h: list[str] | None, p: list[str] | None,
               **extra: Any) -> None:
        entry = d.instance_entry(inst, status, header=h, pixels=p, reason=reason)
        entry.update(extra)
        d.expect_instance(inst.uid, entry)

    # Truncated archive: two good pixel members, then one cut in the middle of its data.
    victim = _damaged_case("truncated-victim", "ct-native")
    before = []
    for inst in good[:2]:
        h = header_only(inst, t1)
        before.append(Member(f"{inst.uid}.j2c", inst.pixels))
        d.expect_member(i3, f"{inst.uid}.j2c", "written", uid=inst.uid, role="pixels")
        d.expect_instance(inst.uid, d.instance_entry(inst, "written", header=h, pixels=[i3, f"{inst.uid}.j2c"]))
    members = _shuffled(before, f"order:{i3}") + [Member(f"{victim.uid}.j2c", victim.pixels)]
    data, offsets = _tar_bytes(members)
    start, size = offsets[f"{victim.uid}.j2c"]
    d.raw_archives[i3] = data[:start + size // 2]
    d.expected["archives"][i3] = {"role": "images", "status": "unreadable_archive", "reason": "truncated_archive"}
    d.expect_member(i3, f"{victim.uid}.j2c", "unreadable_archive", "truncated_archive", uid=victim.uid,
                    role="pixels")
    # The cut member's header block survives, so it is indexed; the instance shares its archive's fate.
    h = header_only(victim, t0, status="unreadable_archive", reason="truncated_archive")
    record(victim, "unreadable_archive", "truncated_archive", h, None)

    # Orphans both ways.
    inst = _damaged_case("orphan-header")
    record(inst, "orphan_header", "no_pixels", header_only(inst, t0, status="orphan_header", reason="no_pixels"), None)
    inst = _damaged_case("orphan-pixels", "mr-j2k-lossless")
    record(inst, "orphan_pixels", "no_header", None,
           pixels_only(inst, i0, status="orphan_pixels", reason="no_header"))

    # Identical duplicates: the copy in the higher-numbered archive is the duplicate.
    inst = _damaged_case("duplicate-header")
    h = header_only(inst, t0)
    dup = header_only(inst, t2, status="duplicate", reason="identical_duplicate")
    record(inst, "written", None, h, pixels_only(inst, i1), duplicates=[dup])
    inst = _damaged_case("duplicate-pixels", "mr-j2k-lossless")
    p = pixels_only(inst, i0)
    dup = pixels_only(inst, i2, status="duplicate", reason="identical_duplicate")
    record(inst, "written", None, header_only(inst, t1), p, duplicates=[dup])

    # Conflicting duplicates: same UID, different content.
    inst = _damaged_case("conflict-header")
    other = copy.deepcopy(inst.header)
    other["00101010"] = {"vr": "AS", "Value": ["099Y"]}
    h1 = header_only(inst, t0, status="conflict", reason="conflicting_headers")
    h2 = header_only(inst, t2, model=other, status="conflict", reason="conflicting_headers")
    record(inst, "conflict", "conflicting_headers", h1, pixels_only(inst, i1, status="conflict",
                                                                   reason="conflicting_headers"),
           conflicts=[h1, h2])
    inst = _damaged_case("conflict-pixels")
    changed = bytes(b ^ 0x01 for b in inst.pixels[:64]) + inst.pixels[64:]
    p1 = pixels_only(inst, i0, status="conflict", reason="conflicting_pixels")
    p2 = pixels_only(inst, i1, data=changed, status="conflict", reason="conflicting_pixels")
    record(inst, "conflict", "conflicting_pixels",
           header_only(inst, t2, status="conflict", reason="conflicting_pixels"), p1, conflicts=[p1, p2])

    # Invalid headers (each with good pixels, so the header is the only fault).
    def bad_header(case: str, reason: str, arch_h: str, arch_p: str, *, model: dict[str, Any] | None = None,
                   data: bytes | None = None, variant: str = "mr-native") -> Instance:
        inst = _damaged_case(case, variant)
        h = header_only(inst, arch_h, model=model, data=data, status="invalid_header", reason=reason)
        p = pixels_only(inst, arch_p, status="invalid_header", reason=reason)
        record(inst, "invalid_header", reason, h, p)
        return inst

    base = _damaged_case("malformed-json")
    bad_header("malformed-json", "malformed_json", t1, i2, data=json_bytes(base.header)[:200])
    base = _damaged_case("uid-mismatch")
    mismatched = copy.deepcopy(base.header)
    mismatched["00080018"] = {"vr": "UI", "Value": [make_uid("damaged:uid-mismatch:header")]}
    bad_header("uid-mismatch", "uid_mismatch", t2, i0, model=mismatched)
    base = _damaged_case("missing-sop-class")
    no_class = {k: v for k, v in base.header.items() if k != "00080016"}
    bad_header("missing-sop-class", "missing_sop_class_uid", t0, i1, model=no_class)
    base = _damaged_case("bulkdata-external")
    bad_header("bulkdata-external", "unresolved_bulkdata", t1, i0,
               model=with_bulk_data_uri(base, "http://elsewhere/x"))
    base = _damaged_case("bulkdata-other-tag", "rgb-odd-native")
    bad_header("bulkdata-other-tag", "unresolved_bulkdata", t2, i1, variant="rgb-odd-native",
               model=with_bulk_data_uri(base, "icc-profile.bin", tag="00282000"))

    # Invalid UID syntax (leading-zero component) in the member name and the header alike.
    inst = _damaged_case("invalid-uid")
    bad_uid = "1.2.03.4"
    model = copy.deepcopy(inst.header)
    model["00080018"] = {"vr": "UI", "Value": [bad_uid]}
    h = header_only(inst, t0, model=model, status="invalid_header", reason="invalid_uid", name=f"{bad_uid}.json")
    # No UID joins a member whose UID is invalid: each half is judged on its own.
    p = pixels_only(inst, i2, status="invalid_pixels", reason="invalid_uid", name=f"{bad_uid}.j2c")
    for m in d.expected["members"][-2:]:
        m["uid"] = bad_uid
    entry = d.instance_entry(inst, "invalid_header", header=h, pixels=p, reason="invalid_uid")
    d.expect_instance(bad_uid, entry)

    # Invalid pixels (each with a good header).
    def bad_pixels(case: str, reason: str, arch_h: str, arch_p: str, data: bytes, payload: str) -> None:
        inst = _damaged_case(case)
        h = header_only(inst, arch_h, status="invalid_pixels", reason=reason)
        p = pixels_only(inst, arch_p, data=data, status="invalid_pixels", reason=reason)
        entry = d.instance_entry(inst, "invalid_pixels", header=h, pixels=p, reason=reason, payload=payload)
        d.expect_instance(inst.uid, entry)

    mr = _damaged_case("short-native")
    bad_pixels("empty-pixels", "empty_pixels", t1, i2, b"", "empty")
    bad_pixels("short-native", "native_length_mismatch", t2, i0, mr.pixels[:-100], "native-short")
    garbage = b"GARBAGE!" + hashlib.sha256(b"garbage").digest() * 24  # 776 bytes: not J2K, JP2 or 8192 native
    bad_pixels("garbage", "unrecognised_payload", t0, i1, garbage, "garbage")

    # Non-regular members inside otherwise good archives.
    link_target = good[2]
    # Directory names without the trailing slash, as tar readers report them.
    for arch, member in ((t2, Member("batch2", kind="dir")),
                         (t2, Member(f"{make_uid('damaged:symlink-header')}.json", kind="symlink",
                                     linkname=f"{link_target.uid}.json")),
                         (i1, Member("scans", kind="dir")),
                         (i1, Member(f"{make_uid('damaged:symlink-pixels')}.j2c", kind="symlink",
                                     linkname=f"{link_target.uid}.j2c"))):
        d.add(arch, member)
        role = "header" if arch.startswith("text/") else "pixels"
        uid = None if member.kind == "dir" else member.name.rsplit(".", 1)[0]
        d.expect_member(arch, member.name, "invalid_header" if role == "header" else "invalid_pixels",
                        "non_regular_member", uid=uid, role="other")

    # Whole archives that cannot be read.
    d.raw_archives[not_tar] = b"This is not a tar archive: the partner's upload tool wrote a log file here.\n" * 40
    d.expected["archives"][not_tar] = {"role": "text", "status": "unreadable_archive", "reason": "not_a_tar"}
    d.raw_archives[empty_tar] = b""
    d.expected["archives"][empty_tar] = {"role": "images", "status": "unreadable_archive", "reason": "empty_archive"}


def write_sample_delivery(root: str, damaged: bool = False, copies: int = 2, *, overwrite: bool = False) -> dict:
    """Write a clean (or damaged) sample delivery under ``root``; return the expected outcomes (expected.json).

    ``root`` must be empty, absent, or hold a delivery this function wrote before (it is replaced); ``overwrite``
    replaces ``text/``, ``images/``, ``sources/`` and ``expected.json`` in any directory.
    """
    if not isinstance(copies, int) or copies < 1:
        raise ConfigError("invalid_copies", f"copies must be a positive integer, got {copies!r}")
    _prepare_root(root, overwrite)
    delivery = _Delivery(root, damaged, copies)
    if damaged:
        _write_damaged(delivery, copies)
    else:
        _write_clean(delivery, copies)
    expected = delivery.write()
    log.info("wrote %s sample delivery to %s: %d instances, %d archives", "damaged" if damaged else "clean", root,
             len(expected["instances"]), len(expected["archives"]))
    return expected


def pick_uids(expected: dict[str, Any], count: int) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``count`` written instances to try by hand, one per modality first, in the generator's variant order."""
    order = {v.key: i for i, v in enumerate(VARIANTS)}
    written = sorted(((uid, e) for uid, e in expected.get("instances", {}).items() if e.get("status") == "written"),
                     key=lambda item: (order.get(item[1].get("variant"), len(order)), item[0]))
    picked: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for uid, entry in written:  # one per modality first, then whatever is left
        if entry.get("modality") not in seen:
            seen.add(entry.get("modality"))
            picked.append((uid, entry))
    picked += [item for item in written if item not in picked]
    return picked[:count]


def read_expected(root: str) -> dict[str, Any]:
    """``root/expected.json`` of a delivery this module wrote."""
    path = os.path.join(root, "expected.json")
    try:
        with open(path, encoding="utf-8") as fh:
            expected = json.load(fh)
    except FileNotFoundError:
        raise ConfigError("no_sample_delivery", f"{path} does not exist: write the delivery first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError("no_sample_delivery", f"{path} is unreadable: {exc}") from None
    if not isinstance(expected, dict) or expected.get("generator") != GENERATOR:
        raise ConfigError("no_sample_delivery", f"{path} was not written by {GENERATOR}")
    return expected


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dicom_reassembly.sample_data OUT [--damaged] [--copies N] [--overwrite] | OUT --pick N``."""
    parser = argparse.ArgumentParser(prog="python -m dicom_reassembly.sample_data",
                                     description="Write a deterministic partner-style sample delivery: OUT/text/*.tar "
                                                 "(headers), OUT/images/*.tar (pixels), OUT/sources, OUT/expected.json.")
    parser.add_argument("out", help="output directory (empty, absent, or a previous sample delivery)")
    parser.add_argument("--damaged", action="store_true", help="write the damaged delivery")
    parser.add_argument("--copies", type=int, default=2, help="copies of each source (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace text/ images/ sources/ in any directory")
    parser.add_argument("--pick", type=int, metavar="N",
                        help="write nothing: print N written UIDs of the delivery in OUT to try by hand")
    args = parser.parse_args(argv)
    try:
        if args.pick is not None:
            for uid, entry in pick_uids(read_expected(args.out), args.pick):
                print(f"  {uid}  {entry.get('modality')}, {entry.get('payload')} pixels ({entry.get('source')})")
            return 0
        expected = write_sample_delivery(args.out, damaged=args.damaged, copies=args.copies, overwrite=args.overwrite)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    statuses: dict[str, int] = {}
    for entry in expected["instances"].values():
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    print(f"wrote {len(expected['instances'])} instances in {len(expected['archives'])} archives to {args.out}: "
          + ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "VARIANTS",
    "Variant",
    "build_instance",
    "header_json",
    "json_bytes",
    "main",
    "make_uid",
    "pick_uids",
    "read_expected",
    "wrap_jp2",
    "write_sample_delivery",
]
