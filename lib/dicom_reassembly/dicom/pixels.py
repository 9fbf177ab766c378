"""The pixel half: classify a payload by its content and encode it as Pixel Data.

A payload is a bare JPEG 2000 codestream (one per frame, possibly concatenated),
a JP2 file (whose boxes DICOM forbids, so only the ``jp2c`` codestream is kept),
an HTJ2K codestream (CAP marker), or native bytes. The encoded element is
returned as a list of buffers that reference the payload, so pixel bytes are
never copied in Python.

Payloads are taken as real encoders write them:

- a codestream may be followed by one pad byte (0x00 or 0xFF) that brings it,
  or the payload so far, to even length, as DICOM fragments carry it; the
  fragment written is the codestream padded with 0x00;
- every codestream's SIZ (size, components, precision, signedness) is read,
  so the caller can check it against the header;
- native data needs at least the bytes its geometry implies, with the real
  sample counts of the subsampled YBR photometric interpretations; a longer
  payload is written unchanged (padded to even) with a note; only a shorter
  one is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import PixelError

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_BOT_OFFSET = 0xFFFFFFFF

# What ``classify`` says a payload is.
KIND_J2K, KIND_JP2, KIND_HTJ2K, KIND_NATIVE = "j2k", "jp2", "htj2k", "native"
PAYLOAD_KINDS = (KIND_J2K, KIND_JP2, KIND_HTJ2K, KIND_NATIVE)

# Markers that stand alone, without a length field (T.800 Table A.2).
_NO_LENGTH = {0xFF4F, 0xFF93, 0xFFD9} | set(range(0xFF30, 0xFF40))
# Bytes a writer may put after EOC to reach an even length (DICOM pads with 0x00; JPEG fill is 0xFF).
_PAD_BYTES = (0x00, 0xFF)
# Chroma-subsampled photometric interpretations (PS3.3 C.7.6.3.1.2): native data holds fewer samples.
SUBSAMPLED_422 = ("YBR_FULL_422", "YBR_PARTIAL_422")
SUBSAMPLED_420 = ("YBR_PARTIAL_420",)


@dataclass
class Codestream:
    """Where one J2K codestream sits in the payload, and what its SIZ and COD say.

    ``precision`` and ``signed`` hold one entry per component (Csiz).
    """

    start: int
    end: int
    reversible: bool
    htj2k: bool
    width: int = 0
    height: int = 0
    precision: tuple[int, ...] = ()
    signed: tuple[bool, ...] = ()

    @property
    def components(self) -> int:
        return len(self.precision)


@dataclass
class PixelPayload:
    """A classified payload: ``kind`` is j2k, jp2, htj2k or native.

    ``length`` is how many payload bytes native Pixel Data holds (without a pad
    byte); ``notes`` say what was accepted that a reader may want to know.
    """

    kind: str
    frames: list[Codestream] = field(default_factory=list)
    length: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def encapsulated(self) -> bool:
        return self.kind != "native"

    @property
    def reversible(self) -> bool:
        return bool(self.frames) and all(f.reversible for f in self.frames)


def _u16(buf: Any, pos: int) -> int:
    return int(buf[pos]) << 8 | int(buf[pos + 1])


def _parse_siz(buf: Any, pos: int, seg_len: int) -> tuple[int, int, tuple[int, ...], tuple[bool, ...]] | None:
    """(width, height, precision per component, signed per component) of the SIZ segment at ``pos``.

    None when the segment is inconsistent (T.800 A.5.1): its length must fit Csiz,
    the image area must not be empty, and Ssiz gives precisions 1..38.
    """
    if seg_len < 41:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", bytes(buf[pos + 6: pos + 22]))
    csiz = _u16(buf, pos + 38)
    if csiz == 0 or seg_len != 38 + 3 * csiz or xsiz <= xosiz or ysiz <= yosiz:
        return None
    ssiz = [int(buf[pos + 40 + 3 * i]) for i in range(csiz)]
    precision = tuple((s & 0x7F) + 1 for s in ssiz)
    if max(precision) > 38:
        return None
    return xsiz - xosiz, ysiz - yosiz, precision, tuple(bool(s & 0x80) for s in ssiz)


def parse_codestream(buf: Any, start: int, limit: int) -> Codestream | None:
    """Walk one codestream's markers from SOC at ``start``; None when it is not one.

    The end is found from the tile-part lengths (Psot), so concatenated
    codestreams split exactly, without searching for EOC inside entropy data.
    """
    if limit - start < 8 or bytes(buf[start: start + 4]) != SOC_SIZ:
        return None
    pos = start + 2
    reversible = False
    htj2k = False
    siz = None
    # Main header: marker segments until the first SOT.
    while True:
        if pos + 4 > limit:
            return None
        marker = _u16(buf, pos)
        if marker == 0xFF90:  # SOT
            break
        if marker < 0xFF00 or marker in _NO_LENGTH:
            return None
        seg_len = _u16(buf, pos + 2)
        if seg_len < 2 or pos + 2 + seg_len > limit:
            return None
        if marker == 0xFF51:  # SIZ: comes first, right after SOC (checked above)
            siz = _parse_siz(buf, pos, seg_len)
            if siz is None:
                return None
        elif marker == 0xFF52 and seg_len >= 12:  # COD: SPcod transform byte, 1 = 5-3 reversible
            reversible = buf[pos + 13] == 1
        elif marker == 0xFF50 and seg_len >= 6:  # CAP: Pcap bit for Part 15 (HT) set
            pcap = struct.unpack(">I", bytes(buf[pos + 4: pos + 8]))[0]
            htj2k = bool(pcap & (1 << (32 - 15)))
        pos += 2 + seg_len
    end = _tile_parts_end(buf, pos, limit)
    if siz is None or end is None:
        return None
    return Codestream(start, end, reversible, htj2k, *siz)


def _tile_parts_end(buf: Any, pos: int, limit: int) -> int | None:
    """The end of EOC, walking tile-parts from the first SOT at ``pos``; None when they do not reach one."""
    # Each SOT carries Psot, the tile-part's length from SOT on.
    while pos + 2 <= limit:
        marker = _u16(buf, pos)
        if marker == 0xFFD9:  # EOC
            return pos + 2
        if marker != 0xFF90 or pos + 12 > limit:
            return None
        psot = struct.unpack(">I", bytes(buf[pos + 6: pos + 10]))[0]
        if psot == 0:  # last tile-part runs to EOC
            # The first EOC, not the last: another codestream may follow. Entropy-coded data
            # never holds a marker above FF8F (T.800 A.1.3), so it cannot fake an EOC.
            eoc = bytes(buf[pos:limit]).find(b"\xff\xd9")
            return None if eoc < 0 else pos + eoc + 2
        if psot < 14 or pos + psot > limit:
            return None
        pos += psot
    return None


def _starts_codestream(buf: Any, pos: int, limit: int) -> bool:
    return limit - pos >= 4 and bytes(buf[pos: pos + 4]) == SOC_SIZ


def split_codestreams(buf: Any, start: int = 0, limit: int | None = None) -> list[Codestream] | None:
    """Split back-to-back codestreams; None unless the whole range is codestreams.

    After each codestream one pad byte (0x00 or 0xFF) may follow when it makes
    that codestream, or the range so far, even in length, and the range ends or
    another codestream starts right after it: fragments cut from DICOM files
    carry it (``... FF D9 FF``), and some writers pad a concatenated payload.
    """
    limit = len(buf) if limit is None else limit
    frames = []
    pos = start
    while pos < limit:
        cs = parse_codestream(buf, pos, limit)
        if cs is None:
            return None
        frames.append(cs)
        pos = cs.end
        if pos < limit and not _starts_codestream(buf, pos, limit) and buf[pos] in _PAD_BYTES \
                and ((cs.end - cs.start) & 1 or (pos - start) & 1) \
                and (pos + 1 == limit or _starts_codestream(buf, pos + 1, limit)):
            pos += 1
    return frames or None


def _jp2_codestreams(buf: Any) -> list[Codestream] | None:
    """The codestreams of each ``jp2c`` box of a JP2 file."""
    pos = 0
    n = len(buf)
    frames: list[Codestream] = []
    while pos + 8 <= n:
        lbox = struct.unpack(">I", bytes(buf[pos: pos + 4]))[0]
        tbox = bytes(buf[pos + 4: pos + 8])
        header = 8
        if lbox == 1:
            if pos + 16 > n:
                return None
            lbox = struct.unpack(">Q", bytes(buf[pos + 8: pos + 16]))[0]
            header = 16
        elif lbox == 0:
            lbox = n - pos
        if lbox < header or pos + lbox > n:
            return None
        if tbox == b"jp2c":
            found = split_codestreams(buf, pos + header, pos + lbox)
            if not found:
                return None
            frames.extend(found)
        pos += lbox
    return frames or None


def native_samples(rows: int, columns: int, samples: int, photometric: str | None = None) -> int:
    """Samples in one native frame.

    YBR_FULL_422 and YBR_PARTIAL_422 store two Y then one CB and one CR for each
    pair of pixels in a row; YBR_PARTIAL_420 one CB and one CR for each 2x2 block
    (PS3.3 C.7.6.3.1.2). A pair or block cut short by an odd edge still has its
    chroma samples. Other interpretations store SamplesPerPixel per pixel.
    """
    kind = (photometric or "").strip().upper()
    if samples == 3 and kind in SUBSAMPLED_422:
        return rows * (columns + 2 * ((columns + 1) // 2))
    if samples == 3 and kind in SUBSAMPLED_420:
        return rows * columns + 2 * ((rows + 1) // 2) * ((columns + 1) // 2)
    return rows * columns * samples


def native_length(rows: int, columns: int, samples: int, bits_allocated: int, frames: int,
                  photometric: str | None = None) -> int:
    """Bytes native Pixel Data needs, before padding; 1-bit data is packed and rounded up."""
    total = native_samples(rows, columns, samples, photometric) * frames
    if bits_allocated == 1:
        return (total + 7) // 8
    return total * (bits_allocated // 8)


def classify(payload: Any, expected_native: int | None = None) -> PixelPayload:
    """Classify a payload by content; raise PixelError when it is unusable.

    ``expected_native`` is the length native data needs (see ``native_length``).
    """
    n = len(payload)
    if n == 0:
        raise PixelError("empty_pixels", "pixel member is empty")
    head = bytes(payload[:12])
    if head.startswith(SOC_SIZ):
        # Parsed even when the length happens to equal the native one: a codestream is never raw pixels.
        frames = split_codestreams(payload)
        if frames:
            return PixelPayload(KIND_HTJ2K if any(f.htj2k for f in frames) else KIND_J2K, frames)
    if head == JP2_SIGNATURE:
        frames = _jp2_codestreams(payload)
        if frames:
            kind = KIND_HTJ2K if any(f.htj2k for f in frames) else KIND_JP2
            return PixelPayload(kind, frames)
        raise PixelError("unrecognised_payload", "JP2 signature but no readable jp2c codestream")
    if expected_native is None:
        raise PixelError("unrecognised_payload", "not JPEG 2000 and the header lacks the native geometry")
    if n == expected_native or (expected_native % 2 == 1 and n == expected_native + 1):
        return PixelPayload(KIND_NATIVE, length=expected_native)  # the payload's own pad byte is not data
    if head.startswith(SOC_SIZ):
        raise PixelError("unrecognised_payload", "J2K start marker but the codestream is damaged")
    if n < expected_native:
        raise PixelError("native_length_mismatch",
                         f"{n} bytes, not JPEG 2000, and native needs {expected_native} "
                         "(Rows x Columns x Samples x Bits x Frames)")
    # Readers take the bytes they need and ignore the rest (pydicom warns and trims): keep them all.
    note = (f"native_longer_than_needed: {n} bytes, {n - expected_native} more than the {expected_native} "
            f"its geometry needs, written unchanged{' and padded to even length' if n & 1 else ''}")
    return PixelPayload(KIND_NATIVE, length=n, notes=[note])


def transfer_syntax(payload: PixelPayload, lossy_image_compression: str | None) -> str:
    """The transfer syntax for a payload: lossless only for a reversible stream never lossy before."""
    if payload.kind == "native":
        return EXPLICIT_VR_LITTLE_ENDIAN
    lossless = payload.reversible and (lossy_image_compression or "").strip() != "01"
    if payload.kind == "htj2k":
        return HTJ2K_LOSSLESS if lossless else HTJ2K
    return JPEG2000_LOSSLESS if lossless else JPEG2000


def _tag_header(group: int, element: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2sHI", group, element, vr, 0, length)


_ITEM = struct.Struct("<HHI")
_SEQ_DELIM = _ITEM.pack(0xFFFE, 0xE0DD, 0)


def encapsulate_frames(payload: Any, frames: list[Codestream],
                       max_bot_offset: int = MAX_BOT_OFFSET) -> tuple[list[Any], dict[str, bytes] | None]:
    """Pixel Data element bytes for encapsulated frames: one fragment per frame.

    Returns (parts, extended) where ``extended`` holds the Extended Offset Table
    and its lengths (OV, little endian) when frame offsets pass ``max_bot_offset``;
    the Basic Offset Table is then empty, as PS3.5 A.4 requires.
    """
    view = memoryview(payload)
    offsets = []
    lengths = []
    pos = 0
    for f in frames:
        size = f.end - f.start
        offsets.append(pos)
        lengths.append(size)
        pos += 8 + size + (size & 1)
    parts: list[Any] = [_tag_header(0x7FE0, 0x0010, b"OB", 0xFFFFFFFF)]
    extended = None
    if offsets[-1] > max_bot_offset:
        parts.append(_ITEM.pack(0xFFFE, 0xE000, 0))
        extended = {
            "offsets": struct.pack(f"<{len(offsets)}Q", *offsets),
            "lengths": struct.pack(f"<{len(lengths)}Q", *lengths),
        }
    else:
        parts.append(_ITEM.pack(0xFFFE, 0xE000, 4 * len(offsets)) + struct.pack(f"<{len(offsets)}I", *offsets))
    for f, size in zip(frames, lengths, strict=True):
        parts.append(_ITEM.pack(0xFFFE, 0xE000, size + (size & 1)))
        parts.append(view[f.start: f.end])
        if size & 1:
            parts.append(b"\x00")
    parts.append(_SEQ_DELIM)
    return parts, extended


def native_element(payload: Any, length: int, bits_allocated: int) -> list[Any]:
    """Pixel Data element bytes for the first ``length`` payload bytes: OW above 8 bits, OB otherwise.

    An odd length gets one 0x00 pad byte, so the element is even as PS3.5 7.1 requires.
    """
    vr = b"OW" if bits_allocated > 8 else b"OB"
    view = memoryview(payload)[:length]
    padded = length + (length & 1)
    parts: list[Any] = [_tag_header(0x7FE0, 0x0010, vr, padded), view]
    if length & 1:
        parts.append(b"\x00")
    return parts
