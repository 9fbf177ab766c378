"""A realistic synthetic delivery for the benchmark: header archives and pixel archives, shuffled apart.

Pixels are 512x512 CT-like slices with 12 bits stored in 16: a body outline, fat, soft tissue, lungs or organs, a
spine and the table, smoothed and with noise, so that lossless JPEG 2000 compresses them about as much as real CT.
A small pool of distinct images is built (and encoded) once and reused, which keeps generation fast; the headers are
all distinct (see ``headers``). ``delivery.json`` records where every member went, for the baselines and the report.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import tarfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.headers import HeaderFactory, InstanceSpec, plan_instances

TAR_MTIME = 1_704_067_200  # fixed, so a delivery is byte-identical across runs
INDEX_NAME = "delivery.json"


@dataclass(frozen=True)
class DeliveryParams:
    """What to generate. ``matrix`` is the image size: 512 for the benchmark, smaller for lookup deliveries."""

    instances: int = 2000
    per_archive: int = 50
    seed: int = 20241121
    j2k_fraction: float = 0.5
    pool: int = 8
    matrix: int = 512

    @property
    def archives(self) -> int:
        """Archives per role (header archives, and as many pixel archives)."""
        return math.ceil(self.instances / self.per_archive)


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 box blur, edges clamped: softens the phantom's edges the way a reconstruction kernel does."""
    p = np.pad(img, 1, mode="edge")
    return sum(p[1 + dy: 1 + dy + img.shape[0], 1 + dx: 1 + dx + img.shape[1]]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0


def phantom(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """One CT-like axial slice as stored values (HU + 1024, 12 bits in uint16)."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = (xx - c) / c, (yy - c) / c
    hu = np.full((size, size), -1000.0, np.float32)
    a, b = rng.uniform(0.72, 0.9), rng.uniform(0.52, 0.68)
    cx, cy = rng.uniform(-0.03, 0.03), rng.uniform(-0.06, 0.02)

    def ellipse(ex: float, ey: float, rx: float, ry: float) -> np.ndarray:
        return ((x - ex) / rx) ** 2 + ((y - ey) / ry) ** 2 <= 1.0

    hu[ellipse(cx, cy, a, b)] = -95.0  # subcutaneous fat
    inner = ellipse(cx, cy, a - 0.07, b - 0.07)
    hu[inner] = (40.0 + 12.0 * np.sin(3.0 * x + rng.uniform(0, 6)) * np.cos(2.0 * y))[inner]
    if rng.random() < 0.5:  # chest: two lungs with vessels
        for side in (-1, 1):
            lung = ellipse(cx + side * 0.36 * a, cy - 0.05, 0.27 * a, 0.42 * b)
            hu[lung] = -860.0 + 30.0 * np.cos(9.0 * y[lung])
            for _ in range(int(rng.integers(6, 14))):
                vx, vy = cx + side * 0.36 * a + rng.uniform(-0.18, 0.18) * a, cy + rng.uniform(-0.3, 0.25) * b
                hu[ellipse(vx, vy, rng.uniform(0.01, 0.025), rng.uniform(0.01, 0.025))] = 45.0
        hu[ellipse(cx, cy - 0.05, 0.16, 0.13)] = 45.0  # heart
    else:  # abdomen: liver, kidneys and bowel loops
        hu[ellipse(cx - 0.35 * a, cy - 0.1, 0.3 * a, 0.35 * b)] = 62.0
        for side in (-1, 1):
            hu[ellipse(cx + side * 0.32 * a, cy + 0.3 * b, 0.1, 0.14)] = 150.0
        for _ in range(int(rng.integers(4, 9))):
            hu[ellipse(cx + rng.uniform(-0.4, 0.4) * a, cy + rng.uniform(-0.4, 0.2) * b,
                       rng.uniform(0.03, 0.08), rng.uniform(0.03, 0.08))] = rng.choice((-700.0, 20.0, 35.0))
    hu[ellipse(cx, cy + 0.08, 0.045, 0.045)] = 220.0  # aorta with contrast
    spine_y = cy + b - 0.2
    hu[ellipse(cx, spine_y, 0.09, 0.085)] = 900.0
    hu[ellipse(cx, spine_y, 0.06, 0.055)] = 280.0
    couch = (y > cy + b + 0.08) & (y < cy + b + 0.12) & (np.abs(x) < 0.95)
    hu[couch] = 120.0
    hu = _blur(_blur(hu))
    hu += rng.normal(0.0, rng.uniform(8.0, 20.0), hu.shape).astype(np.float32)
    return np.clip(np.rint(hu + 1024.0), 0, 4095).astype("<u2")


def build_pixel_pool(seed: int, pool: int, matrix: int = 512) -> dict[str, list[bytes]]:
    """``pool`` native payloads and ``pool`` lossless J2K codestreams of other, similar slices."""
    from openjpeg.utils import encode_array

    rng = np.random.default_rng(seed)
    native = [phantom(rng, matrix).tobytes() for _ in range(pool)]
    j2k = [bytes(encode_array(phantom(rng, matrix), bits_stored=12, photometric_interpretation=2, use_mct=False))
           for _ in range(pool)]
    return {"native": native, "j2k": j2k}


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> dict[str, tuple[int, int]]:
    """Write one uncompressed tar; return each member's (data offset, size) as read back by tarfile."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
            info.uid = info.gid = 1000
            info.uname = info.gname = "partner"
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def write_delivery(root: str, params: DeliveryParams, pool: dict[str, list[bytes]] | None = None) -> dict[str, Any]:
    """Generate ``root/text/*.tar``, ``root/images/*.tar`` and ``root/delivery.json``; return the index.

    Instances are dealt to header archives and to pixel archives by two independent shuffles, so the two halves of
    an instance almost never share an archive number, as in real split deliveries.
    """
    if params.instances < 1 or params.per_archive < 1:
        raise ValueError("instances and per_archive must be positive")
    pool = pool or build_pixel_pool(params.seed, params.pool, params.matrix)
    sizes = {k: len(v) for k, v in pool.items()}
    specs = plan_instances(params.instances, params.seed, params.j2k_fraction, sizes)
    factory = HeaderFactory(params.seed, params.matrix)
    headers = {s.uid: factory.header(s) for s in specs}
    for sub in ("text", "images"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        os.makedirs(os.path.join(root, sub))
    where: dict[str, dict[str, Any]] = {s.uid: {} for s in specs}
    archives: dict[str, list[dict[str, Any]]] = {"text": [], "images": []}
    for role, ext in (("text", ".json"), ("images", ".j2c")):
        order = list(specs)
        random.Random(f"{role}:{params.seed}").shuffle(order)
        for a in range(params.archives):
            chunk = order[a * params.per_archive: (a + 1) * params.per_archive]
            name = f"{role}-{a:05d}.tar"
            path = os.path.join(root, role, name)
            members = [(f"{s.uid}{ext}", headers[s.uid] if role == "text" else _payload(pool, s)) for s in chunk]
            offsets = _write_tar(path, members)
            archives[role].append({"name": name, "size": os.path.getsize(path), "members": len(members)})
            prefix = "header" if role == "text" else "pixel"
            for s in chunk:
                off, size = offsets[f"{s.uid}{ext}"]
                where[s.uid].update({f"{prefix}_archive": f"{role}/{name}", f"{prefix}_member": f"{s.uid}{ext}",
                                     f"{prefix}_offset": off, f"{prefix}_size": size})
    instances = [{"uid": s.uid, "modality": s.modality, "study_date": s.study_date, "pixel_kind": s.pixel_kind,
                  "series": s.series, **where[s.uid]} for s in specs]
    index = {
        "params": asdict(params),
        "instances": instances,
        "archives": archives,
        "totals": _totals(instances, archives),
    }
    with open(os.path.join(root, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=1)
    return index


def _payload(pool: dict[str, list[bytes]], spec: InstanceSpec) -> bytes:
    return pool[spec.pixel_kind][spec.pixel_image]


def _totals(instances: list[dict[str, Any]], archives: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    header_sizes = sorted(i["header_size"] for i in instances)
    n = len(instances)
    return {
        "instances": n,
        "text_archives": len(archives["text"]), "image_archives": len(archives["images"]),
        "text_archive_bytes": sum(a["size"] for a in archives["text"]),
        "image_archive_bytes": sum(a["size"] for a in archives["images"]),
        "archive_bytes": sum(a["size"] for r in archives.values() for a in r),
        "header_bytes": sum(header_sizes), "pixel_bytes": sum(i["pixel_size"] for i in instances),
        "header_size_min": header_sizes[0], "header_size_median": header_sizes[n // 2], "header_size_max": header_sizes[-1],
        "j2k_instances": sum(1 for i in instances if i["pixel_kind"] == "j2k"),
        "modalities": {m: sum(1 for i in instances if i["modality"] == m) for m in sorted({i["modality"] for i in instances})},
    }


def read_index(root: str) -> dict[str, Any]:
    """The ``delivery.json`` written by :func:`write_delivery`."""
    with open(os.path.join(root, INDEX_NAME)) as f:
        return json.load(f)


def date_threshold(index: dict[str, Any], fraction: float) -> tuple[str, float]:
    """A StudyDate (YYYY-MM-DD) such that instances strictly after it are about ``fraction`` of the delivery.

    Returns the date and the exact fraction it selects.
    """
    dates = [i["study_date"] for i in index["instances"]]
    n = len(dates)
    # Whole studies share a date, so the exact fraction is rarely reachable: take the closest that selects something.
    options = [(sum(1 for d in dates if d > cut) / n, cut) for cut in sorted(set(dates))]
    options = [o for o in options if o[0] > 0] or [(0.0, min(dates))]
    selected, cut = min(options, key=lambda o: (abs(o[0] - fraction), o[1]))
    return f"{cut[:4]}-{cut[4:6]}-{cut[6:]}", selected
