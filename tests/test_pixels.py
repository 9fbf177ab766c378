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
from helpers import dcmftest_ok
from openjpeg.utils import encode_array
from pydicom import dcmread

from dicom_reassembly.dicom import pixels
from dicom_reassembly.dicom.part10 import assemble
from dicom_reassembly.errors import HeaderError, PixelError

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
            samples: int = 1, lossy: str | None = None, sop_class: str = SC_IMAGE, stored: int | None = None,
            signed: int = 0, photometric: str | None = None) -> str:
    stored = stored or (12 if bits == 16 else bits)
    h: dict = {
        "00080016": {"vr": "UI", "Value": [sop_class]},
        "00080018": {"vr": "UI", "Value": [UID]},
        "00080060": {"vr": "CS", "Value": ["OT"]},
        "00280002": {"vr": "US", "Value": [samples]},
        "00280004": {"vr": "CS", "Value": [photometric or ("MONOCHROME2" if samples == 1 else "RGB")]},
        "00280010": {"vr": "US", "Value": [rows]},
        "00280011": {"vr": "US", "Value": [cols]},
        "00280100": {"vr": "US", "Value": [bits]},
        "00280101": {"vr": "US", "Value": [stored]},
        "00280102": {"vr": "US", "Value": [stored - 1]},
        "00280103": {"vr": "US", "Value": [signed]},
    }
    if samples > 1:
        h["00280006"] = {"vr": "US", "Value": [0]}
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


@pytest.mark.parametrize("n", [ROWS * COLS * 2 - 2, ROWS * COLS * 2 - 1, 1])
def test_native_shorter_than_needed_is_a_length_mismatch(n: int) -> None:
    with pytest.raises(PixelError) as exc:
        assemble(_header(), b"\x01" * n, UID)
    assert exc.value.reason == "native_length_mismatch"
    assert exc.value.status == "invalid_pixels"
    assert f"{n} bytes" in exc.value.detail and str(ROWS * COLS * 2) in exc.value.detail


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


# ---------------------------------------------------------------- pad bytes after EOC (issue 16)


def _odd_j2k(seed: int) -> tuple[np.ndarray, bytes]:
    """An image and its lossless codestream of odd length (openjpeg's lengths vary with content)."""
    for s in range(seed, seed + 60):
        arr = _image(s)
        cs = _j2k(arr)
        if len(cs) % 2 == 1:
            return arr, cs
    raise AssertionError("no odd-length codestream")


def _even_j2k(seed: int) -> tuple[np.ndarray, bytes]:
    for s in range(seed, seed + 60):
        arr = _image(s)
        cs = _j2k(arr)
        if len(cs) % 2 == 0:
            return arr, cs
    raise AssertionError("no even-length codestream")


@pytest.mark.parametrize("pad", [b"\x00", b"\xff"], ids=["00", "ff"])
def test_pad_byte_after_eoc_is_accepted_and_the_fragment_stays_even(pad: bytes, tmp_path) -> None:  # noqa: ANN001
    """A fragment cut from a DICOM file ends ``FF D9 FF`` (or ``FF D9 00``); round 1 refused the 0xFF."""
    arr, cs = _odd_j2k(130)
    assert cs.endswith(b"\xff\xd9")
    p = pixels.classify(cs + pad, ROWS * COLS * 2)
    assert p.kind == "j2k" and [(f.start, f.end) for f in p.frames] == [(0, len(cs))]
    obj = assemble(_header(), cs + pad, UID)
    path = tmp_path / "pad.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    ds = dcmread(path)
    (fragment,) = _fragments(ds.PixelData)
    assert fragment == cs + b"\x00"  # padded to even with 0x00, whatever the source's pad byte was
    np.testing.assert_array_equal(ds.pixel_array, arr)


