"""HTJ2K payloads become valid Part 10 objects that decode to exactly the source pixels.

The codestreams are real High-Throughput JPEG 2000, made by OpenJPH's encoder
(``ojph_compress``, Debian's openjph-tools) from the pixels of pydicom's bundled
samples. Decoding goes through pydicom and pylibjpeg-openjpeg, not our code.
dicom3tools' dciodvfy predates the HTJ2K transfer syntaxes and refuses to parse
their encapsulated Pixel Data, so it checks a copy labelled with the matching
JPEG 2000 UID (lossless or not), whose encapsulation rules are the same.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import dciodvfy_errors, dcmftest_ok, require_tool
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless

from dicom_reassembly.dicom import pixels
from dicom_reassembly.dicom.part10 import assemble
from dicom_reassembly.testing.instances import header_json, json_bytes, read_source


def _ojph_encode(frame: np.ndarray, signed: bool, bits: int, tmp: Path, reversible: bool = True) -> bytes:
    """One frame as an HTJ2K codestream: colour through a PPM (no colour transform), grey through raw samples."""
    tool = require_tool("ojph_compress")
    rows, cols = frame.shape[:2]
    out = tmp / "frame.j2c"
    if frame.ndim == 3:
        src = tmp / "frame.ppm"
        src.write_bytes(f"P6\n{cols} {rows}\n{(1 << bits) - 1}\n".encode() + frame.astype(">u2" if bits > 8 else "u1").tobytes())
        args = ["-colour_trans", "false"]
    else:
        src = tmp / "frame.yuv"
        src.write_bytes(frame.astype(("<i2" if signed else "<u2") if bits > 8 else ("i1" if signed else "u1")).tobytes())
        args = ["-dims", f"{{{cols},{rows}}}", "-num_comps", "1", "-signed", "true" if signed else "false",
                "-bit_depth", str(bits), "-downsamp", "{1,1}"]
    if reversible:
        args += ["-reversible", "true"]
    else:
        args += ["-qstep", "0.02"]
    done = subprocess.run([tool, "-i", str(src), "-o", str(out), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def _new_dciodvfy_errors(path: Path, name: str, label: str, tmp: Path) -> set[str]:
    """dciodvfy's errors on a copy of ``path`` labelled with the JPEG 2000 UID ``label``, less the source's own."""
    relabelled = tmp / "as-j2k.dcm"
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = label
    ds.save_as(relabelled)
    return dciodvfy_errors(str(relabelled)) - dciodvfy_errors(get_testdata_file(name, download=False))


def _codestreams(name: str, tmp: Path, reversible: bool = True) -> tuple[np.ndarray, list[bytes]]:
    source = dcmread(get_testdata_file(name, download=False))
    arr = source.pixel_array
    frames = [arr] if int(source.get("NumberOfFrames", 1) or 1) == 1 else list(arr)
    signed = source.PixelRepresentation == 1
    return arr, [_ojph_encode(f, signed, source.BitsStored, tmp, reversible) for f in frames]


@pytest.mark.parametrize("name", [
    "CT_small.dcm",                 # 16-bit signed CT
    "MR_small.dcm",                 # 16-bit signed MR
    "examples_palette.dcm",         # 8-bit palette colour
    "SC_rgb_small_odd.dcm",         # 8-bit RGB, 3 x 3
    "SC_rgb_rle_2frame.dcm",        # 8-bit RGB, 2 frames
    "SC_rgb_rle_16bit_2frame.dcm",  # 16-bit RGB, 2 frames
])
def test_lossless_htj2k_is_valid_part10_with_the_source_pixels(name: str, tmp_path: Path) -> None:
    arr, streams = _codestreams(name, tmp_path)
    ds = read_source(name)
    payload = b"".join(streams)
    kind = pixels.classify(payload)
    assert kind.kind == "htj2k" and len(kind.frames) == len(streams)

    obj = assemble(json_bytes(header_json(ds)), payload, ds.SOPInstanceUID, None)
    path = tmp_path / "out.dcm"
    path.write_bytes(obj.tobytes())

    assert obj.transfer_syntax == "1.2.840.10008.1.2.4.201"
    assert dcmftest_ok(str(path))
    written = dcmread(path)
    assert written.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.201"
    # Each frame is one fragment holding its codestream, padded to even length after EOC.
    padded = [s + b"\x00" if len(s) % 2 else s for s in streams]
    assert list(generate_frames(written.PixelData, number_of_frames=len(streams))) == padded
    assert np.array_equal(written.pixel_array, arr)
    assert _new_dciodvfy_errors(path, name, JPEG2000Lossless, tmp_path) == set()


def test_irreversible_htj2k_is_written_as_htj2k_lossy(tmp_path: Path) -> None:
    """A 9/7 codestream gets the lossy HTJ2K syntax, and the object decodes to what the codestream holds."""
    from openjpeg import decode

    _, (stream,) = _codestreams("CT_small.dcm", tmp_path, reversible=False)
    ds = read_source("CT_small.dcm")
    obj = assemble(json_bytes(header_json(ds)), stream, ds.SOPInstanceUID, None)
    path = tmp_path / "lossy.dcm"
    path.write_bytes(obj.tobytes())

    assert obj.transfer_syntax == "1.2.840.10008.1.2.4.203"
    assert dcmftest_ok(str(path))
    assert np.array_equal(dcmread(path).pixel_array, decode(stream))
    assert _new_dciodvfy_errors(path, "CT_small.dcm", JPEG2000, tmp_path) == set()
