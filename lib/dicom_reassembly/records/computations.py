"""Per-series computations on the reassembled (selected) instances, each traced as a ``computations`` table row.

A computation is a function ``(series_uid, instance_uris, out_prefix) -> output_uri`` registered by name;
it raises on failure. ``run_computation`` turns any failure into a ``failed`` result with a one-line
detail, so one bad series never stops the others. Outputs go under
``{out_prefix}/_computations/{computation}/{series_uid}/``; a later step (segmentation, say) registers
itself the same way and lands in the same table.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import HeaderError, NotFoundError, PixelError, ReassemblyError, StorageError
from ..io import clients, reads, writes
from ..io import uris as io_uris

log = logging.getLogger(__name__)

ComputationFn = Callable[[str, list[str], str], str]
COMPUTATIONS: dict[str, ComputationFn] = {}

COMPUTATIONS_FIELDS: list[tuple[str, str]] = [
    ("run_id", "string"), ("series_instance_uid", "string"), ("computation", "string"), ("status", "string"),
    ("output_uri", "string"), ("detail", "string"), ("started_at", "timestamp"), ("finished_at", "timestamp"),
]
COMPUTATIONS_NAMES = [n for n, _ in COMPUTATIONS_FIELDS]

# A DICOM UID (PS3.5 9.1); it becomes a path segment, so nothing else may pass.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DETAIL_MAX = 500


@dataclass(frozen=True)
class ComputationResult:
    """The outcome of one computation on one series."""

    series_uid: str
    computation: str
    status: str  # 'done' | 'failed'
    output_uri: str | None
    detail: str | None
    started_at: datetime
    finished_at: datetime


def register(name: str) -> Callable[[ComputationFn], ComputationFn]:
    """Register ``fn`` under ``name`` in COMPUTATIONS."""
    def deco(fn: ComputationFn) -> ComputationFn:
        COMPUTATIONS[name] = fn
        return fn
    return deco


def output_folder(out_prefix: str, computation: str, series_uid: str) -> str:
    """Where a computation writes its outputs for one series."""
    return io_uris.join_uri(out_prefix, "_computations", computation, series_uid)


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, ReassemblyError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def run_computation(name: str, series_uid: str, instance_uris: list[str], out_prefix: str) -> ComputationResult:
    """Run computation ``name`` on one series. Never raises: a failure is a ``failed`` result with its reason."""
    started = datetime.now(timezone.utc)
    output_uri: str | None = None
    try:
        fn = COMPUTATIONS.get(name)
        if fn is None:
            raise ReassemblyError("unknown_computation", f"{name!r}; known: {', '.join(sorted(COMPUTATIONS))}")
        if not isinstance(series_uid, str) or not _UID.match(series_uid) or len(series_uid) > 64:
            raise HeaderError("bad_series_uid", f"{series_uid!r} is not a DICOM UID")
        output_uri = fn(series_uid, list(instance_uris or []), out_prefix)
        status, detail = "done", None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a table row, by design
        status, detail, output_uri = "failed", _one_line(exc), None
        log.warning("computation %s failed on series %s: %s", name, series_uid, detail)
    return ComputationResult(series_uid, name, status, output_uri, detail, started, datetime.now(timezone.utc))


def run_computations_partition(rows: Iterable[Any], names: list[str], out_prefix: str, run_id: str) -> Iterator[tuple]:
    """For ``mapPartitions``: (series_uid, [instance uris]) rows in, computations-table tuples out."""
    for series_uid, uris in rows:
        for name in names:
            r = run_computation(name, series_uid, list(uris or []), out_prefix)
            yield (run_id, r.series_uid, r.computation, r.status, r.output_uri, r.detail, r.started_at, r.finished_at)


def computations_schema() -> Any:
    """The computations table's Spark schema (COMPUTATIONS_FIELDS order)."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "timestamp": T.TimestampType()}
    return T.StructType([T.StructField(n, kinds[t], True) for n, t in COMPUTATIONS_FIELDS])


# ---------------------------------------------------------------------------------------------------------------
# series_summary


def read_instance(uri: str) -> Any:
    """Read one reassembled .dcm (local or S3) into a pydicom Dataset.

    S3 reads go through the default client, the one outputs are written with: the archive-reading
    client may carry the orchestrator's input credentials, which need not reach the output bucket.
    """
    import pydicom

    if io_uris.is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = io_uris.split_s3(uri)
        try:
            data = clients.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            raise clients.translate_client_error(exc, uri) from exc
        except BotoCoreError as exc:
            raise StorageError("s3_unreachable", type(exc).__name__, uri=uri) from exc
    else:
        data = reads.read_bytes(uri)
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad input
        raise HeaderError("unreadable_dicom", _one_line(exc), uri=uri) from exc


def _pixels(ds: Any, uri: str) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelError("no_pixel_data", "instance has no pixel data", uri=uri)
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        raise PixelError("pixel_decode_failed", _one_line(exc), uri=uri) from exc