def test_pad_bytes_between_concatenated_codestreams() -> None:
    """Frames cut from a multi-frame file each keep their pad byte; the payload is their concatenation."""
    (a1, c1), (a2, c2) = _odd_j2k(140), _odd_j2k(200)
    payload = c1 + b"\xff" + c2 + b"\x00"
    p = pixels.classify(payload)
    assert [(f.start, f.end) for f in p.frames] == [(0, len(c1)), (len(c1) + 1, len(c1) + 1 + len(c2))]
    ds = _read(assemble(_header(frames=2, sop_class=MF_SC_WORD), payload, UID).tobytes())
    assert _fragments(ds.PixelData) == [c1 + b"\x00", c2 + b"\x00"]
    np.testing.assert_array_equal(ds.pixel_array, np.stack([a1, a2]))
    # A writer that padded the concatenated payload (odd + even codestream) to even length.
    _, even = _even_j2k(260)
    assert [(f.start, f.end) for f in pixels.classify(c1 + even + b"\xff").frames] == [
        (0, len(c1)), (len(c1), len(c1) + len(even))]


def test_bytes_after_eoc_that_are_not_a_pad_byte_are_refused() -> None:
    _, odd = _odd_j2k(130)
    _, even = _even_j2k(130)
    for payload in (odd + b"\x01",             # not 0x00 or 0xFF
                    odd + b"\xff\xff",         # two bytes are not padding
                    odd + b"\x00\x00",
                    even + b"\x00",            # pads nothing to even: the codestream already is
                    odd + b"\xff" + b"\x00" + odd):  # a pad byte must be followed by the end or a codestream
        assert pixels.split_codestreams(payload) is None
        with pytest.raises(PixelError) as exc:
            pixels.classify(payload, ROWS * COLS * 2)
        assert exc.value.reason == "unrecognised_payload"


# ---------------------------------------------------------------- SIZ of every codestream against the header


def _signed_image(seed: int, bits: int) -> np.ndarray:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    return np.random.default_rng(seed).integers(lo, hi, (ROWS, COLS), dtype=np.int16)


def test_siz_is_read_for_every_codestream() -> None:
    grey = np.random.default_rng(1).integers(0, 1 << 13, (ROWS, COLS + 8), dtype=np.uint16)
    rgb = np.random.default_rng(2).integers(0, 256, (ROWS + 8, COLS, 3), dtype=np.uint8)
    signed = _signed_image(3, 16)
    streams = [encode_array(grey, bits_stored=13), encode_array(rgb, bits_stored=8, photometric_interpretation=1),
               encode_array(signed, bits_stored=16)]
    frames = pixels.classify(b"".join(streams)).frames
    assert [(f.width, f.height, f.components, f.precision, f.signed) for f in frames] == [
        (COLS + 8, ROWS, 1, (13,), (False,)),
        (COLS, ROWS + 8, 3, (8, 8, 8), (False, False, False)),
        (COLS, ROWS, 1, (16,), (True,)),
    ]


def _with_siz_field(cs: bytes, offset: int, fmt: str, value: int) -> bytes:
    """The codestream with one SIZ field (``offset`` from the SIZ marker) replaced."""
    marker, siz, _ = _main_header_segments(cs)[0]
    assert marker == 0xFF51
    at = siz + offset
    return cs[:at] + struct.pack(fmt, value) + cs[at + struct.calcsize(fmt):]


@pytest.mark.parametrize(("offset", "fmt", "value"), [
    (38, ">H", 2),         # Csiz says 2 components, the segment holds 1
    (38, ">H", 0),         # no component
    (14, ">I", COLS),      # XOsiz = Xsiz: an empty image area
    (40, ">B", 0x7F),      # 128-bit samples
], ids=["csiz-too-many", "csiz-zero", "empty-area", "precision-128"])
def test_an_inconsistent_siz_is_a_damaged_codestream(offset: int, fmt: str, value: int) -> None:
    damaged = _with_siz_field(_j2k(_image(150)), offset, fmt, value)
    with pytest.raises(PixelError) as exc:
        pixels.classify(damaged, ROWS * COLS * 2)
    assert exc.value.reason == "unrecognised_payload"


