"""Sample instances: pydicom's bundled test files turned into header JSON models and pixel payloads.

Each ``Variant`` names a source file and how its pixels are delivered (native bytes, a J2K codestream, a
JP2 file); ``build_instance`` derives UIDs, dates and ages from keys only, so every run is identical.
Uses only pydicom, numpy and pylibjpeg-openjpeg, never the reassembly code it is meant to test.
"""


from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import struct
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

from ..errors import ConfigError

log = logging.getLogger(__name__)

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class Variant:
    """One way of turning a bundled pydicom test file into a sample instance."""

    key: str
    source: str
    payload: str  # expected classification: native | j2k | jp2 | multiframe-j2k
    build: str  # native | j2k | jp2-wrap | jp2-bundled | encode-j2k
    use_mct: bool = False
    note: str = ""


# key | pydicom test file | payload | how it is built | MCT (encode-j2k) | note
_VARIANT_TABLE = """
ct-native         | CT_small.dcm                | native         | native      | -   | native CT, 16-bit signed
mr-native         | MR_small.dcm                | native         | native      | -   | native MR, 16-bit signed
mr-j2k-lossless   | MR_small_jp2klossless.dcm   | j2k            | j2k         | -   | J2K reversible, no lossy flag
nm-j2k-lossy      | JPEG2000.dcm                | j2k            | j2k         | -   | J2K irreversible 9-7, LossyImageCompression 01
ct-j2k-lossy-flag | 693_J2KI.dcm                | j2k            | j2k         | -   | reversible 5-3 codestream but LossyImageCompression 01 -> .91
us-j2k-colour     | examples_jpeg2k.dcm         | j2k            | j2k         | -   | colour J2K lossless, YBR_RCT
sc-jp2-bundled    | GDCMJ2K_TextGBR.dcm         | jp2            | jp2-bundled | -   | real-world JP2 file format (rreq, ICC colr, uuid boxes) inside Pixel Data
mr-jp2-wrapped    | MR_small_jp2klossless.dcm   | jp2            | jp2-wrap    | -   | codestream wrapped in minimal JP2
rgb-odd-native    | SC_rgb_small_odd.dcm        | native         | native      | -   | native RGB 3x3, odd length 27
rgb-2frame-native | SC_rgb_rle_2frame.dcm       | native         | native      | -   | RLE decompressed, 2 frames
rtdose-native     | rtdose.dcm                  | native         | native      | -   | implicit VR source, 32-bit, 15 frames
seg-1bit-native   | liver_1frame.dcm            | native         | native      | -   | 1-bit packed SEG
us-palette-native | examples_palette.dcm        | native         | native      | -   | PALETTE COLOR, LUT data as InlineBinary
rgb-2frame-j2k    | SC_rgb_rle_2frame.dcm       | multiframe-j2k | encode-j2k  | mct | 2 frames encoded lossless with MCT -> YBR_RCT
rgb16-2frame-j2k  | SC_rgb_rle_16bit_2frame.dcm | multiframe-j2k | encode-j2k  | -   | 2 frames 16-bit RGB encoded lossless without MCT
"""


def _variants(table: str) -> tuple[Variant, ...]:
    rows = ([cell.strip() for cell in line.split(" | ")] for line in table.strip().splitlines())
    return tuple(Variant(key, source, payload, build, mct == "mct", note) for key, source, payload, build, mct, note in rows)


VARIANTS: tuple[Variant, ...] = _variants(_VARIANT_TABLE)
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