def _frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _frame_shape(ds: Any, arr: np.ndarray) -> tuple[int, ...]:
    return tuple(arr.shape[1:]) if _frames(ds) > 1 else tuple(arr.shape)


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sort_key(ds: Any) -> tuple:
    """InstanceNumber, then SliceLocation, then ImagePositionPatient z, then SOPInstanceUID; missing sorts last."""
    def present(v: float | None) -> tuple[int, float]:
        return (0, v) if v is not None else (1, 0.0)

    ipp = ds.get("ImagePositionPatient")
    z = _float_or_none(ipp[2]) if ipp is not None and len(ipp) == 3 else None
    return (present(_float_or_none(ds.get("InstanceNumber"))), present(_float_or_none(ds.get("SliceLocation"))),
            present(z), str(ds.get("SOPInstanceUID", "")))


class RunningStats:
    """Min, max, mean and population std over many arrays, without keeping them (Chan et al. merge, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min: float | None = None
        self.max: float | None = None

    def add(self, arr: np.ndarray) -> None:
        """Fold one array's values into the statistics."""
        n_b = int(arr.size)
        if n_b == 0:
            return
        values = arr.astype(np.float64, copy=False).ravel()
        mean_b = float(values.mean())
        m2_b = float(np.square(values - mean_b).sum())
        lo, hi = float(values.min()), float(values.max())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def as_dict(self) -> dict[str, Any]:
        """The statistics for summary.json."""
        std = (self.m2 / self.n) ** 0.5 if self.n else None
        return {"count": self.n, "min": self.min, "max": self.max, "mean": self.mean if self.n else None, "std": std}


def render_preview_png(frame: np.ndarray, photometric: str = "MONOCHROME2") -> tuple[bytes, list[float]]:
    """PNG bytes of one frame windowed to its 1st-99th percentile, and the window used.

    Colour frames (rows, cols, 3) are shown as RGB; MONOCHROME1 is inverted so that it reads like MONOCHROME2.
    """
    from matplotlib import image as mpimg  # imsave needs no pyplot and no GUI backend

    values = frame.astype(np.float64, copy=False)
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    buf = io.BytesIO()
    if scaled.ndim == 3 and scaled.shape[-1] in (3, 4):
        mpimg.imsave(buf, scaled[..., :3], format="png")
    elif scaled.ndim == 2:
        mpimg.imsave(buf, scaled, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    else:
        raise PixelError("unsupported_frame_shape", f"cannot render a frame of shape {tuple(frame.shape)}")
    return buf.getvalue(), [lo, hi]


@register("series_summary")
def series_summary(series_uid: str, instance_uris: list[str], out_prefix: str) -> str:
    """Instance and frame counts, pixel statistics, and a PNG of the middle slice; returns the summary.json URI.

    Statistics are over the decoded stored values (before any modality LUT), every frame of every instance.
    Only one decoded instance is held at a time; the middle one is read again for the preview.
    """
    if not instance_uris:
        raise NotFoundError("no_instances", f"series {series_uid} has no instances")
    stats = RunningStats()
    entries: list[tuple[tuple, str, int]] = []  # (sort key, uri, frames)
    dtypes: set[str] = set()
    shapes: set[tuple[int, ...]] = set()
    modality = None
    for uri in instance_uris:
        ds = read_instance(uri)
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid != series_uid:
            raise HeaderError("series_mismatch", f"instance belongs to series {uid or '(none)'}", uri=uri)
        arr = _pixels(ds, uri)
        for part in (arr if _frames(ds) > 1 else [arr]):  # per frame, so float64 temporaries stay one frame big
            stats.add(part)
        dtypes.add(str(arr.dtype))
        shapes.add(_frame_shape(ds, arr))
        entries.append((_sort_key(ds), uri, _frames(ds)))
        modality = modality or ds.get("Modality")
        del ds, arr  # keep one decoded instance alive at a time

    entries.sort(key=lambda e: e[0])
    _, middle_uri, middle_frames = entries[len(entries) // 2]
    ds = read_instance(middle_uri)
    arr = _pixels(ds, middle_uri)
    frame_index = middle_frames // 2
    frame = arr[frame_index] if _frames(ds) > 1 else arr
    png, window = render_preview_png(frame, str(ds.get("PhotometricInterpretation", "MONOCHROME2")))

    folder = output_folder(out_prefix, "series_summary", series_uid)
    preview_uri = io_uris.join_uri(folder, "preview.png")
    summary_uri = io_uris.join_uri(folder, "summary.json")
    summary = {
        "series_instance_uid": series_uid,
        "computation": "series_summary",
        "modality": str(modality) if modality else None,
        "instances": len(entries),
        "frames": sum(e[2] for e in entries),
        "pixels": stats.as_dict(),
        "dtype": ",".join(sorted(dtypes)),
        "frame_shape": list(_frame_shape(ds, arr)),
        "mixed_frame_shapes": len(shapes) > 1,
        "preview": {
            "uri": preview_uri, "sop_instance_uid": str(ds.get("SOPInstanceUID", "")), "source_uri": middle_uri,
            "instance_index": len(entries) // 2, "frame_index": frame_index if _frames(ds) > 1 else 0,
            "window": window,
        },
    }
    # summary.json goes last: its presence means the outputs are complete.
    writes.write_bytes(preview_uri, png, writes.WriteOptions(content_type="image/png"))
    writes.write_bytes(summary_uri, json.dumps(summary, indent=2).encode("utf-8"),
                        writes.WriteOptions(content_type="application/json"))
    return summary_uri
