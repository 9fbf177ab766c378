"""Hypothesis strategies for pixel payloads: native bytes and real J2K codestreams, right and wrong.

Each payload comes with the header geometry it is drawn for and its ``intent``
under the issue-16 rules: ``valid`` (must be written, and decode to
``expected`` when that is given), ``invalid`` (must be ``invalid_pixels``) or
``any`` (only the invariants hold).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np
from hypothesis import strategies as st
from tar_layout import ShortRepr


@dataclass(frozen=True)
class Geometry:
    """What a header says about its pixels."""

    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar: int = 0

    def native_length(self) -> int:
        """Bytes native Pixel Data needs; the 4:2:2 interpretations carry 2 samples a pixel (PS3.3 C.7.6.3.1.2)."""
        samples = 2 if self.photometric.endswith("_422") else self.samples
        n = self.rows * self.columns * samples * self.frames
        return (n + 7) // 8 if self.bits_allocated == 1 else n * (self.bits_allocated // 8)


@dataclass(eq=False)
class Pixels(ShortRepr):
    """A pixel member's bytes, what it should become and the array it must decode to (when exact)."""

    payload: bytes
    label: str
    intent: str
    expected: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Pixels({self.label}, {len(self.payload)}B, {self.intent})"


def _rng(*key: Any) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def native_array(g: Geometry, seed: int) -> np.ndarray:
    """Random pixels within BitsStored, shaped (frames, rows, columns[, samples])."""
    rng = _rng(g, seed)
    shape = (g.frames, g.rows, g.columns) + ((3,) if g.samples == 3 else ())
    if g.bits_allocated == 1:
        return rng.integers(0, 2, size=shape).astype(np.uint8)
    if g.samples == 3:
        return rng.integers(0, 256, size=shape).astype(np.uint8)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (g.bits_allocated, g.signed)]
    lo, hi = (-(1 << (g.bits_stored - 1)), (1 << (g.bits_stored - 1)) - 1) if g.signed else (0, (1 << g.bits_stored) - 1)
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


