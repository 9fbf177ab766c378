"""Real encoders' codestreams: every JPEG 2000 file pydicom ships, cut up and reassembled.

Each file's Pixel Data fragments are cut out exactly as they sit in the file (pad bytes
included), joined per frame as a partner's ``.j2c`` member would hold them, and put back
together with the file's own header (DICOM JSON without Pixel Data) by ``part10.assemble``.
The object must pass dcmftest, get no dciodvfy error the source file lacks, and decode to
exactly the source file's pixels.

The corpus (pydicom 3.0, bundled files only: pydicom's downloadable files are never fetched):

- ``693_J2KI.dcm``: 16-bit signed codestream under BitsStored 14 (written with a note);
- ``GDCMJ2K_TextGBR.dcm``: a JP2 file (boxes and a pad byte) inside Pixel Data, YBR_RCT;
- ``J2K_pixelrep_mismatch.dcm``: 13-bit unsigned codestream under PixelRepresentation 1
  (written with a note), a Basic Offset Table in the source;
- ``JPEG2000.dcm``: irreversible 9-7, 16-bit signed;
- ``MR_small_jp2klossless.dcm``: reversible, 16-bit signed;
- ``SC_rgb_gdcm_KY.dcm``: 8-bit RGB, the fragment ends ``FF D9 00``;
- ``examples_jpeg2k.dcm``: one frame in three fragments, ending ``FF D9 FF`` (a 0xFF pad byte
  after EOC: the round-1 code refused it as a damaged codestream).

Excluded: ``JPEG2000-embedded-sequence-delimiter.dcm`` does not decode with the installed
plugins (its SIZ holds a sequence delimiter, so Xsiz is 3722445056): its pixels cannot be
compared, and reassembly refuses it as ``geometry_mismatch`` (tested below). pydicom ships no
HTJ2K file without a download; real HTJ2K codestreams are tested in test_htj2k.py.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import dciodvfy_errors, dcmftest_ok
from pydicom import dcmread
from pydicom.data import data_manager, get_testdata_file
from pydicom.encaps import generate_fragments, generate_frames

from dicom_reassembly.dicom.part10 import assemble
from dicom_reassembly.errors import PixelError
from dicom_reassembly.records.ledger import row_dict
from dicom_reassembly.testing.instances import header_json

J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
}
# Files pydicom 3.0 bundles, each with the notes its SIZ earns against its header (checked below
# against an independent SIZ reading, so the table cannot drift from the files).
BUNDLED = {
    "693_J2KI.dcm": {"j2k_precision_differs"},
    "GDCMJ2K_TextGBR.dcm": set(),
    "J2K_pixelrep_mismatch.dcm": {"j2k_signedness_differs"},
    "JPEG2000.dcm": set(),
    "MR_small_jp2klossless.dcm": set(),
    "SC_rgb_gdcm_KY.dcm": set(),
    "examples_jpeg2k.dcm": set(),
}
UNDECODABLE = {"JPEG2000-embedded-sequence-delimiter.dcm"}
CLI = os.path.join(os.path.dirname(sys.executable), "dicom-reassembly")


def _local_j2k_files() -> dict[str, str]:
    """Name -> path of every JPEG 2000 file pydicom has locally (its own and any external data source).

    Candidate names are the bundled files plus the names pydicom can download; with
    ``download=False`` only those already on this machine resolve, so the network is never used.
    """
    root = Path(data_manager.DATA_ROOT) / "test_files"
    names = {p.name for p in root.rglob("*.dcm")} | set(data_manager.get_url_map())
    found = {}
    for name in sorted(names):
        path = get_testdata_file(name, download=False)
        if not isinstance(path, str):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not every test file is a readable dataset
            continue
        if str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "")) in J2K_SYNTAXES:
            found[name] = path
    return found


LOCAL = _local_j2k_files()
CORPUS = sorted(set(LOCAL) - UNDECODABLE)


def _source(name: str):  # noqa: ANN202 - pydicom FileDataset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(LOCAL[name])


def _decoded(ds) -> np.ndarray:  # noqa: ANN001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def _member(ds) -> bytes:  # noqa: ANN001
    """The pixel member a partner would deliver: each frame's fragments as they sit, frames back to back."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return b"".join(generate_frames(ds.PixelData, number_of_frames=frames))


def _siz(codestream: bytes) -> tuple[int, int, list[int], list[bool]]:
    """(width, height, precisions, signedness) read straight from the SIZ segment after SOC."""
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", codestream[8:24])
    csiz = struct.unpack(">H", codestream[40:42])[0]
    ssiz = [codestream[42 + 3 * i] for i in range(csiz)]
    return xsiz - xosiz, ysiz - yosiz, [(s & 0x7F) + 1 for s in ssiz], [bool(s & 0x80) for s in ssiz]


def _note_codes(notes: list[str]) -> set[str]:
    return {n.split(":", 1)[0] for n in notes}


def test_the_corpus_holds_every_bundled_jpeg2000_file() -> None:
    """A pydicom that drops a file (or a reader that stops finding them) cannot empty the corpus unnoticed."""
    assert set(BUNDLED) <= set(CORPUS), sorted(set(BUNDLED) - set(CORPUS))


