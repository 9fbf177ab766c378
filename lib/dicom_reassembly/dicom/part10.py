"""Assemble a conformant Part 10 object from a header and a pixel payload.

The header is encoded by :mod:`fast_encoder` when it can reproduce pydicom's
bytes exactly, otherwise by pydicom (it knows every VR and character set),
which stays the reference. The Pixel Data element is framed here around views
of the payload, so the pixel bytes are written straight from the archive
buffer without a Python copy.

Each JPEG 2000 codestream's SIZ is checked against the header: its size,
component count and the number of codestreams must equal Columns, Rows,
SamplesPerPixel and NumberOfFrames, and its precision must fit BitsAllocated,
or the instance is ``invalid_pixels``. A precision other than BitsStored, or a
signedness other than PixelRepresentation, is common in real files and decoders
follow the codestream: the object is written with a note (``Part10.notes``),
as it is for native data longer than its geometry needs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import default_encoding
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.uid import UID

from ..errors import HeaderError, PixelError
from . import fast_encoder, pixels
from .dicom_json import build_dataset, key_tags, parse_header, warned
from .header_rules import MAX_HEADER_BYTES
from .uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

PIXEL_DATA = 0x7FE00010


@dataclass
class Part10:
    """A written-to-be object: its buffers, total size, SHA-256 and transfer syntax.

    ``notes`` are one-line remarks on what was accepted as the source had it
    (they go to the ledger row's reason).
    """

    sop_instance_uid: str
    parts: list[Any]
    size: int
    sha256: str
    transfer_syntax: str
    frames: int
    notes: list[str] = field(default_factory=list)

    def tobytes(self) -> bytes:
        """The whole object as one bytes value (tests and small objects only)."""
        return b"".join(bytes(p) if isinstance(p, memoryview) else p for p in self.parts)


def _geometry(tags: dict[str, Any]) -> tuple[int | None, int]:
    """(length native data needs or None, bits allocated) from the header's key tags."""
    rows, cols = tags.get("rows"), tags.get("columns")
    bits = tags.get("bits_allocated")
    if not rows or not cols or not bits:
        return None, bits or 0
    samples = tags.get("samples_per_pixel") or 1
    frames = tags.get("number_of_frames") or 1
    return pixels.native_length(rows, cols, samples, bits, frames, tags.get("photometric_interpretation")), bits


def _check_subsampling(length: int, expected: int, tags: dict[str, Any]) -> None:
    """Refuse subsampled native data (YBR_*_422/420) whose written length is the full 3-sample size.

    Such a value is ambiguous: readers (pydicom among them) take it for unsubsampled data under a wrong
    Photometric Interpretation and refuse to decode it, so writing it "unchanged" would garble it.
    """
    if length == expected:
        return
    rows, cols, bits = tags["rows"], tags["columns"], tags["bits_allocated"]
    full = pixels.native_length(rows, cols, tags.get("samples_per_pixel") or 1, bits, tags.get("number_of_frames") or 1)
    if full != expected and length + (length & 1) == full:
        raise PixelError("ambiguous_subsampling",
                         f"{length} bytes is the size of unsubsampled data ({full}), not of "
                         f"{tags.get('photometric_interpretation')} ({expected}): the Photometric Interpretation "
                         "or the payload is wrong")


def _codestream_notes(frames: list[pixels.Codestream], tags: dict[str, Any]) -> list[str]:
    """Check each codestream's SIZ against the header; return notes, raise PixelError on a mismatch.

    Precision and signedness that differ from BitsStored and PixelRepresentation are
    notes, not errors: real files carry them and decoders follow the codestream.
    """
    rows, cols, bits = tags.get("rows"), tags.get("columns"), tags.get("bits_allocated")
    if not rows or not cols or not bits:
        raise HeaderError("missing_geometry", "JPEG 2000 pixels need Rows, Columns and BitsAllocated to be checked")
    samples = tags.get("samples_per_pixel") or 1
    declared = tags.get("number_of_frames") or 1
    if len(frames) != declared:
        raise PixelError("frame_count_mismatch", f"{len(frames)} codestreams but NumberOfFrames is {declared}")
    stored, representation = tags.get("bits_stored"), tags.get("pixel_representation")
    notes: dict[str, None] = {}  # ordered and without repeats: one note per kind, not per frame
    for i, f in enumerate(frames, 1):
        where = f"codestream {i} of {len(frames)}" if len(frames) > 1 else "codestream"
        if (f.width, f.height) != (cols, rows):
            raise PixelError("geometry_mismatch",
                             f"{where} is {f.width}x{f.height} but the header says Columns {cols} x Rows {rows}")
        if f.components != samples:
            raise PixelError("geometry_mismatch",
                             f"{where} has {f.components} components but SamplesPerPixel is {samples}")
        if max(f.precision) > bits:
            raise PixelError("precision_exceeds_bits_allocated",
                             f"{where} has {max(f.precision)}-bit samples but BitsAllocated is {bits}")
        if stored and set(f.precision) != {stored}:
            precision = "/".join(map(str, sorted(set(f.precision))))
            notes[f"j2k_precision_differs: codestream precision {precision} but BitsStored {stored}, written as is"] = None
        if representation in (0, 1) and set(f.signed) != {bool(representation)}:
            kind = "signed" if all(f.signed) else "unsigned" if not any(f.signed) else "mixed signed and unsigned"
            notes[f"j2k_signedness_differs: codestream samples {kind} but PixelRepresentation {representation}, "
                  "written as is"] = None
    return list(notes)


def build_file_meta(meta: FileMetaDataset, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    """File meta: the source's group 0002 extras, then the elements this writer owns."""
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def encode_dataset(ds: Dataset, meta: FileMetaDataset) -> tuple[bytes, bytes]:
    """Encode (preamble + meta + elements before Pixel Data, elements after it)."""
    trailing = Dataset()
    for tag in [t for t in ds.keys() if t > PIXEL_DATA]:  # noqa: SIM118 - iterating a Dataset yields elements
        trailing[tag] = ds[tag]
        del ds[tag]
    ds.file_meta = meta
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    head = buf.getvalue()
    tail = b""
    if len(trailing):
        tbuf = DicomBytesIO()
        # Same encoding as the main body: explicit VR little endian for every TS we write,
        # and the body's character set, which the split-off elements no longer carry.
        tbuf.is_little_endian = True
        tbuf.is_implicit_VR = False
        write_dataset(tbuf, trailing, parent_encoding=ds.get("SpecificCharacterSet", default_encoding))
        tail = tbuf.getvalue()
    return head, tail


def encode_header_pydicom(ds: Dataset, meta: FileMetaDataset, sop_class_uid: str, uid: str, transfer_syntax: str,
                          extended: dict[str, bytes] | None = None) -> tuple[bytes, bytes]:
    """The pydicom path (and the fast encoder's reference): (head, tail) of a dataset from build_dataset."""
    if extended:
        ds.ExtendedOffsetTable = extended["offsets"]
        ds.ExtendedOffsetTableLengths = extended["lengths"]
    meta = build_file_meta(meta, sop_class_uid, uid, transfer_syntax)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encoded = encode_dataset(ds, meta)
        except Exception as exc:  # pydicom's encoder rejects values it cannot write
            first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise HeaderError("unencodable_header", f"{type(exc).__name__}: {first_line}{warned(caught)}") from exc
    # pydicom writes '?' for characters its encodings lack, and only warns: that is an error here.
    replaced = [w for w in caught if "replacement characters" in str(w.message)]
    if replaced:
        raise HeaderError("unencodable_text", f"text the character set cannot hold{warned(replaced)}")
    for w in caught:
        log.debug("header %s: %s", uid, w.message)
    return encoded


def assemble(header: bytes | str | dict[str, Any], payload: Any, uid: str, pixel_member: str | None = None,
             max_bot_offset: int = pixels.MAX_BOT_OFFSET, fast: bool = True,
             max_header_bytes: int = MAX_HEADER_BYTES) -> Part10:
    """Assemble one instance; raise HeaderError or PixelError when it cannot be made valid.

    ``header`` is the member's JSON (raw or already parsed); ``payload`` the
    pixel member's bytes (any buffer); ``uid`` the UID both members are named for.
    ``fast=False`` forces the pydicom path for the header (the reference).
    """
    parsed = header if isinstance(header, dict) else parse_header(header, max_header_bytes)
    body = fast_encoder.encode_body(parsed, uid, pixel_member) if fast else None
    if body is None:
        ds, meta = build_dataset(parsed, uid, pixel_member)
    tags = key_tags(parsed)
    expected, bits = _geometry(tags)
    payload_kind = pixels.classify(payload, expected)
    ts = pixels.transfer_syntax(payload_kind, tags.get("lossy_image_compression"))
    notes = list(payload_kind.notes)
    if payload_kind.encapsulated:
        notes += _codestream_notes(payload_kind.frames, tags)
        n_frames = len(payload_kind.frames)
        pixel_parts, extended = pixels.encapsulate_frames(payload, payload_kind.frames, max_bot_offset)
    else:
        if expected is None:
            raise HeaderError("missing_geometry", "native pixels need Rows, Columns and BitsAllocated")
        _check_subsampling(payload_kind.length, expected, tags)
        pixel_parts = pixels.native_element(payload, payload_kind.length, bits)
        n_frames = tags.get("number_of_frames") or 1
        extended = None
    if body is not None:
        head, tail = body.part10_header(ts, extended)
    else:
        head, tail = encode_header_pydicom(ds, meta, tags["sop_class_uid"], uid, ts, extended)
    parts = [head, *pixel_parts]
    if tail:
        parts.append(tail)
    h = hashlib.sha256()
    size = 0
    for p in parts:
        h.update(p)
        size += len(p)
    return Part10(uid, parts, size, h.hexdigest(), ts, n_frames, notes)
