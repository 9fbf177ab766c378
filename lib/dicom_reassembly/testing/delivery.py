"""Writing a sample delivery: deterministic tar archives, reference files and ``expected.json``.

``Delivery`` collects members and the expected outcome of every instance, member and archive; ``add_good``
and ``write_clean`` place well-formed instances in differently numbered text and image archives.
"""


from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import tarfile
import warnings
from collections.abc import Sequence
from typing import Any

import pydicom

from ..errors import ConfigError
from .instances import (
    VARIANTS,
    Instance,
    Member,
    build_instance,
    json_bytes,
    with_bulk_data_uri,
)

log = logging.getLogger(__name__)

# The name earlier deliveries were written under: kept, so `make demo` recognises and replaces them.
GENERATOR = "dicom_reassembly.sample_data"
FORMAT_VERSION = 1
# Fixed tar metadata: identical bytes on every run and every machine.
TAR_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z
TAR_FORMAT = tarfile.PAX_FORMAT
N_TEXT_ARCHIVES = 3
N_IMAGE_ARCHIVES = 3
SUBFOLDER_ARCHIVE = 1  # text-001.tar stores its members under SUBFOLDER/
SUBFOLDER = "batch1"
STATUSES = ("written", "duplicate", "conflict", "orphan_header", "orphan_pixels", "invalid_header", "invalid_pixels",
            "unreadable_archive")




# ---------------------------------------------------------------- writing


