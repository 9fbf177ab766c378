"""Stored objects as DICOMweb answers: streamed bytes, multipart bodies, headers as DICOM JSON, rendered PNG.

Objects are read through ``io.reads.open_read`` (local file or one S3 GET) and streamed in chunks, never
held whole, except where the answer needs the pixels decoded (rendered PNG) or the header parsed
(metadata, a single tag): the header alone is read for those when the tag sits before Pixel Data.
"""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from ..io import listing, reads
from ..io import uris as io_uris

CHUNK = 1 << 20
HEADER_PROBE = 64 * 1024
PIXEL_DATA = 0x7FE00010


def stream_object(uri: str) -> Iterator[bytes]:
    """The object's bytes in chunks (one GET on S3)."""
    with reads.open_read(uri) as stream:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                return
            yield chunk


def multipart_boundary() -> str:
    return f"dcmreasm-{uuid.uuid4().hex}"


def stream_multipart(uris: Iterable[str], boundary: str, media_type: str = "application/dicom") -> Iterator[bytes]:
    """A multipart/related body (PS3.18 8.7.1) over objects, streamed one after another."""
    for uri in uris:
        yield f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii")
        yield from stream_object(uri)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _parse(data: bytes, stop_before_pixels: bool) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)


def read_header(uri: str) -> Dataset:
    """The dataset without Pixel Data and what follows it, reading only a prefix of the object when it can."""
    if not io_uris.is_s3(uri):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(uri, stop_before_pixels=True)
    size = HEADER_PROBE
    info = listing.head(uri)
    total = info.size if info else 0
    while True:
        data = reads.read_range(uri, 0, min(size, total))
        try:
            ds = _parse(data, stop_before_pixels=True)
            if len(data) == total or PIXEL_DATA in ds or _reached_pixels(data):
                return ds
        except Exception:  # a cut-off prefix: read more  # noqa: BLE001
            if len(data) >= total:
                raise
        size *= 4


def _reached_pixels(data: bytes) -> bool:
    """True when the prefix holds the Pixel Data tag (explicit or implicit VR little endian)."""
    return b"\xe0\x7f\x10\x00" in data


def read_object(uri: str) -> Dataset:
    """The whole dataset (for rendering)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if io_uris.is_s3(uri):
            return _parse(reads.read_bytes(uri), stop_before_pixels=False)
        return dcmread(uri)


def element_json(ds: Dataset, tag: int) -> dict[str, Any] | None:
    """One element as DICOM JSON ``{"GGGGEEEE": {...}}``, or None when the dataset lacks it."""
    elem = ds.get(tag)
    if elem is None and tag >> 16 == 0x0002:
        elem = ds.file_meta.get(tag)
    if elem is None:
        return None
    holder = Dataset()
    holder.add(elem)
    return holder.to_json_dict()


def metadata_json(ds: Dataset) -> dict[str, Any]:
    """The header as DICOM JSON (PS3.18 F.2), Pixel Data left out (it is fetched with the object)."""
    body = Dataset()
    for elem in ds:
        if elem.tag != PIXEL_DATA:
            body.add(elem)
    return body.to_json_dict(bulk_data_threshold=1 << 62)


class RenderError(ValueError):
    """The object cannot be rendered (no pixels, an unsupported photometric interpretation, a bad window)."""


def parse_window(text: str | None) -> tuple[float, float] | None:
    """PS3.18 8.3.5.1.4 ``window=center,width[,function]``; only the linear function is offered."""
    if not text:
        return None
    parts = text.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as exc:
        raise RenderError(f"window={text[:40]!r} is not center,width[,function]") from exc
    if len(parts) > 2 and parts[2].strip().lower() not in ("linear", ""):
        raise RenderError(f"window function {parts[2][:20]!r} is not supported (linear only)")
    if width < 1:
        raise RenderError("window width must be at least 1")
    return center, width


def render_png(ds: Dataset, window: tuple[float, float] | None = None, frame: int = 1) -> bytes:
    """An 8-bit PNG of one frame: modality LUT, then the query's window or the header's VOI, else min-max."""
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    if "PixelData" not in ds:
        raise RenderError("the object has no Pixel Data")
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= frame <= frames:
        raise RenderError(f"frame {frame} is outside 1-{frames}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # a codec pydicom lacks, or damaged pixels
        raise RenderError(f"pixels cannot be decoded: {type(exc).__name__}") from exc
    if frames > 1:
        pixels = pixels[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        return _png(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB"))
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if window is not None:
        center, width = window
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        out = np.clip((values - low) / max(high - low, 1e-9), 0, 1) * 255.0
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        voi = apply_voi_lut(values, ds, index=0).astype(np.float64)
        out = _stretch(voi)
    else:
        out = _stretch(values)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return _png(Image.fromarray(np.rint(out).astype(np.uint8), mode="L"))


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo) * 255.0


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
