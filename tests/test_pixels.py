"""Pixel payloads: classification by content, transfer syntax, encapsulation and native framing.

Codestreams are made by openjpeg here; the markers the tests rely on (SOT/Psot, COD,
CAP) are located by the small independent walkers below, not by the code under test.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from conftest import dcmftest_ok
from openjpeg.utils import encode_array
from pydicom import dcmread

from dicom_reassembly import pixels
from dicom_reassembly.errors import PixelError
from dicom_reassembly.part10 import assemble

UID = "1.2.826.0.1.3680043.10.1234.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
MF_SC_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
ROWS, COLS = 32, 40  # openjpeg uses 6 resolutions: at least 32 pixels a side


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (ROWS, COLS), dtype=np.uint16)


def _j2k(arr: np.ndarray, lossy: bool = False) -> bytes:
    if lossy:
        return encode_array(arr, bits_stored=12, compression_ratios=[8])
    return encode_array(arr, bits_stored=12)


def _main_header_segments(cs: bytes) -> list[tuple[int, int, int]]:
    """(marker, offset, segment length) of each main-header segment, up to the first SOT."""
    out = []
    pos = 2
    while True:
        marker = struct.unpack(">H", cs[pos: pos + 2])[0]
        if marker == 0xFF90:
            out.append((marker, pos, 10))
            return out
        seg_len = struct.unpack(">H", cs[pos + 2: pos + 4])[0]
        out.append((marker, pos, seg_len))
        pos += 2 + seg_len


def _sot_offset(cs: bytes) -> int:
    return _main_header_segments(cs)[-1][1]


def _with_psot_zero(cs: bytes) -> bytes:
    """The same codestream with its (single) tile-part's Psot set to 0: "runs to EOC"."""
    sot = _sot_offset(cs)
    assert struct.unpack(">I", cs[sot + 6: sot + 10])[0] + sot + 2 == len(cs)  # one tile-part, then EOC
    return cs[: sot + 6] + b"\0\0\0\0" + cs[sot + 10:]


def _with_cap(cs: bytes, pcap: int) -> bytes:
    """Insert a CAP segment (Lcap, Pcap, one Ccap) right after SIZ, changing nothing else."""
    marker, siz, seg_len = _main_header_segments(cs)[0]
    assert marker == 0xFF51
    at = siz + 2 + seg_len
    return cs[:at] + b"\xff\x50" + struct.pack(">HIH", 8, pcap, 0) + cs[at:]


def _box(tbox: bytes, body: bytes, xl: bool = False, to_end: bool = False) -> bytes:
    if to_end:
        return struct.pack(">I", 0) + tbox + body
    if xl:
        return struct.pack(">I", 1) + tbox + struct.pack(">Q", 16 + len(body)) + body
    return struct.pack(">I", 8 + len(body)) + tbox + body


def _jp2h_of(arr: np.ndarray) -> bytes:
    """The jp2h box body openjpeg writes for ``arr`` (ihdr + colr)."""
    jp2 = encode_array(arr, bits_stored=12, codec_format=1)
    pos = 0
    while pos < len(jp2):
        lbox = struct.unpack(">I", jp2[pos: pos + 4])[0]
        if jp2[pos + 4: pos + 8] == b"jp2h":
            return jp2[pos + 8: pos + lbox]
        pos += lbox
    raise AssertionError("no jp2h box")


def _jp2(cs: bytes, arr: np.ndarray, xl_jp2c: bool = False) -> bytes:
    """A JP2 file: signature, ftyp, jp2h, an XL-length xml box, then jp2c (XL, or LBox=0 as the last box)."""
    return b"".join([
        _box(b"jP  ", b"\r\n\x87\n"),
        _box(b"ftyp", b"jp2 " + b"\0\0\0\0" + b"jp2 "),
        _box(b"jp2h", _jp2h_of(arr)),
        _box(b"xml ", b"<note>an XL box before the codestream</note>", xl=True),
        _box(b"jp2c", cs, xl=xl_jp2c, to_end=not xl_jp2c),
    ])