def tar_bytes(members: Sequence[Member]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A deterministic tar; returns its bytes and each member's (data offset, size)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=TAR_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime = TAR_MTIME
            info.uid = info.gid = 1000
            info.uname = info.gname = "partner"
            if m.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif m.kind == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, m.linkname
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        offsets = {i.name: (i.offset_data, i.size) for i in tar.getmembers()}
    return data, offsets


def shuffled(members: list[Member], seed: str) -> list[Member]:
    out = list(members)
    random.Random(seed).shuffle(out)
    return out


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _write_reference(root: str, inst: Instance) -> str:
    rel = f"sources/{inst.uid}.dcm"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        pydicom.dcmwrite(buf, inst.reference, enforce_file_format=True)
    write_file(os.path.join(root, rel), buf.getvalue())
    return rel


def prepare_root(root: str, overwrite: bool) -> None:
    """Refuse to mix a new delivery into foreign files; replace one we generated before."""
    if os.path.isdir(root) and os.listdir(root):
        marker = os.path.join(root, "expected.json")
        ours = False
        if os.path.isfile(marker):
            try:
                with open(marker, encoding="utf-8") as fh:
                    ours = json.load(fh).get("generator") == GENERATOR
            except (OSError, ValueError):
                ours = False
        if not (ours or overwrite):
            raise ConfigError("output_not_empty", f"{root} is not empty and holds no generated delivery (no "
                                                  "expected.json of ours): move its contents away, or pass "
                                                  "--overwrite to replace its text/, images/ and sources/")
        for sub in ("text", "images", "sources"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        if os.path.exists(marker):
            os.remove(marker)
    os.makedirs(root, exist_ok=True)


class Delivery:
    """Collects archive members and the expected outcome, then writes everything."""

    def __init__(self, root: str, damaged: bool, copies: int) -> None:
        self.root = root
        self.archives: dict[str, list[Member]] = {}
        self.raw_archives: dict[str, bytes] = {}
        self.expected: dict[str, Any] = {"generator": GENERATOR, "format_version": FORMAT_VERSION,
                                         "damaged": damaged, "copies": copies, "instances": {}, "members": [],
                                         "archives": {}}

    def add(self, archive: str, member: Member) -> None:
        self.archives.setdefault(archive, []).append(member)

    def expect_member(self, archive: str, member: str, status: str, reason: str | None = None, *,
                      uid: str | None = None, role: str = "") -> None:
        if status not in STATUSES:
            raise ConfigError("sample_bad_status", status)
        self.expected["members"].append({"archive": archive, "member": member, "uid": uid, "role": role,
                                         "status": status, "reason": reason})

    def expect_instance(self, uid: str, entry: dict[str, Any]) -> None:
        if entry["status"] not in STATUSES:
            raise ConfigError("sample_bad_status", entry["status"])
        self.expected["instances"][uid] = entry

    def instance_entry(self, inst: Instance | None, status: str, *, header: list[str] | None,
                       pixels: list[str] | None, reason: str | None = None, source: str | None = None,
                       payload: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "source": source or (inst.variant.source if inst else None),
            "variant": inst.variant.key if inst else None,
            "case": inst.extra.get("case") if inst else None,
            "status": status, "reason": reason,
            "payload": payload or (inst.variant.payload if inst and pixels else None),
            "header": header, "pixels": pixels,
            "transfer_syntax": inst.transfer_syntax if inst and status == "written" else None,
            "frames": inst.frames if inst else None,
            "bulk_data_uri": bool(inst and inst.bulk_data_uri),
            "reference": None,
        }
        if inst is not None:
            ref = inst.reference
            entry.update({"sop_class_uid": str(ref.SOPClassUID), "modality": str(ref.Modality),
                          "study_date": str(ref.StudyDate), "patient_age": str(ref.PatientAge),
                          "study_instance_uid": str(ref.StudyInstanceUID),
                          "series_instance_uid": str(ref.SeriesInstanceUID),
                          "rows": int(ref.Rows), "columns": int(ref.Columns),
                          "samples_per_pixel": int(ref.get("SamplesPerPixel", 1)),
                          "bits_allocated": int(ref.BitsAllocated),
                          "photometric_interpretation": str(ref.PhotometricInterpretation)})
            if status == "written":
                entry["reference"] = _write_reference(self.root, inst)
        return entry

    def write(self) -> dict[str, Any]:
        for rel in sorted(set(self.archives) | set(self.raw_archives)):
            role = rel.split("/", 1)[0]
            self.expected["archives"].setdefault(rel, {"role": role, "status": "ok", "reason": None})
            if rel in self.raw_archives:
                data = self.raw_archives[rel]
            else:
                data, _ = tar_bytes(shuffled(self.archives[rel], f"order:{rel}"))
            write_file(os.path.join(self.root, rel), data)
        self.expected["members"].sort(key=lambda m: (m["archive"], m["member"]))
        write_file(os.path.join(self.root, "expected.json"),
                    json.dumps(self.expected, sort_keys=True, indent=1).encode("utf-8") + b"\n")
        return self.expected


def text_archive(i: int) -> str:
    return f"text/text-{i:03d}.tar"


def image_archive(i: int) -> str:
    return f"images/images-{i:03d}.tar"


def member_name(archive_index: int, base: str, role: str) -> str:
    return f"{SUBFOLDER}/{base}" if role == "text" and archive_index == SUBFOLDER_ARCHIVE else base


def add_good(d: Delivery, inst: Instance, text_i: int, image_i: int, *,
              header_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add a well-formed instance with header and pixels in differently numbered archives."""
    t_arch, i_arch = text_archive(text_i), image_archive(image_i)
    t_name = member_name(text_i, f"{inst.uid}.json", "text")
    i_name = f"{inst.uid}.j2c"
    d.add(t_arch, Member(t_name, json_bytes(header_model or inst.header)))
    d.add(i_arch, Member(i_name, inst.pixels))
    d.expect_member(t_arch, t_name, "written", uid=inst.uid, role="header")
    d.expect_member(i_arch, i_name, "written", uid=inst.uid, role="pixels")
    entry = d.instance_entry(inst, "written", header=[t_arch, t_name], pixels=[i_arch, i_name])
    d.expect_instance(inst.uid, entry)
    return entry


def write_clean(d: Delivery, copies: int) -> None:
    n = 0
    for copy_index in range(copies):
        for v_index, variant in enumerate(VARIANTS):
            inst = build_instance(variant, copy_index, v_index % 2)
            model = None
            if n % 5 == 2:  # a few headers point at their pixel member instead of omitting Pixel Data
                inst.bulk_data_uri = True
                model = with_bulk_data_uri(inst)
            text_i = n % N_TEXT_ARCHIVES
            add_good(d, inst, text_i, (text_i + 1) % N_IMAGE_ARCHIVES, header_model=model)
            n += 1


