"""Every sample instance, reassembled by the core, checked by dcmtk, dicom3tools and a pixel decode."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from helpers import dciodvfy_errors, dcmftest_ok, read_tar_member
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_reassembly.dicom import pixels
from dicom_reassembly.dicom.dicom_json import key_tags
from dicom_reassembly.dicom.part10 import assemble
from dicom_reassembly.errors import HeaderError, PixelError


def _instances(delivery: tuple[str, dict], status: str = "written") -> list[tuple[str, dict]]:
    root, expected = delivery
    return sorted((uid, inst) for uid, inst in expected["instances"].items() if inst["status"] == status)


def _members(root: str, inst: dict) -> tuple[bytes, bytes]:
    h_archive, h_member = inst["header"]
    p_archive, p_member = inst["pixels"]
    return (read_tar_member(os.path.join(root, h_archive), h_member),
            read_tar_member(os.path.join(root, p_archive), p_member))


@pytest.fixture(scope="module")
def written(sample_delivery: tuple[str, dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict]]:
    """Each sample instance reassembled once, to a file."""
    root, _ = sample_delivery
    out = tmp_path_factory.mktemp("core-out")
    done = {}
    for uid, inst in _instances(sample_delivery):
        header, payload = _members(root, inst)
        obj = assemble(header, payload, uid, inst["pixels"][1])
        path = os.path.join(out, f"{uid}.dcm")
        with open(path, "wb") as f:
            f.write(obj.tobytes())
        done[uid] = (path, inst)
    return done


# The generator makes no HTJ2K payload: no HTJ2K encoder comes with the Python packages it may use.
# tests/test_htj2k.py covers that kind with OpenJPH's encoder.
KINDS_NOT_IN_SAMPLE = {pixels.KIND_HTJ2K}


def test_sample_covers_every_payload_kind(sample_delivery: tuple[str, dict]) -> None:
    """Every kind ``pixels.classify`` returns, as the code classifies the sample's pixel members."""
    root, _ = sample_delivery
    classified: dict[str, list[str]] = {}
    for _uid, inst in _instances(sample_delivery):
        header, payload = _members(root, inst)
        tags = key_tags(json.loads(header))
        expected = pixels.native_length(tags["rows"], tags["columns"], tags.get("samples_per_pixel") or 1,
                                        tags["bits_allocated"], tags.get("number_of_frames") or 1,
                                        tags.get("photometric_interpretation"))
        found = pixels.classify(payload, expected)
        classified.setdefault(found.kind, []).append(inst["variant"])
        # The generator's own label agrees with the code's classification.
        multiframe = inst["payload"] == "multiframe-j2k"
        assert (found.kind, len(found.frames) > 1) == (("j2k", True) if multiframe else (inst["payload"], False)), inst
    assert set(classified) == set(pixels.PAYLOAD_KINDS) - KINDS_NOT_IN_SAMPLE, classified


def test_every_sample_is_part10_per_dcmtk(written: dict) -> None:
    bad = [uid for uid, (path, _) in written.items() if not dcmftest_ok(path)]
    assert not bad


def test_no_dciodvfy_error_the_source_did_not_have(written: dict) -> None:
    source_errors: dict[str, set[str]] = {}
    new = {}
    for uid, (path, inst) in written.items():
        src = inst["source"]
        if src not in source_errors:
            source_errors[src] = dciodvfy_errors(get_testdata_file(src, download=False))
        extra = dciodvfy_errors(path) - source_errors[src]
        if extra:
            new[f"{inst['variant']} {uid}"] = sorted(extra)
    assert not new, new


def test_pixels_decode_to_the_source_pixels(written: dict) -> None:
    for _uid, (path, inst) in written.items():
        ours = dcmread(path)
        source = dcmread(get_testdata_file(inst["source"], download=False))
        assert ours.file_meta.TransferSyntaxUID == inst["transfer_syntax"], inst["variant"]
        np.testing.assert_array_equal(ours.pixel_array, source.pixel_array, err_msg=inst["variant"])


