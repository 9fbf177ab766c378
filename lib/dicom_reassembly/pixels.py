"""The pixel half: classify a payload by its content and encode it as Pixel Data.

A payload is a bare JPEG 2000 codestream (one per frame, possibly concatenated),
a JP2 file (whose boxes DICOM forbids, so only the ``jp2c`` codestream is kept),
an HTJ2K codestream (CAP marker), or native bytes. The encoded element is
returned as a list of buffers that reference the payload, so pixel bytes are
never copied in Python.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import PixelError

JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_BOT_OFFSET = 0xFFFFFFFF

# Markers that stand alone, without a length field (T.800 Table A.2).
_NO_LENGTH = {0xFF4F, 0xFF93, 0xFFD9} | set(range(0xFF30, 0xFF40))


@dataclass
class Codestream:
    """Where one J2K codestream sits in the payload, and what its header says."""

    start: int
    end: int
    reversible: bool
    htj2k: bool


@dataclass
class PixelPayload:
    """A classified payload: ``kind`` is j2k, jp2, htj2k or native."""

    kind: str
    frames: list[Codestream] = field(default_factory=list)

    @property
    def encapsulated(self) -> bool:
        return self.kind != "native"

    @property
    def reversible(self) -> bool:
        return bool(self.frames) and all(f.reversible for f in self.frames)


def _u16(buf: Any, pos: int) -> int:
    return int(buf[pos]) << 8 | int(buf[pos + 1])


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
        if marker == 0xFF52 and seg_len >= 12:  # COD: SPcod transform byte, 1 = 5-3 reversible
            reversible = buf[pos + 13] == 1
        elif marker == 0xFF50 and seg_len >= 6:  # CAP: Pcap bit for Part 15 (HT) set
            pcap = struct.unpack(">I", bytes(buf[pos + 4: pos + 8]))[0]
            htj2k = bool(pcap & (1 << (32 - 15)))
        pos += 2 + seg_len
    # Tile-parts: each SOT carries Psot, the tile-part's length from SOT on.
    while pos + 2 <= limit:
        marker = _u16(buf, pos)
        if marker == 0xFFD9:  # EOC
            return Codestream(start, pos + 2, reversible, htj2k)
        if marker != 0xFF90 or pos + 12 > limit:
            return None
        psot = struct.unpack(">I", bytes(buf[pos + 6: pos + 10]))[0]
        if psot == 0:  # last tile-part runs to EOC
            # The first EOC, not the last: another codestream may follow. Entropy-coded data
            # never holds a marker above FF8F (T.800 A.1.3), so it cannot fake an EOC.
            eoc = bytes(buf[pos:limit]).find(b"\xff\xd9")
            if eoc < 0:
                return None
            return Codestream(start, pos + eoc + 2, reversible, htj2k)
        if psot < 14 or pos + psot > limit:
            return None
        pos += psot
    return None


def split_codestreams(buf: Any, start: int = 0, limit: int | None = None) -> list[Codestream] | None:
    """Split back-to-back codestreams; None unless the whole range is codestreams."""
    limit = len(buf) if limit is None else limit
    frames = []
    pos = start
    while pos < limit:
        cs = parse_codestream(buf, pos, limit)
        if cs is None:
            # Some encoders pad the payload to an even length.
            if frames and limit - pos == 1 and buf[pos] == 0:
                break
            return None
        frames.append(cs)
        pos = cs.end
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


def native_length(rows: int, columns: int, samples: int, bits_allocated: int, frames: int) -> int:
    """Bytes of native Pixel Data before padding; 1-bit data is packed and rounded up."""
    pixels = rows * columns * samples * frames
    if bits_allocated == 1:
        return (pixels + 7) // 8
    return pixels * (bits_allocated // 8)


def classify(payload: Any, expected_native: int | None = None) -> PixelPayload:
    """Classify a payload by content; raise PixelError when it is unusable."""
    n = len(payload)
    if n == 0:
        raise PixelError("empty_pixels", "pixel member is empty")
    head = bytes(payload[:12])
    if head.startswith(SOC_SIZ):
        # Parsed even when the length happens to equal the native one: a codestream is never raw pixels.
        frames = split_codestreams(payload)
        if frames:
            return PixelPayload("htj2k" if any(f.htj2k for f in frames) else "j2k", frames)
    if head == JP2_SIGNATURE:
        frames = _jp2_codestreams(payload)
        if frames:
            kind = "htj2k" if any(f.htj2k for f in frames) else "jp2"
            return PixelPayload(kind, frames)
        raise PixelError("unrecognised_payload", "JP2 signature but no readable jp2c codestream")
    if expected_native is None:
        raise PixelError("unrecognised_payload", "not JPEG 2000 and the header lacks the native geometry")
    if n == expected_native or (expected_native % 2 == 1 and n == expected_native + 1):
        return PixelPayload("native")
    if head.startswith(SOC_SIZ):
        raise PixelError("unrecognised_payload", "J2K start marker but the codestream is damaged")
    raise PixelError("native_length_mismatch",
                     f"{n} bytes, not JPEG 2000, and native needs {expected_native} (Rows x Columns x Samples x Bits x Frames)")


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


def native_element(payload: Any, expected: int, bits_allocated: int) -> list[Any]:
    """Pixel Data element bytes for native data: OW above 8 bits, OB otherwise; padded to even."""
    vr = b"OW" if bits_allocated > 8 else b"OB"
    view = memoryview(payload)[:expected]
    padded = expected + (expected & 1)
    parts: list[Any] = [_tag_header(0x7FE0, 0x0010, vr, padded), view]
    if expected & 1:
        parts.append(b"\x00")
    return parts
