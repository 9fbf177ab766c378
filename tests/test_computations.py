"""Per-series computations: series_summary on real DICOM files (native, J2K, RLE colour multi-frame), local and S3."""

from __future__ import annotations

import copy
import io
import json
import os
from datetime import datetime

import numpy as np
import pydicom
import pytest
from matplotlib import image as mpimg
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_reassembly.records.computations import (
    COMPUTATIONS,
    COMPUTATIONS_NAMES,
    computations_schema,
    register,
    run_computation,
    run_computations_partition,
)

CT_SERIES = "1.2.826.0.1.3680043.8.498.1001"
MR_SERIES = "1.2.826.0.1.3680043.8.498.1002"


def bundled_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} is not bundled"
    return str(path)


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_instance(ds: pydicom.Dataset, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    ds.save_as(path, enforce_file_format=True)
    return path


def with_identity(ds: pydicom.Dataset, series_uid: str, instance_number: int | None) -> pydicom.Dataset:
    out = copy.deepcopy(ds)
    out.SeriesInstanceUID = series_uid
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    if instance_number is None:
        del out.InstanceNumber
    else:
        out.InstanceNumber = instance_number
    return out


@pytest.fixture()
def ct_series(tmp_path) -> dict:
    """Three CT_small copies: distinct pixels (flips + offsets), InstanceNumber out of file-name order."""
    base = pydicom.dcmread(bundled_file("CT_small.dcm"))
    orig = base.pixel_array.astype(np.int32)
    variants = {1: orig + 10, 2: np.fliplr(orig) - 300, 3: np.flipud(orig) + 1000}
    folder = str(tmp_path / "ct")
    os.makedirs(folder)
    paths = {}
    for name, number in (("a.dcm", 3), ("b.dcm", 1), ("c.dcm", 2)):
        ds = with_identity(base, CT_SERIES, number)
        ds.PixelData = variants[number].astype(np.int16).tobytes()
        paths[number] = write_instance(ds, folder, name)
    return {"paths": paths, "uris": [os.path.join(folder, n) for n in ("a.dcm", "b.dcm", "c.dcm")]}


def expected_stats(paths: list[str]) -> dict:
    """Statistics computed independently: every pixel of every written file, decoded by pydicom, in numpy."""
    values = np.concatenate([pydicom.dcmread(p).pixel_array.astype(np.float64).ravel() for p in paths])
    return {"count": values.size, "min": values.min(), "max": values.max(), "mean": values.mean(), "std": values.std()}


def assert_stats(got: dict, want: dict) -> None:
    assert got["count"] == want["count"]
    assert got["min"] == want["min"]
    assert got["max"] == want["max"]
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-12, abs=1e-9)
    assert got["std"] == pytest.approx(want["std"], rel=1e-10)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_series_summary_native_ct(ct_series: dict, tmp_path) -> None:
    out = str(tmp_path / "out")
    result = run_computation("series_summary", CT_SERIES, ct_series["uris"], out)

    assert result.status == "done", result.detail
    assert result.detail is None
    assert result.output_uri == os.path.join(out, "_computations", "series_summary", CT_SERIES, "summary.json")
    assert result.started_at <= result.finished_at
    summary = read_json(result.output_uri)
    assert summary["instances"] == 3
    assert summary["frames"] == 3
    assert summary["dtype"] == "int16"
    assert summary["frame_shape"] == [128, 128]
    assert summary["modality"] == "CT"
    assert_stats(summary["pixels"], expected_stats(list(ct_series["paths"].values())))

    # The preview is InstanceNumber 2 (file c.dcm, the left-right flip), not the middle file name.
    assert summary["preview"]["source_uri"] == ct_series["paths"][2]
    png_path = summary["preview"]["uri"]
    assert os.path.dirname(png_path) == os.path.dirname(result.output_uri)
    with open(png_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    png = mpimg.imread(png_path)
    assert png.shape[:2] == (128, 128)
    gray = png[..., 0]
    arrays = {n: pydicom.dcmread(p).pixel_array for n, p in ct_series["paths"].items()}
    assert correlation(gray, arrays[2]) > 0.9
    assert correlation(gray, arrays[2]) > correlation(gray, arrays[1]) + 0.2
    assert correlation(gray, arrays[2]) > correlation(gray, arrays[3]) + 0.2
    # Windowed to the 1st-99th percentile: both ends of the grey scale are used.
    assert gray.min() == pytest.approx(0.0, abs=1 / 255)
    assert gray.max() == pytest.approx(1.0, abs=1 / 255)


def test_series_summary_j2k_and_native_mixed(tmp_path) -> None:
    """A JPEG 2000 instance (decoded by pylibjpeg-openjpeg) and a native one in one series."""
    folder = str(tmp_path / "mr")
    os.makedirs(folder)
    j2k = with_identity(pydicom.dcmread(bundled_file("MR_small_jp2klossless.dcm")), MR_SERIES, 1)
    assert j2k.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    native = with_identity(pydicom.dcmread(bundled_file("MR_small.dcm")), MR_SERIES, None)
    native.PixelData = (native.pixel_array.astype(np.int32) + 7).astype(np.int16).tobytes()
    paths = [write_instance(j2k, folder, "j2k.dcm"), write_instance(native, folder, "native.dcm")]

    result = run_computation("series_summary", MR_SERIES, paths, str(tmp_path / "out"))

    assert result.status == "done", result.detail
    summary = read_json(result.output_uri)
    assert summary["instances"] == 2
    assert summary["frame_shape"] == [64, 64]
    assert_stats(summary["pixels"], expected_stats(paths))
    # With two instances the middle is the second in order; the one without InstanceNumber sorts last.
    assert summary["preview"]["source_uri"] == paths[1]
    assert mpimg.imread(summary["preview"]["uri"]).shape[:2] == (64, 64)


def test_series_summary_colour_multiframe(tmp_path) -> None:
    """RLE RGB with two frames: frames counted, stats over both frames, preview is frame 1 in colour."""
    path = bundled_file("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(path)
    result = run_computation("series_summary", str(ds.SeriesInstanceUID), [path], str(tmp_path / "out"))

    assert result.status == "done", result.detail
    summary = read_json(result.output_uri)
    assert summary["instances"] == 1
    assert summary["frames"] == 2
    assert summary["frame_shape"] == [100, 100, 3]
    assert summary["preview"]["frame_index"] == 1
    assert_stats(summary["pixels"], expected_stats([path]))
    png = mpimg.imread(summary["preview"]["uri"])
    assert png.shape[:2] == (100, 100)
    frame = pydicom.dcmread(path).pixel_array[1]
    for channel in range(3):
        if frame[..., channel].std() > 0:
            assert correlation(png[..., channel], frame[..., channel]) > 0.9
    assert not np.allclose(png[..., 0], png[..., 1]) or not np.allclose(png[..., 1], png[..., 2])


def test_failures_become_rows(ct_series: dict, tmp_path) -> None:
    out = str(tmp_path / "out")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 10)

    unreadable = run_computation("series_summary", CT_SERIES, [*ct_series["uris"], str(junk)], out)
    assert unreadable.status == "failed"
    assert unreadable.output_uri is None
    assert unreadable.detail.startswith("unreadable_dicom")
    assert str(junk) in unreadable.detail
    assert "\n" not in unreadable.detail

    missing = run_computation("series_summary", CT_SERIES, [str(tmp_path / "nope.dcm")], out)
    assert (missing.status, missing.detail.split(":")[0]) == ("failed", "not_found")

    other = run_computation("series_summary", MR_SERIES, ct_series["uris"], out)
    assert other.status == "failed" and other.detail.startswith("series_mismatch")

    empty = run_computation("series_summary", CT_SERIES, [], out)
    assert empty.status == "failed" and empty.detail.startswith("no_instances")

    unknown = run_computation("segmentation_v0", CT_SERIES, ct_series["uris"], out)
    assert unknown.status == "failed" and "unknown_computation" in unknown.detail

    escape = run_computation("series_summary", "../../etc", ct_series["uris"], out)
    assert escape.status == "failed" and escape.detail.startswith("bad_series_uid")
    assert not os.path.exists(out), "no failed computation may leave outputs behind"


def test_registry_and_partition_rows(ct_series: dict, tmp_path) -> None:
    calls = []

    @register("count_only")
    def count_only(series_uid: str, uris: list[str], out_prefix: str) -> str:
        calls.append((series_uid, len(uris)))
        if len(uris) > 2:
            raise RuntimeError("too many\nlines")
        return f"{out_prefix}/{series_uid}.txt"

    try:
        rows = [(CT_SERIES, ct_series["uris"]), (MR_SERIES, ct_series["uris"][:1])]
        out = list(run_computations_partition(iter(rows), ["count_only", "series_summary"], str(tmp_path), "run-1"))
    finally:
        COMPUTATIONS.pop("count_only")

    assert calls == [(CT_SERIES, 3), (MR_SERIES, 1)]
    assert len(out) == 4
    recs = [dict(zip(COMPUTATIONS_NAMES, r, strict=True)) for r in out]
    assert [(r["series_instance_uid"], r["computation"], r["status"]) for r in recs] == [
        (CT_SERIES, "count_only", "failed"), (CT_SERIES, "series_summary", "done"),
        (MR_SERIES, "count_only", "done"), (MR_SERIES, "series_summary", "failed"),
    ]
    assert recs[0]["detail"] == "RuntimeError: too many lines"
    assert recs[2]["output_uri"] == f"{tmp_path}/{MR_SERIES}.txt"
    assert all(r["run_id"] == "run-1" and isinstance(r["started_at"], datetime) for r in recs)

    # Tuples fit the Spark schema: names in order, and each value is None or of the field's Python type.
    from pyspark.sql import types as T

    schema = computations_schema()
    assert schema.names == COMPUTATIONS_NAMES
    python_type = {T.StringType(): str, T.TimestampType(): datetime}
    for row in out:
        for value, fld in zip(row, schema.fields, strict=True):
            assert value is None or isinstance(value, python_type[fld.dataType]), (fld.name, value)


def test_series_summary_on_s3(ct_series: dict, s3) -> None:
    """Instances read from and outputs written to S3 (moto server) through the default AWS chain: computations read
    our own outputs, so they are given no archive access (the input credentials never reach them)."""
    bucket = "computations-test"
    s3.create_bucket(Bucket=bucket)
    uris = []
    for path in ct_series["uris"]:
        key = f"dcm/{os.path.basename(path)}"
        s3.upload_file(path, bucket, key)
        uris.append(f"s3://{bucket}/{key}")
    result = run_computation("series_summary", CT_SERIES, uris, f"s3://{bucket}/out")

    assert result.status == "done", result.detail
    prefix = f"out/_computations/series_summary/{CT_SERIES}"
    assert result.output_uri == f"s3://{bucket}/{prefix}/summary.json"
    summary = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/summary.json")["Body"].read())
    assert summary["instances"] == 3
    assert_stats(summary["pixels"], expected_stats(list(ct_series["paths"].values())))
    preview = s3.get_object(Bucket=bucket, Key=f"{prefix}/preview.png")
    assert preview["ContentType"] == "image/png"
    png = mpimg.imread(io.BytesIO(preview["Body"].read()), format="png")
    assert png.shape[:2] == (128, 128)

    missing = run_computation("series_summary", CT_SERIES, [f"s3://{bucket}/dcm/absent.dcm"], f"s3://{bucket}/out2")
    assert missing.status == "failed" and missing.detail.startswith("not_found")