def test_a_64x64_codestream_under_a_128x128_header_is_invalid_pixels() -> None:
    """Round 1 wrote it: it passes dcmftest, but no viewer can decode it."""
    cs = encode_array(np.random.default_rng(4).integers(0, 4096, (64, 64), dtype=np.uint16), bits_stored=12)
    with pytest.raises(PixelError) as exc:
        assemble(_header(rows=128, cols=128), cs, UID)
    assert exc.value.reason == "geometry_mismatch" and exc.value.status == "invalid_pixels"
    assert exc.value.detail == "codestream is 64x64 but the header says Columns 128 x Rows 128"


@pytest.mark.parametrize(("header", "reason", "detail"), [
    (dict(rows=COLS, cols=ROWS), "geometry_mismatch",
     f"codestream 2 of 2 is {COLS}x{ROWS} but the header says Columns {ROWS} x Rows {COLS}"),
    (dict(samples=3), "geometry_mismatch", "codestream 2 of 2 has 1 components but SamplesPerPixel is 3"),
    (dict(bits=8), "precision_exceeds_bits_allocated", "codestream 2 of 2 has 12-bit samples but BitsAllocated is 8"),
])
def test_every_codestream_must_match_the_header(header: dict, reason: str, detail: str) -> None:
    # The first frame matches the header; the second is the one that does not.
    rows, cols = header.get("rows", ROWS), header.get("cols", COLS)
    samples, bits = header.get("samples", 1), header.get("bits", 16)
    if samples == 3:
        first = encode_array(np.zeros((rows, cols, 3), dtype=np.uint8), bits_stored=8)
    elif bits == 8:
        first = encode_array(np.zeros((rows, cols), dtype=np.uint8), bits_stored=8)
    else:
        first = encode_array(np.zeros((rows, cols), dtype=np.uint16), bits_stored=12)
    with pytest.raises(PixelError) as exc:
        assemble(_header(frames=2, sop_class=MF_SC_WORD, **header), first + _j2k(_image(160)), UID)
    assert (exc.value.reason, exc.value.detail) == (reason, detail)


def test_j2k_without_rows_cannot_be_checked() -> None:
    h = json.loads(_header())
    del h["00280010"]
    with pytest.raises(HeaderError) as exc:
        assemble(json.dumps(h), _j2k(_image(161)), UID)
    assert exc.value.reason == "missing_geometry"


def test_precision_other_than_bits_stored_is_written_with_a_note(tmp_path) -> None:  # noqa: ANN001
    """A 16-bit signed codestream under BitsStored 14, as real files carry it: decoders follow the codestream."""
    arr = _signed_image(170, 14)
    cs = encode_array(arr, bits_stored=16)
    obj = assemble(_header(stored=14, signed=1), cs, UID)
    assert obj.notes == ["j2k_precision_differs: codestream precision 16 but BitsStored 14, written as is"]
    path = tmp_path / "p.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    np.testing.assert_array_equal(dcmread(path).pixel_array, arr)


def test_signedness_other_than_pixel_representation_is_written_with_a_note() -> None:
    """13-bit unsigned samples under PixelRepresentation 1."""
    arr = np.random.default_rng(171).integers(0, 1 << 12, (ROWS, COLS), dtype=np.uint16)
    cs = encode_array(arr, bits_stored=13)
    obj = assemble(_header(stored=13, signed=1), cs, UID)
    assert obj.notes == [
        "j2k_signedness_differs: codestream samples unsigned but PixelRepresentation 1, written as is"]
    # One note per kind, however many frames carry it.
    multi = assemble(_header(frames=2, stored=12, signed=1, sop_class=MF_SC_WORD), cs + cs, UID)
    assert multi.notes == ["j2k_precision_differs: codestream precision 13 but BitsStored 12, written as is",
                           "j2k_signedness_differs: codestream samples unsigned but PixelRepresentation 1, written as is"]


def test_a_codestream_that_matches_its_header_has_no_note() -> None:
    assert assemble(_header(), _j2k(_image(172)), UID).notes == []
    assert assemble(_header(), _image(172).tobytes(), UID).notes == []