def _header(frames: int | None = None, bits: int = 16, rows: int = ROWS, cols: int = COLS,
            samples: int = 1, lossy: str | None = None, sop_class: str = SC_IMAGE) -> str:
    h: dict = {
        "00080016": {"vr": "UI", "Value": [sop_class]},
        "00080018": {"vr": "UI", "Value": [UID]},
        "00080060": {"vr": "CS", "Value": ["OT"]},
        "00280002": {"vr": "US", "Value": [samples]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2" if samples == 1 else "RGB"]},
        "00280010": {"vr": "US", "Value": [rows]},
        "00280011": {"vr": "US", "Value": [cols]},
        "00280100": {"vr": "US", "Value": [bits]},
        "00280101": {"vr": "US", "Value": [12 if bits == 16 else bits]},
        "00280102": {"vr": "US", "Value": [11 if bits == 16 else bits - 1]},
        "00280103": {"vr": "US", "Value": [0]},
    }
    if frames is not None:
        h["00280008"] = {"vr": "IS", "Value": [frames]}
    if lossy is not None:
        h["00282110"] = {"vr": "CS", "Value": [lossy]}
    return json.dumps(h)


def _items(pixel_data: bytes) -> list[bytes]:
    """The item values of encapsulated Pixel Data, Basic Offset Table first."""
    out = []
    pos = 0
    while pos + 8 <= len(pixel_data):
        group, element, length = struct.unpack("<HHI", pixel_data[pos: pos + 8])
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        assert (group, element) == (0xFFFE, 0xE000)
        out.append(pixel_data[pos + 8: pos + 8 + length])
        pos += 8 + length
    return out


def _fragments(pixel_data: bytes) -> list[bytes]:
    """The fragments, without the Basic Offset Table."""
    return _items(pixel_data)[1:]


def _read(obj_bytes: bytes):  # noqa: ANN202 - pydicom FileDataset
    return dcmread(io.BytesIO(obj_bytes))


# ---------------------------------------------------------------- bare codestreams and transfer syntax


def test_bare_lossless_j2k_is_one_reversible_frame() -> None:
    cs = _j2k(_image(1))
    p = pixels.classify(cs, ROWS * COLS * 2)
    assert p.kind == "j2k" and p.encapsulated
    assert [(f.start, f.end, f.reversible, f.htj2k) for f in p.frames] == [(0, len(cs), True, False)]
    assert pixels.transfer_syntax(p, None) == "1.2.840.10008.1.2.4.90"


def test_irreversible_j2k_is_not_lossless() -> None:
    cs = _j2k(_image(1), lossy=True)
    # The COD marker's wavelet byte says 9-7 irreversible (0), independently of our parser.
    _, cod, _ = next(s for s in _main_header_segments(cs) if s[0] == 0xFF52)
    assert cs[cod + 13] == 0
    p = pixels.classify(cs)
    assert [f.reversible for f in p.frames] == [False]
    assert pixels.transfer_syntax(p, None) == "1.2.840.10008.1.2.4.91"
    assert pixels.transfer_syntax(p, "00") == "1.2.840.10008.1.2.4.91"


@pytest.mark.parametrize(("flag", "ts"), [
    (None, "1.2.840.10008.1.2.4.90"),
    ("00", "1.2.840.10008.1.2.4.90"),
    ("", "1.2.840.10008.1.2.4.90"),
    ("01", "1.2.840.10008.1.2.4.91"),
    ("01 ", "1.2.840.10008.1.2.4.91"),  # CS values may arrive space-padded
])
def test_lossy_image_compression_01_makes_a_reversible_stream_lossy(flag: str | None, ts: str) -> None:
    p = pixels.classify(_j2k(_image(2)))
    assert p.reversible
    assert pixels.transfer_syntax(p, flag) == ts


def test_native_is_explicit_vr_little_endian_whatever_the_flag() -> None:
    p = pixels.classify(b"\x01\x02\x03\x04", 4)
    assert p.kind == "native" and not p.encapsulated
    assert pixels.transfer_syntax(p, "01") == "1.2.840.10008.1.2.1"


def test_lossy_flag_written_through_assemble() -> None:
    obj = assemble(_header(lossy="01"), _j2k(_image(3)), UID)
    assert obj.transfer_syntax == "1.2.840.10008.1.2.4.91"
    assert _read(obj.tobytes()).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"


# ---------------------------------------------------------------- concatenated codestreams (multi-frame)


def test_concatenated_codestreams_split_exactly_mixed_lossless_and_lossy() -> None:
    streams = [_j2k(_image(10)), _j2k(_image(11), lossy=True), _j2k(_image(12))]
    payload = b"".join(streams)
    p = pixels.classify(payload, ROWS * COLS * 2 * 3)
    bounds = []
    pos = 0
    for s in streams:
        bounds.append((pos, pos + len(s)))
        pos += len(s)
    assert [(f.start, f.end) for f in p.frames] == bounds
    assert [f.reversible for f in p.frames] == [True, False, True]
    # One irreversible frame makes the whole object lossy.
    assert pixels.transfer_syntax(p, None) == "1.2.840.10008.1.2.4.91"
    lossless_only = pixels.classify(streams[0] + streams[2])
    assert pixels.transfer_syntax(lossless_only, None) == "1.2.840.10008.1.2.4.90"


def test_multiframe_fragments_and_basic_offset_table_decode() -> None:
    images = [_image(20 + i) for i in range(3)]
    streams = [_j2k(a) for a in images]
    obj = assemble(_header(frames=3, sop_class=MF_SC_WORD), b"".join(streams), UID)
    ds = _read(obj.tobytes())
    assert obj.frames == 3
    fragments = list(_fragments(ds.PixelData))
    # One fragment per frame, each the codestream (padded to even length), in order.
    assert [f[: len(s)] for f, s in zip(fragments, streams, strict=True)] == streams
    assert all(len(f) == len(s) + (len(s) & 1) for f, s in zip(fragments, streams, strict=True))
    bot_len = struct.unpack("<I", ds.PixelData[4:8])[0]
    offsets = list(struct.unpack(f"<{bot_len // 4}I", ds.PixelData[8: 8 + bot_len]))
    expected, pos = [], 0
    for s in streams:
        expected.append(pos)
        pos += 8 + len(s) + (len(s) & 1)
    assert offsets == expected
    np.testing.assert_array_equal(ds.pixel_array, np.stack(images))


def test_odd_length_payload_with_one_pad_byte_is_still_codestreams() -> None:
    cs = next(c for c in (_j2k(_image(seed)) for seed in range(30, 60)) if len(c) % 2 == 1)
    frames = pixels.split_codestreams(cs + b"\x00")
    assert frames is not None and [(f.start, f.end) for f in frames] == [(0, len(cs))]
    assert pixels.split_codestreams(cs + b"\x00\x00") is None  # more than one pad byte is not padding
    # The fragment is padded to even length on its own, without counting the payload's pad byte as data.
    ds = _read(assemble(_header(), cs + b"\x00", UID).tobytes())
    (fragment,) = _fragments(ds.PixelData)
    assert fragment == cs + b"\x00"


def test_frame_count_mismatch() -> None:
    payload = _j2k(_image(40)) + _j2k(_image(41))
    with pytest.raises(PixelError) as exc:
        assemble(_header(frames=3), payload, UID)
    assert exc.value.reason == "frame_count_mismatch"
    with pytest.raises(PixelError) as exc:
        assemble(_header(frames=None), payload, UID)  # no NumberOfFrames means one frame
    assert exc.value.reason == "frame_count_mismatch"


# ---------------------------------------------------------------- Psot = 0


def test_psot_zero_last_tile_part_runs_to_eoc() -> None:
    cs = _with_psot_zero(_j2k(_image(50)))
    assert struct.unpack(">I", cs[_sot_offset(cs) + 6: _sot_offset(cs) + 10])[0] == 0
    p = pixels.classify(cs)
    assert [(f.start, f.end) for f in p.frames] == [(0, len(cs))]


def test_concatenated_psot_zero_codestreams_split_at_their_own_eoc() -> None:
    images = [_image(51), _image(52)]
    streams = [_with_psot_zero(_j2k(a)) for a in images]
    p = pixels.classify(b"".join(streams))
    assert [(f.start, f.end) for f in p.frames] == [(0, len(streams[0])), (len(streams[0]), len(streams[0]) + len(streams[1]))]
    ds = _read(assemble(_header(frames=2, sop_class=MF_SC_WORD), b"".join(streams), UID).tobytes())
    np.testing.assert_array_equal(ds.pixel_array, np.stack(images))


# ---------------------------------------------------------------- JP2 file format


@pytest.mark.parametrize("xl_jp2c", [False, True], ids=["jp2c-lbox0", "jp2c-xl"])
def test_jp2_is_stripped_to_its_codestream(xl_jp2c: bool, tmp_path) -> None:  # noqa: ANN001
    arr = _image(60)
    cs = _j2k(arr)
    jp2 = _jp2(cs, arr, xl_jp2c=xl_jp2c)
    p = pixels.classify(jp2, ROWS * COLS * 2)
    assert p.kind == "jp2"
    (frame,) = p.frames
    assert jp2[frame.start: frame.end] == cs
    obj = assemble(_header(), jp2, UID, f"{UID}.j2c")
    assert obj.transfer_syntax == "1.2.840.10008.1.2.4.90"
    data = obj.tobytes()
    # DICOM forbids the JP2 header inside Pixel Data: no box of it may survive.
    for marker in (b"jP  \r\n", b"ftyp", b"jp2h", b"ihdr", b"<note>"):
        assert marker not in data
    ds = _read(data)
    (fragment,) = _fragments(ds.PixelData)
    assert fragment[: len(cs)] == cs
    np.testing.assert_array_equal(ds.pixel_array, arr)
    path = tmp_path / "jp2.dcm"
    path.write_bytes(data)
    assert dcmftest_ok(str(path))


def test_jp2_with_damaged_boxes_is_unrecognised() -> None:
    arr = _image(61)
    jp2 = _jp2(_j2k(arr), arr)
    for broken in (jp2[:60], jp2[:-40] + b"\0" * 40):
        with pytest.raises(PixelError) as exc:
            pixels.classify(broken, ROWS * COLS * 2)
        assert exc.value.reason == "unrecognised_payload"


# ---------------------------------------------------------------- HTJ2K (CAP marker, Part 15 bit)

PART15_BIT = 1 << (32 - 15)


@pytest.mark.parametrize(("lossy", "flag", "ts"), [
    (False, None, "1.2.840.10008.1.2.4.201"),
    (True, None, "1.2.840.10008.1.2.4.203"),
    (False, "01", "1.2.840.10008.1.2.4.203"),
])
def test_cap_marker_with_part15_bit_is_htj2k(lossy: bool, flag: str | None, ts: str) -> None:
    cs = _with_cap(_j2k(_image(70), lossy=lossy), PART15_BIT)
    p = pixels.classify(cs, ROWS * COLS * 2)
    assert p.kind == "htj2k"
    assert [(f.start, f.end) for f in p.frames] == [(0, len(cs))]
    assert pixels.transfer_syntax(p, flag) == ts


def test_cap_marker_without_part15_bit_is_plain_j2k() -> None:
    cs = _with_cap(_j2k(_image(71)), 1 << (32 - 2))  # Part 2 capabilities only
    p = pixels.classify(cs)
    assert p.kind == "j2k"
    assert pixels.transfer_syntax(p, None) == "1.2.840.10008.1.2.4.90"


def test_htj2k_part10_is_accepted_by_dcmftest(tmp_path) -> None:  # noqa: ANN001
    cs = _with_cap(_j2k(_image(72)), PART15_BIT)
    obj = assemble(_header(), cs, UID)
    assert obj.transfer_syntax == "1.2.840.10008.1.2.4.201"
    path = tmp_path / "ht.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.201"
    (fragment,) = _fragments(ds.PixelData)
    assert fragment[: len(cs)] == cs


def test_htj2k_inside_jp2_is_htj2k() -> None:
    arr = _image(73)
    p = pixels.classify(_jp2(_with_cap(_j2k(arr), PART15_BIT), arr))
    assert p.kind == "htj2k"


# ---------------------------------------------------------------- Extended Offset Table


def test_extended_offset_table_when_offsets_pass_the_limit() -> None:
    streams = [_j2k(_image(80)), _j2k(_image(81), lossy=True), _j2k(_image(82))]
    payload = b"".join(streams)
    frames = pixels.classify(payload).frames
    expected, pos = [], 0
    for s in streams:
        expected.append(pos)
        pos += 8 + len(s) + (len(s) & 1)
    # Exactly at the limit the Basic Offset Table still holds every offset; one byte less needs the EOT.
    parts, extended = pixels.encapsulate_frames(payload, frames, max_bot_offset=expected[-1])
    assert extended is None
    parts, extended = pixels.encapsulate_frames(payload, frames, max_bot_offset=expected[-1] - 1)
    assert extended is not None
    assert list(struct.unpack("<3Q", extended["offsets"])) == expected
    assert list(struct.unpack("<3Q", extended["lengths"])) == [len(s) for s in streams]
    element = b"".join(bytes(p) for p in parts)
    assert element[12:20] == b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # empty BOT item


def test_extended_offset_table_through_assemble_decodes() -> None:
    images = [_image(90 + i) for i in range(3)]
    streams = [_j2k(a) for a in images]
    obj = assemble(_header(frames=3, sop_class=MF_SC_WORD), b"".join(streams), UID, max_bot_offset=16)
    ds = _read(obj.tobytes())
    assert ds["ExtendedOffsetTable"].VR == "OV" and ds["ExtendedOffsetTableLengths"].VR == "OV"
    offsets = list(struct.unpack("<3Q", ds.ExtendedOffsetTable))
    lengths = list(struct.unpack("<3Q", ds.ExtendedOffsetTableLengths))
    assert lengths == [len(s) for s in streams]
    assert offsets[0] == 0 and offsets[1] == 8 + len(streams[0]) + (len(streams[0]) & 1)
    assert struct.unpack("<HHI", ds.PixelData[:8]) == (0xFFFE, 0xE000, 0)  # BOT empty, as PS3.5 A.4 requires
    # Each EOT entry lands on the item of its frame, whose value is that frame's codestream.
    items = ds.PixelData[8:]
    for off, length, s in zip(offsets, lengths, streams, strict=True):
        assert struct.unpack("<HH", items[off: off + 4]) == (0xFFFE, 0xE000)
        assert items[off + 8: off + 8 + length] == s
    np.testing.assert_array_equal(ds.pixel_array, np.stack(images))


def test_single_frame_never_needs_an_extended_offset_table() -> None:
    obj = assemble(_header(), _j2k(_image(95)), UID, max_bot_offset=0)
    ds = _read(obj.tobytes())
    assert "ExtendedOffsetTable" not in ds


# ---------------------------------------------------------------- native pixels


@pytest.mark.parametrize(("geometry", "length"), [
    ((3, 3, 1, 1, 1), 2),     # 9 bits packed, rounded up
    ((3, 3, 1, 1, 3), 4),     # 27 bits: frames are packed back to back
    ((8, 8, 1, 1, 1), 8),
    ((3, 5, 1, 8, 1), 15),    # odd: padded when written, not here
    ((2, 2, 3, 16, 2), 48),
    ((4, 2, 1, 32, 1), 32),
])
def test_native_length(geometry: tuple[int, int, int, int, int], length: int) -> None:
    assert pixels.native_length(*geometry) == length


def test_native_16_bit_is_ow_and_decodes() -> None:
    arr = _image(100)
    obj = assemble(_header(), arr.tobytes(), UID)
    assert obj.transfer_syntax == "1.2.840.10008.1.2.1"
    ds = _read(obj.tobytes())
    assert ds["PixelData"].VR == "OW"
    np.testing.assert_array_equal(ds.pixel_array, arr)


def test_native_odd_8_bit_is_ob_and_padded_with_a_zero() -> None:
    arr = np.arange(15, dtype=np.uint8).reshape(3, 5) + 7
    data = assemble(_header(bits=8, rows=3, cols=5), arr.tobytes(), UID).tobytes()
    ds = _read(data)
    assert ds["PixelData"].VR == "OB"
    assert ds.PixelData == arr.tobytes() + b"\x00"
    np.testing.assert_array_equal(ds.pixel_array, arr)
    # An already padded payload is accepted, and its pad byte is written as zero.
    padded = _read(assemble(_header(bits=8, rows=3, cols=5), arr.tobytes() + b"\xff", UID).tobytes())
    assert padded.PixelData == arr.tobytes() + b"\x00"


def test_native_1_bit_is_packed_ob() -> None:
    bits = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    packed = np.packbits(bits.ravel(), bitorder="little").tobytes()
    assert len(packed) == 2
    ds = _read(assemble(_header(bits=1, rows=3, cols=3), packed, UID).tobytes())
    assert ds["PixelData"].VR == "OB"
    assert ds.PixelData == packed
    np.testing.assert_array_equal(ds.pixel_array, bits)


def test_native_element_framing() -> None:
    parts = pixels.native_element(b"abc", 3, 8)
    element = b"".join(bytes(p) for p in parts)
    assert element == struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 4) + b"abc\x00"
    parts = pixels.native_element(b"abcd", 4, 16)
    assert b"".join(bytes(p) for p in parts) == struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 4) + b"abcd"