def native_payload(g: Geometry, arr: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(native bytes, the array pydicom decodes them to with as_rgb=False)."""
    if g.bits_allocated == 1:
        return np.packbits(arr.ravel(), bitorder="little").tobytes(), arr
    if g.photometric == "YBR_FULL_422":
        y, cb, cr = arr[..., 0], arr[..., 1][..., 0::2], arr[..., 2][..., 0::2]
        data = np.stack([y[..., 0::2], y[..., 1::2], cb, cr], axis=-1).tobytes()
        up = arr.copy()
        up[..., 1] = np.repeat(cb, 2, axis=-1)
        up[..., 2] = np.repeat(cr, 2, axis=-1)
        return data, up
    if g.samples == 3 and g.planar == 1:
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2)).tobytes(), arr
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes(), arr


def _squeeze(arr: np.ndarray, frames: int) -> np.ndarray:
    return arr[0] if frames == 1 else arr


@st.composite
def native_geometries(draw: st.DrawFn) -> Geometry:
    kind = draw(st.sampled_from(("grey", "grey", "colour", "ybr422", "bitmap")))
    rows, cols, frames = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    if kind == "grey":
        ba = draw(st.sampled_from((8, 16)))
        return Geometry(rows, cols, 1, frames, ba, draw(st.integers(ba - 4, ba)), draw(st.booleans()),
                        draw(st.sampled_from(("MONOCHROME2", "MONOCHROME1"))))
    if kind == "colour":
        return Geometry(rows, cols, 3, frames, 8, 8, False, draw(st.sampled_from(("RGB", "YBR_FULL"))),
                        draw(st.integers(0, 1)))
    if kind == "ybr422":
        return Geometry(rows, 2 * draw(st.integers(1, 3)), 3, frames, 8, 8, False, "YBR_FULL_422")
    return Geometry(rows, cols, 1, frames, 1, 1, False, "MONOCHROME2")


@st.composite
def native_pixels(draw: st.DrawFn, g: Geometry, variants: bool = True) -> tuple[Pixels, Geometry]:
    """Native payloads: the exact length, an even pad, longer (kept), shorter or empty (refused), garbage."""
    exact, arr = native_payload(g, native_array(g, draw(st.integers(0, 3))))
    expected = _squeeze(arr, g.frames)
    variant = draw(st.sampled_from(("exact", "exact", "long", "short", "empty", "garbage"))) if variants else "exact"
    label = (f"native {g.rows}x{g.columns}x{g.frames} {g.photometric} {g.bits_allocated}/{g.bits_stored}"
             f"{'s' if g.signed else ''}")
    if variant == "exact":
        pad = b"\x00" if len(exact) % 2 else b""
        return Pixels(exact + pad, label, "valid", expected), g
    if variant == "long":
        extra = draw(st.binary(min_size=1, max_size=40))
        n = len(exact) + len(extra)
        # Subsampled data as long as unsubsampled data is ambiguous (readers refuse it): refused, not written.
        full = g.rows * g.columns * 3 * g.frames
        ambiguous = g.photometric == "YBR_FULL_422" and n + n % 2 == full
        return Pixels(exact + extra, f"{label} +{len(extra)}", "invalid" if ambiguous else "valid", expected), g
    if variant == "short":
        cut = draw(st.integers(1, len(exact)))
        return Pixels(exact[:-cut], f"{label} -{cut}", "invalid"), g
    if variant == "empty":
        return Pixels(b"", f"{label} empty", "invalid"), g
    return Pixels(draw(st.binary(max_size=80)), f"{label} garbage", "any"), g


@dataclass(frozen=True)
class J2kSource:
    """A small image encoded once by OpenJPEG (pylibjpeg-openjpeg); 32 is its smallest side at 6 resolutions."""

    key: str
    rows: int
    columns: int
    samples: int
    frames: int
    bits_stored: int
    signed: bool = False
    lossy: bool = False

    def geometry(self) -> Geometry:
        return Geometry(self.rows, self.columns, self.samples, self.frames, 8 if self.bits_stored <= 8 else 16,
                        self.bits_stored, self.signed, "RGB" if self.samples == 3 else "MONOCHROME2")


J2K_SOURCES = (
    J2kSource("u8", 32, 32, 1, 1, 8),
    J2kSource("u12", 40, 32, 1, 1, 12),
    J2kSource("s16", 33, 35, 1, 1, 16, signed=True),
    J2kSource("rgb8", 32, 32, 3, 1, 8),
    J2kSource("u16x2", 32, 48, 1, 2, 16),
    J2kSource("u8-lossy", 32, 32, 1, 1, 8, lossy=True),
)


@cache
def j2k_encoded(src: J2kSource, jp2: bool = False) -> tuple[tuple[bytes, ...], np.ndarray]:
    """(one codestream or JP2 file per frame, the source array), encoded once per run."""
    import openjpeg

    g = src.geometry()
    arr = native_array(g, 0)
    frames = tuple(bytes(openjpeg.encode(
        np.ascontiguousarray(frame), bits_stored=src.bits_stored, photometric_interpretation=1 if src.samples == 3 else 2,
        use_mct=False, codec_format=1 if jp2 else 0, **({"compression_ratios": [4]} if src.lossy else {})))
        for frame in arr)
    return frames, _squeeze(arr, g.frames)


@st.composite
def j2k_pixels(draw: st.DrawFn, variants: bool = True) -> tuple[Pixels, Geometry]:
    """Real J2K codestreams with matching or mismatching headers, pads, cuts, concatenation and garbage."""
    src = draw(st.sampled_from(J2K_SOURCES))
    frames, arr = j2k_encoded(src)
    g = src.geometry()
    exact_arr = None if src.lossy else arr
    joined = b"".join(frames)
    names = ["exact"]
    if variants:
        names += ["pad", "pad_each", "truncated", "trailing_garbage", "mismatch", "bits_stored_differs",
                  "sign_differs", "garbage"]
        names += ["precision_over_ba"] if src.bits_stored > 8 else []
        names += ["jp2"] if src.frames == 1 else []
    variant = draw(st.sampled_from(names))
    if variant == "exact":
        return Pixels(joined, f"j2k:{src.key}", "valid", exact_arr), g
    if variant == "jp2":
        return Pixels(j2k_encoded(src, jp2=True)[0][0], f"jp2:{src.key}", "valid", exact_arr), g
    if variant == "pad":
        pad = draw(st.sampled_from((b"\x00", b"\xff")))
        # Padding to an even length is the rule; a pad on an even codestream is not covered by it.
        fits = src.frames == 1 and len(joined) % 2 == 1
        return Pixels(joined + pad, f"j2k:{src.key}+pad{pad.hex()}", "valid" if fits else "any", exact_arr), g
    if variant == "pad_each":
        return Pixels(b"".join(f + b"\xff" * (len(f) % 2) for f in frames), f"j2k:{src.key}+pad-each", "any"), g
    if variant == "truncated":
        cut = draw(st.integers(1, len(joined) - 1))
        return Pixels(joined[:cut], f"j2k:{src.key}[:{cut}]", "any" if cut == g.native_length() else "invalid"), g
    if variant == "trailing_garbage":
        return Pixels(joined + draw(st.binary(min_size=1, max_size=16)), f"j2k:{src.key}+garbage", "any"), g
    if variant == "mismatch":
        what = draw(st.sampled_from(("rows", "columns", "samples", "frames")))
        wrong = {"rows": replace(g, rows=g.rows * 2), "columns": replace(g, columns=g.columns + 1),
                 "samples": replace(g, samples=4 - g.samples, photometric="MONOCHROME2" if g.samples == 3 else "RGB"),
                 "frames": replace(g, frames=g.frames + 1)}[what]
        return Pixels(joined, f"j2k:{src.key} under wrong {what}", "invalid"), wrong
    if variant == "precision_over_ba":
        return Pixels(joined, f"j2k:{src.key} under BitsAllocated 8", "invalid"), replace(
            g, bits_allocated=8, bits_stored=8)
    if variant == "bits_stored_differs":
        bs = draw(st.integers(1, g.bits_allocated).filter(lambda b: b != g.bits_stored))
        return Pixels(joined, f"j2k:{src.key} under BitsStored {bs}", "valid"), replace(g, bits_stored=bs)
    if variant == "sign_differs":
        return Pixels(joined, f"j2k:{src.key} under PixelRepresentation {int(not g.signed)}", "valid"), replace(
            g, signed=not g.signed)
    return Pixels(draw(st.binary(min_size=1, max_size=80)), "garbage", "any"), g