def test_file_meta_identity(written: dict) -> None:
    for uid, (path, inst) in written.items():
        ds = dcmread(path)
        meta = ds.file_meta
        assert meta.MediaStorageSOPInstanceUID == uid == ds.SOPInstanceUID
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == inst["sop_class_uid"]
        assert meta.ImplementationClassUID.startswith("2.25.")
        assert meta.ImplementationVersionName
        with open(path, "rb") as f:
            head = f.read(132)
        assert head[:128] == b"\0" * 128 and head[128:] == b"DICM"


def test_reversible_codestream_with_lossy_history_is_not_called_lossless(written: dict) -> None:
    flagged = [(p, i) for p, i in written.values() if i["variant"] == "ct-j2k-lossy-flag"]
    assert flagged
    for path, _ in flagged:
        ds = dcmread(path)
        assert ds.LossyImageCompression == "01"
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"


def test_multiframe_j2k_has_one_fragment_per_frame_and_an_offset_table(written: dict) -> None:
    from pydicom.encaps import parse_basic_offsets

    frames = [(p, i) for p, i in written.values() if i["payload"] == "multiframe-j2k"]
    assert frames
    for path, inst in frames:
        ds = dcmread(path)
        from io import BytesIO

        offsets = parse_basic_offsets(BytesIO(ds.PixelData))
        assert len(offsets) == inst["frames"] > 1
        assert offsets[0] == 0 and offsets == sorted(offsets)


def test_native_vr_follows_bits_allocated(written: dict) -> None:
    for path, inst in written.values():
        if inst["payload"] != "native":
            continue
        ds = dcmread(path)
        assert ("OW" if ds.BitsAllocated > 8 else "OB") == ds["PixelData"].VR, inst["variant"]
        assert len(ds.PixelData) % 2 == 0


# Every written sample instance's bytes, pinned: a change to the encoder, the file meta or the pixel encapsulation
# changes this digest. When such a change is meant, the checks above (dcmtk, dciodvfy, decoded pixels) must still
# pass; then update the digest (the assertion message prints the new one).
SAMPLE_OUTPUT_SHA256 = "d9026697cdb5c273b3b0fd25c5caf11dbb06e0bf24807eaf49f80deeb225be81"


def test_reassembly_is_deterministic(written: dict) -> None:
    digest = hashlib.sha256()
    for uid in sorted(written):
        path, _ = written[uid]
        with open(path, "rb") as f:
            digest.update(f"{uid} {hashlib.sha256(f.read()).hexdigest()}\n".encode())
    assert digest.hexdigest() == SAMPLE_OUTPUT_SHA256, digest.hexdigest()


# ---------------------------------------------------------------- damaged cases, one reason each

DAMAGED_REASONS = {
    "malformed-json": (HeaderError, "malformed_json"),
    "uid-mismatch": (HeaderError, "uid_mismatch"),
    "missing-sop-class": (HeaderError, "missing_sop_class_uid"),
    "bulkdata-external": (HeaderError, "unresolved_bulkdata"),
    "bulkdata-other-tag": (HeaderError, "unresolved_bulkdata"),
    "empty-pixels": (PixelError, "empty_pixels"),
    "short-native": (PixelError, "native_length_mismatch"),
    # Not JPEG 2000, so it is judged as native bytes, whose length is wrong.
    "garbage": (PixelError, "native_length_mismatch"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_REASONS))
def test_damaged_instance_raises_its_reason(damaged_delivery: tuple[str, dict], case: str) -> None:
    root, expected = damaged_delivery
    matches = [(uid, i) for uid, i in expected["instances"].items() if i.get("case") == case]
    assert matches, case
    uid, inst = matches[0]
    header, payload = _members(root, inst)
    member_uid = inst["header"][1].rsplit("/", 1)[-1][: -len(".json")]
    err_type, reason = DAMAGED_REASONS[case]
    with pytest.raises(err_type) as exc:
        assemble(header, payload, member_uid, inst["pixels"][1])
    assert exc.value.reason == reason
    assert "\n" not in str(exc.value)