@pytest.mark.parametrize("name", CORPUS)
def test_real_codestream_is_reassembled_pixel_exact(name: str, tmp_path: Path) -> None:
    src = _source(name)
    reference = _decoded(src)  # every file in CORPUS decodes with the installed plugins
    obj = assemble(header_json(src), _member(src), str(src.SOPInstanceUID))
    out = tmp_path / name
    out.write_bytes(obj.tobytes())
    assert dcmftest_ok(str(out))
    new_errors = dciodvfy_errors(str(out)) - dciodvfy_errors(LOCAL[name])
    assert not new_errors, sorted(new_errors)
    ours = dcmread(out)
    np.testing.assert_array_equal(_decoded(ours), reference)
    # One fragment per frame, each even and starting with the frame's codestream (JP2 boxes dropped).
    fragments = list(generate_fragments(ours.PixelData))[1:]
    assert len(fragments) == obj.frames == int(src.get("NumberOfFrames", 1) or 1)
    assert all(len(f) % 2 == 0 and f.startswith(b"\xff\x4f\xff\x51") for f in fragments)
    if name in BUNDLED:
        assert _note_codes(obj.notes) == BUNDLED[name]


@pytest.mark.parametrize("name", sorted(set(BUNDLED) & set(CORPUS)))
def test_notes_follow_the_codestream_against_the_header(name: str) -> None:
    """The notes table above agrees with the file's own SIZ and header, read independently."""
    src = _source(name)
    member = _member(src)
    width, height, precision, signed = _siz(member[member.find(b"\xff\x4f\xff\x51"):])
    assert (width, height, len(precision)) == (src.Columns, src.Rows, src.SamplesPerPixel)
    expected = set()
    if set(precision) != {src.BitsStored}:
        expected.add("j2k_precision_differs")
    if set(signed) != {bool(src.PixelRepresentation)}:
        expected.add("j2k_signedness_differs")
    assert expected == BUNDLED[name]


def test_pad_byte_ff_after_eoc_is_what_the_real_file_holds() -> None:
    """The "Why" case: examples_jpeg2k.dcm's frame ends FF D9 FF and must not be refused."""
    src = _source("examples_jpeg2k.dcm")
    member = _member(src)
    assert member.endswith(b"\xff\xd9\xff")
    obj = assemble(header_json(src), member, str(src.SOPInstanceUID))
    _bot, fragment = generate_fragments(dcmread(io.BytesIO(obj.tobytes())).PixelData)  # items: BOT, then one fragment
    assert fragment == member[:-1] + b"\x00"  # the codestream, padded to even with 0x00


def test_the_undecodable_file_is_refused_with_its_numbers() -> None:
    src = _source("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(Exception):  # noqa: B017,PT011 - first prove no decoder takes it
        _decoded(src)
    with pytest.raises(PixelError) as exc:
        assemble(header_json(src), _member(src), str(src.SOPInstanceUID))
    assert exc.value.reason == "geometry_mismatch"
    assert "3722445056x1024" in exc.value.detail and "Columns 256 x Rows 1024" in exc.value.detail


# ---------------------------------------------------------------- notes reach the ledger and the CLI


def _delivery(tmp_path: Path, name: str) -> tuple[str, dict, str]:
    """A one-instance delivery of a corpus file: (root, work item, uid), as the plan would hand it over."""
    import json

    src = _source(name)
    uid = str(src.SOPInstanceUID)
    root = tmp_path / "delivery"
    for sub, member, data in (("text", f"{uid}.json", json.dumps(header_json(src)).encode()),
                              ("images", f"{uid}.j2c", _member(src))):
        (root / sub).mkdir(parents=True)
        (root / sub / "member").write_bytes(data)
        with tarfile.open(root / sub / "a.tar", "w") as tf:
            tf.add(root / sub / "member", arcname=member)
        (root / sub / "member").unlink()
    archive = str(root / "images" / "a.tar")
    with tarfile.open(archive) as tf:
        m = tf.getmember(f"{uid}.j2c")
    item = {"sop_instance_uid": uid, "header_archive": str(root / "text" / "a.tar"), "header_member": f"{uid}.json",
            "header_json": json.dumps(header_json(src)), "pixel_archive": archive,
            "pixel_archive_size": os.path.getsize(archive), "pixel_member": f"{uid}.j2c", "pixel_offset": m.offset_data,
            "pixel_size": m.size, "dup_pixels": None, "study_instance_uid": str(src.StudyInstanceUID),
            "series_instance_uid": str(src.SeriesInstanceUID), "modality": str(src.Modality)}
    return str(root), item, uid


def test_notes_reach_the_ledger_reason_of_written_and_skipped_rows(tmp_path: Path) -> None:
    from dicom_reassembly.reassembly.executor import TaskSettings, reassemble_partition
    from dicom_reassembly.reassembly.writes import WritePolicy

    _, item, _ = _delivery(tmp_path, "693_J2KI.dcm")
    task = TaskSettings("r", WritePolicy(out=str(tmp_path / "out"), upload_threads=1))
    first = [row_dict(r) for r in reassemble_partition([dict(item)], task)]
    again = [row_dict(r) for r in reassemble_partition([dict(item)], task)]
    assert [r["status"] for r in first + again] == ["written", "skipped_existing"]
    for r in first + again:
        assert r["reason"] == "j2k_precision_differs: codestream precision 16 but BitsStored 14, written as is"
    assert dcmftest_ok(first[0]["output_uri"])


def test_uid_command_prints_each_note_as_one_warning_line(tmp_path: Path) -> None:
    root, _, uid = _delivery(tmp_path, "J2K_pixelrep_mismatch.dcm")
    r = subprocess.run([CLI, "uid", uid, "--text", f"{root}/text", "--images", f"{root}/images",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "warning: j2k_signedness_differs: codestream samples unsigned but PixelRepresentation 1, written as is"]
    assert dcmftest_ok(str(tmp_path / "out" / f"{uid}.dcm"))