# ---------------------------------------------------------------- native lengths as real files carry them


@pytest.mark.parametrize(("geometry", "photometric", "length"), [
    ((4, 6, 3, 8, 1), "YBR_FULL_422", 48),       # 2 samples per pixel: Y Y CB CR per pair
    ((4, 6, 3, 8, 2), "YBR_PARTIAL_422", 96),
    ((4, 5, 3, 8, 1), "YBR_FULL_422", 44),       # an odd last pixel still has its CB and CR
    ((4, 6, 3, 8, 1), "YBR_PARTIAL_420", 36),    # 1.5 samples per pixel: CB CR per 2x2 block
    ((3, 5, 3, 8, 1), "YBR_PARTIAL_420", 27),    # 15 Y + 2 x (2 x 3) chroma
    ((4, 6, 3, 16, 1), "YBR_FULL_422", 96),
    ((4, 6, 3, 8, 1), "YBR_FULL", 72),           # not subsampled
    ((4, 6, 3, 8, 1), " ybr_full_422 ", 48),     # CS values may arrive padded
])
def test_native_length_of_subsampled_photometric_interpretations(
        geometry: tuple[int, int, int, int, int], photometric: str, length: int) -> None:
    assert pixels.native_length(*geometry, photometric) == length


def _ybr422(ybr: np.ndarray) -> bytes:
    """YBR_FULL_422 bytes of a YBR_FULL image: Y1 Y2 CB1 CR1 for each pair, chroma of the pair's first pixel."""
    pairs = ybr.reshape(ybr.shape[0], ybr.shape[1] // 2, 2, 3)
    return np.concatenate([pairs[..., 0], pairs[:, :, 0, 1:]], axis=-1).tobytes()


def test_ybr_full_422_native_is_two_samples_per_pixel(tmp_path) -> None:  # noqa: ANN001
    """Round 1 expected 3 samples per pixel and refused it as native_length_mismatch."""
    ybr = np.random.default_rng(180).integers(0, 256, (ROWS, COLS, 3), dtype=np.uint8)
    payload = _ybr422(ybr)
    assert len(payload) == ROWS * COLS * 2
    obj = assemble(_header(bits=8, samples=3, photometric="YBR_FULL_422"), payload, UID)
    assert obj.notes == []
    path = tmp_path / "422.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    ds = dcmread(path)
    assert ds.PixelData == payload
    # The decoder repeats each pair's chroma for both pixels.
    expected = ybr.copy()
    expected[:, 1::2, 1:] = ybr[:, 0::2, 1:]
    ds.pixel_array_options(as_rgb=False)  # compare the YBR samples themselves, before any colour conversion
    np.testing.assert_array_equal(ds.pixel_array, expected)


def test_subsampled_data_as_long_as_unsubsampled_data_is_refused_not_garbled() -> None:
    """A YBR_FULL_422 value of the full 3-sample size: pydicom refuses to decode it ("a third larger"), so
    writing it unchanged as a longer payload would give an object no reader opens."""
    from pydicom import Dataset
    from pydicom.pixels import pixel_array

    full = np.random.default_rng(182).integers(0, 256, ROWS * COLS * 3, dtype=np.uint8).tobytes()
    with pytest.raises(PixelError) as exc:
        assemble(_header(bits=8, samples=3, photometric="YBR_FULL_422"), full, UID)
    assert exc.value.reason == "ambiguous_subsampling" and str(ROWS * COLS * 2) in exc.value.detail
    # The reason is real: the same value as a dataset does not decode.
    ds = Dataset()
    ds.update({"Rows": ROWS, "Columns": COLS, "SamplesPerPixel": 3, "BitsAllocated": 8, "BitsStored": 8,
               "HighBit": 7, "PixelRepresentation": 0, "PhotometricInterpretation": "YBR_FULL_422",
               "PlanarConfiguration": 0, "PixelData": full})
    ds.set_original_encoding(False, True)
    import pydicom.uid
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    with pytest.raises(ValueError, match="third larger"):
        pixel_array(ds)
    # One byte less than that is an ordinary longer payload: written, with its note.
    obj = assemble(_header(bits=8, samples=3, photometric="YBR_FULL_422"), full[:-2], UID)
    assert obj.notes and obj.notes[0].startswith("native_longer_than_needed")


@pytest.mark.parametrize(("photometric", "n"), [("YBR_PARTIAL_422", ROWS * COLS * 2),
                                                ("YBR_PARTIAL_420", ROWS * COLS * 3 // 2)])
def test_other_subsampled_native_data_is_written_as_it_is(photometric: str, n: int, tmp_path) -> None:  # noqa: ANN001
    payload = np.random.default_rng(181).integers(0, 256, n, dtype=np.uint8).tobytes()
    obj = assemble(_header(bits=8, samples=3, photometric=photometric), payload, UID)
    path = tmp_path / "sub.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    assert dcmread(path).PixelData == payload
    with pytest.raises(PixelError) as exc:
        assemble(_header(bits=8, samples=3, photometric=photometric), payload[:-2], UID)
    assert exc.value.reason == "native_length_mismatch"


def test_real_ybr_full_422_file_is_reassembled_pixel_exact(tmp_path) -> None:  # noqa: ANN001
    from helpers import dciodvfy_errors
    from pydicom.data import get_testdata_file

    from dicom_reassembly.testing.instances import header_json

    source_path = get_testdata_file("SC_ybr_full_422_uncompressed.dcm", download=False)
    src = dcmread(source_path)
    assert src.PhotometricInterpretation == "YBR_FULL_422" and len(src.PixelData) == src.Rows * src.Columns * 2
    obj = assemble(header_json(src), src.PixelData, str(src.SOPInstanceUID))
    path = tmp_path / "real422.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    assert not dciodvfy_errors(str(path)) - dciodvfy_errors(source_path)
    np.testing.assert_array_equal(dcmread(path).pixel_array, src.pixel_array)


@pytest.mark.parametrize("extra", [2, 5, 1], ids=["even", "odd", "one-byte"])
def test_native_longer_than_needed_is_written_unchanged_with_a_note(extra: int, tmp_path) -> None:  # noqa: ANN001
    """Readers such as pydicom take the bytes they need; round 1 refused it as native_length_mismatch."""
    arr = _image(190)
    tail = bytes(range(1, extra + 1))
    payload = arr.tobytes() + tail
    obj = assemble(_header(), payload, UID)
    n, need = len(payload), ROWS * COLS * 2
    padded = " and padded to even length" if n & 1 else ""
    assert obj.notes == [f"native_longer_than_needed: {n} bytes, {extra} more than the {need} its geometry needs, "
                         f"written unchanged{padded}"]
    path = tmp_path / "long.dcm"
    path.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(path))
    ds = dcmread(path)
    assert ds["PixelData"].VR == "OW"
    assert ds.PixelData == payload + b"\x00" * (n & 1)  # every byte kept; an odd value gets its pad byte
    with pytest.warns(UserWarning):  # pydicom says it trims the excess
        np.testing.assert_array_equal(ds.pixel_array, arr)


def test_native_longer_than_needed_differs_for_dciodvfy_only_in_the_length(tmp_path) -> None:  # noqa: ANN001
    """dciodvfy reports the extra bytes, and nothing else: the note in the ledger says the same."""
    from helpers import dciodvfy_errors
    from pydicom.data import get_testdata_file

    from dicom_reassembly.testing.instances import header_json

    source_path = get_testdata_file("MR_small.dcm", download=False)
    src = dcmread(source_path)
    obj = assemble(header_json(src), src.PixelData + b"\x00" * 6, str(src.SOPInstanceUID))
    path = tmp_path / "long-mr.dcm"
    path.write_bytes(obj.tobytes())
    n = len(src.PixelData)
    assert dciodvfy_errors(str(path)) - dciodvfy_errors(source_path) == {
        f"Error - PixelData has incorrect value length - expected {n} dec - got {n + 6} dec"}