def test_native_that_starts_like_j2k_is_native_when_the_length_fits() -> None:
    payload = pixels.SOC_SIZ + b"\x00" * (ROWS * COLS * 2 - 4)
    assert pixels.classify(payload, ROWS * COLS * 2).kind == "native"


# ---------------------------------------------------------------- errors


def test_empty_pixels() -> None:
    with pytest.raises(PixelError) as exc:
        pixels.classify(b"", 10)
    assert exc.value.reason == "empty_pixels"
    assert exc.value.status == "invalid_pixels"


@pytest.mark.parametrize("n", [ROWS * COLS * 2 - 2, ROWS * COLS * 2 + 2, ROWS * COLS * 2 + 1])
def test_native_length_mismatch(n: int) -> None:
    with pytest.raises(PixelError) as exc:
        assemble(_header(), b"\x01" * n, UID)
    assert exc.value.reason == "native_length_mismatch"


@pytest.mark.parametrize("cut", [40, 200, -3])
def test_damaged_j2k_is_unrecognised(cut: int) -> None:
    cs = _j2k(_image(110))
    with pytest.raises(PixelError) as exc:
        pixels.classify(cs[:cut], ROWS * COLS * 2)
    assert exc.value.reason == "unrecognised_payload"
    with pytest.raises(PixelError) as exc:
        pixels.classify(cs[:cut], None)
    assert exc.value.reason == "unrecognised_payload"


def test_non_j2k_without_geometry_is_unrecognised() -> None:
    with pytest.raises(PixelError) as exc:
        pixels.classify(b"\x00\x01\x02\x03", None)
    assert exc.value.reason == "unrecognised_payload"


def test_codestream_followed_by_garbage_is_not_split() -> None:
    cs = _j2k(_image(111))
    assert pixels.split_codestreams(cs + b"garbage!") is None
    with pytest.raises(PixelError) as exc:
        pixels.classify(cs + b"garbage!", ROWS * COLS * 2)
    assert exc.value.reason == "unrecognised_payload"


def test_payload_may_be_any_buffer() -> None:
    """Archive buffers arrive as memoryviews: classification and framing must not need bytes."""
    streams = [_j2k(_image(120)), _j2k(_image(121))]
    view = memoryview(bytearray(b"".join(streams)))
    p = pixels.classify(view)
    assert [(f.end - f.start) for f in p.frames] == [len(s) for s in streams]
    obj = assemble(_header(frames=2, sop_class=MF_SC_WORD), view, UID)
    assert [f[: len(s)] for f, s in zip(_fragments(_read(obj.tobytes()).PixelData), streams, strict=True)] == streams
