"""A large delivery's outputs without the delivery: a manifest, one ledger run and a catalogue written straight as
Parquet, at any number of instances, in seconds (no tar is written and no header parsed).

For measuring what must not grow with the delivery (the notebook's memory: tests/test_notebook.py, bench).
Deterministic for a seed:

- Patients, studies and series: CT 55 % (series of 50-400 slices), MR 25 % (20-200), PT 12 % (100-300),
  XA 8 % (1-40); study dates spread over 2008-2024; patient ages as AS values (a few in months, a few missing).
- The manifest has the manifest's schema (``manifest.index.MANIFEST_FIELDS``) and one index run. Headers
  (5-20 KB, as scanners write them: bench/README.md) go to text archives and pixels (CT and PT 512x512,
  MR 256x256, XA 1024x1024; native or about 40 % as J2K) to image archives, ``per_archive`` members each,
  dealt by two independent shuffles. Each ``header_json`` is a DICOM JSON header with the key tags and a
  private OB element (like a Siemens CSA header) of random base64, so it is stored almost uncompressed: on disk
  the manifest weighs about its header bytes.
- One instance in a thousand lacks its pixel member (``orphan_header``), one in a thousand its header
  (``orphan_pixels``); the rest are ``written`` in the ledger and in the catalogue (``records.catalog``'s writer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from ..manifest.index import MANIFEST_FIELDS
from ..records import catalog
from ..records.ledger import LEDGER_FIELDS

log = logging.getLogger(__name__)
RUN_ID = "20260101T000000Z-synthetic"
INDEX_RUN = "20260101T000000000000Z"
# modality: (share, series sizes, rows/columns, SOP Class UID)
MODALITIES = {
    "CT": (0.55, (50, 400), 512, "1.2.840.10008.5.1.4.1.1.2"),
    "MR": (0.25, (20, 200), 256, "1.2.840.10008.5.1.4.1.1.4"),
    "PT": (0.12, (100, 300), 512, "1.2.840.10008.5.1.4.1.1.128"),
    "XA": (0.08, (1, 40), 1024, "1.2.840.10008.5.1.4.1.1.12.1"),
}
HEADER_BYTES = (5 * 1024, 20 * 1024)
BATCH = 10_000  # manifest rows per Parquet row group (Spark's 128 MB row groups hold about as many headers)


@dataclass(frozen=True)
class Instance:
    uid: str
    study: str
    series: str
    patient: str
    modality: str
    study_date: str
    patient_age: str | None
    number: int
    matrix: int
    sop_class: str
    header_size: int
    pixel_size: int


def _instances(n: int, rng: Any) -> list[Instance]:
    """``n`` instances in series, studies and patients."""
    names = list(MODALITIES)
    shares = [MODALITIES[m][0] for m in names]
    start, days = date(2008, 1, 1), (date(2024, 12, 31) - date(2008, 1, 1)).days
    out: list[Instance] = []
    series_no = study_no = patient_no = 0
    while len(out) < n:
        patient_no += 1
        age = int(rng.integers(1, 95))
        roll = rng.random()
        age_text = None if roll < 0.01 else f"{int(rng.integers(1, 24)):03d}M" if roll < 0.03 else f"{age:03d}Y"
        for _ in range(int(rng.integers(1, 3))):  # studies per patient
            study_no += 1
            when = (start + timedelta(days=int(rng.integers(0, days + 1)))).strftime("%Y%m%d")
            modality = names[int(rng.choice(len(names), p=shares))]
            _, (lo, hi), matrix, sop_class = MODALITIES[modality]
            for _ in range(int(rng.integers(1, 4))):  # series per study
                series_no += 1
                for k in range(min(int(rng.integers(lo, hi + 1)), n - len(out))):
                    native = matrix * matrix * 2
                    pixels = native if rng.random() < 0.6 else int(native * rng.uniform(0.35, 0.5))
                    out.append(Instance(
                        uid=f"2.25.{9_000_000_000 + len(out)}", study=f"2.25.{8_000_000_000 + study_no}",
                        series=f"2.25.{7_000_000_000 + series_no}", patient=f"P{patient_no:08d}", modality=modality,
                        study_date=when, patient_age=age_text, number=k + 1, matrix=matrix, sop_class=sop_class,
                        header_size=int(rng.integers(HEADER_BYTES[0], HEADER_BYTES[1] + 1)), pixel_size=pixels))
                if len(out) >= n:
                    return out
    return out


def _header_json(inst: Instance, filler: str, rng: Any) -> str:
    """A DICOM JSON header of about ``inst.header_size`` bytes: key tags, then random base64 in a private OB."""
    def v(vr: str, value: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": [value]}

    model = {
        "00080016": v("UI", inst.sop_class), "00080018": v("UI", inst.uid), "00080020": v("DA", inst.study_date),
        "00080060": v("CS", inst.modality), "00080070": v("LO", "SYNTHETIC"), "00100020": v("LO", inst.patient),
        "0020000D": v("UI", inst.study), "0020000E": v("UI", inst.series), "00200013": v("IS", inst.number),
        "00280010": v("US", inst.matrix), "00280011": v("US", inst.matrix), "00280100": v("US", 16),
        "00280004": v("CS", "MONOCHROME2"),
    }
    if inst.patient_age:
        model["00101010"] = v("AS", inst.patient_age)
    text = json.dumps(model, separators=(",", ":"))
    room = max(0, inst.header_size - len(text) - 40) // 4 * 4
    offset = int(rng.integers(0, len(filler) - room)) // 4 * 4
    # Appended as text: base64 needs no escaping, and encoding a 20 KB string through json costs more than the rest.
    return f'{text[:-1]},"00291010":{{"vr":"OB","InlineBinary":"{filler[offset:offset + room]}"}}}}'



def _arrow_schema() -> Any:
    import pyarrow as pa

    kinds = {"string": pa.string(), "long": pa.int64(), "int": pa.int32(), "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(n, kinds[t]) for n, t in MANIFEST_FIELDS])


def _archives(instances: list[Instance], per_archive: int, rng: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Instance indexes by text archive and by image archive, dealt by two independent shuffles."""
    headers = [i for i in rng.permutation(len(instances)).tolist() if i % 1000 != 999]  # 999: orphan pixels
    pixels = [i for i in rng.permutation(len(instances)).tolist() if i % 1000 != 998]  # 998: orphan header
    return ([headers[k:k + per_archive] for k in range(0, len(headers), per_archive)],
            [pixels[k:k + per_archive] for k in range(0, len(pixels), per_archive)])


def _archive_uri(root: str, role: str, number: int) -> str:
    return f"{root}/delivery/{role}/{role}-{number:06d}.tar"


def _manifest_rows(instances: list[Instance], root: str, text: list[list[int]], images: list[list[int]],
                   rng: Any) -> Any:
    """Manifest rows archive by archive (members, then the archive's row), as dicts of the schema's columns."""
    indexed_at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    filler = base64.b64encode(rng.bytes(4 << 20)).decode()  # beyond any compressor's window: stays incompressible
    for role, groups, suffix in (("text", text, "json"), ("images", images, "j2c")):
        for a, members in enumerate(groups):
            uri = _archive_uri(root, role, a)
            offset = 0
            rows = []
            for i in members:
                inst = instances[i]
                size = inst.header_size if role == "text" else inst.pixel_size
                row = {"member_name": f"{inst.uid}.{suffix}", "header_offset": offset, "data_offset": offset + 512,
                       "size": size, "kind": "header" if role == "text" else "pixels", "member_type": "file",
                       "sop_instance_uid": inst.uid}
                if role == "text":
                    header = _header_json(inst, filler, rng)
                    row.update(size=len(header), header_json=header, header_sha256=hashlib.sha256(inst.uid.encode()).hexdigest(),
                               sop_class_uid=inst.sop_class, study_instance_uid=inst.study,
                               series_instance_uid=inst.series, modality=inst.modality, study_date=inst.study_date,
                               patient_age=inst.patient_age, manufacturer="SYNTHETIC", instance_number=inst.number,
                               rows=inst.matrix, columns=inst.matrix, number_of_frames=None, samples_per_pixel=1,
                               bits_allocated=16, bits_stored=12, pixel_representation=0,
                               photometric_interpretation="MONOCHROME2")
                offset += 512 + (row["size"] + 511) // 512 * 512
                rows.append(row)
            size = offset + 1024
            base = {"archive_uri": uri, "archive_role": role, "archive_size": size, "archive_etag": f"etag-{a}",
                    "archive_mtime": indexed_at, "index_run": INDEX_RUN, "indexed_at": indexed_at}
            for row in rows:
                yield {**base, **row}
            yield {**base, "kind": "archive", "member_type": "archive", "size": size,
                   "error_detail": f"{len(rows)} members"}


def write_manifest(path: str, instances: list[Instance], root: str, text: list[list[int]],
                   images: list[list[int]], rng: Any) -> int:
    """The manifest at ``path`` (a folder of Parquet files, ``BATCH`` rows per row group); its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    os.makedirs(path, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(os.path.join(path, "part-00000.snappy.parquet"), schema, compression="snappy") as writer:
        columns: dict[str, list[Any]] = {n: [] for n in schema.names}
        for row in _manifest_rows(instances, root, text, images, rng):
            for name, values in columns.items():
                values.append(row.get(name))
            rows += 1
            if rows % BATCH == 0:
                writer.write_table(pa.table(columns, schema=schema))
                columns = {n: [] for n in schema.names}
        if rows % BATCH:
            writer.write_table(pa.table(columns, schema=schema))
    return rows


def write_synthetic_outputs(out: str, instances: int, *, per_archive: int = 100, seed: int = 20260101,
                            catalog_rows: bool = True) -> dict[str, Any]:
    """Write ``out/manifest``, ``out/ledger`` (one run) and ``out/ledger_catalog`` for ``instances`` instances.

    Returns the paths and what they hold (instances, orphans, rows per modality), for checking what reads them.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    insts = _instances(instances, rng)
    root = "s3://synthetic-delivery"
    manifest, ledger = os.path.join(out, "manifest"), os.path.join(out, "ledger")
    text, images = _archives(insts, per_archive, rng)
    manifest_rows = write_manifest(manifest, insts, root, text, images, rng)
    archive_of = {("text", i): _archive_uri(root, "text", a) for a, group in enumerate(text) for i in group}
    archive_of.update({("images", i): _archive_uri(root, "images", a) for a, group in enumerate(images) for i in group})
    finished = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
    led: dict[str, list[Any]] = {n: [] for n, _ in LEDGER_FIELDS if n != "run_id"}
    cat: list[dict[str, Any]] = []
    counts = {"written": 0, "orphan_header": 0, "orphan_pixels": 0}
    for i, inst in enumerate(insts):
        status = "orphan_header" if i % 1000 == 998 else "orphan_pixels" if i % 1000 == 999 else "written"
        counts[status] += 1
        output = f"{root}-out/{inst.study}/{inst.series}/{inst.uid}.dcm" if status == "written" else None
        size = inst.pixel_size + inst.header_size // 2 if status == "written" else None
        values = {"sop_instance_uid": inst.uid, "status": status,
                  "reason": {"written": None, "orphan_header": "no pixel member for this UID",
                             "orphan_pixels": "no header member for this UID"}[status],
                  "header_archive": archive_of.get(("text", i)), "pixel_archive": archive_of.get(("images", i)),
                  "header_member": f"{inst.uid}.json" if status != "orphan_pixels" else None,
                  "pixel_member": f"{inst.uid}.j2c" if status != "orphan_header" else None,
                  "output_uri": output, "output_bytes": size, "output_checksum": f"{i:064x}" if output else None,
                  "transfer_syntax": "1.2.840.10008.1.2.1" if output else None, "study_instance_uid": inst.study,
                  "series_instance_uid": inst.series, "finished_at": finished}
        for name in led:
            led[name].append(values.get(name))
        if status == "written" and catalog_rows:
            attributes = {"sop_instance_uid": inst.uid, "sop_class_uid": inst.sop_class,
                          "study_instance_uid": inst.study, "series_instance_uid": inst.series,
                          "patient_id": inst.patient, "modality": inst.modality,
                          "study_date": date(int(inst.study_date[:4]), int(inst.study_date[4:6]),
                                             int(inst.study_date[6:])),
                          "instance_number": inst.number, "manufacturer": "SYNTHETIC", "rows": inst.matrix,
                          "columns": inst.matrix, "number_of_frames": 1, "bits_allocated": 16,
                          "photometric_interpretation": "MONOCHROME2"}
            cat.append(catalog.build_catalog_row(
                attributes, transfer_syntax="1.2.840.10008.1.2.1", output_uri=output, output_bytes=size,
                output_checksum=values["output_checksum"], run_id=RUN_ID, status="written",
                header_archive=values["header_archive"], pixel_archive=values["pixel_archive"], recorded_at=finished))
    types = {"string": pa.string(), "long": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC")}
    ledger_schema = pa.schema([(n, types[t]) for n, t in LEDGER_FIELDS if n != "run_id"])
    run_folder = os.path.join(ledger, f"run_id={RUN_ID}")
    os.makedirs(run_folder, exist_ok=True)
    pq.write_table(pa.table(led, schema=ledger_schema), os.path.join(run_folder, "part-00000.snappy.parquet"))
    catalog_uri = ledger + "_catalog"
    if cat:
        catalog.write_catalog_rows(catalog_uri, cat)
    modalities: dict[str, int] = {}
    for inst in insts:
        modalities[inst.modality] = modalities.get(inst.modality, 0) + 1
    written: dict[str, int] = {}
    for row in cat:
        written[row["modality"]] = written.get(row["modality"], 0) + 1
    log.info("synthetic outputs in %s: %d instances, %d manifest rows", out, len(insts), manifest_rows)
    return {"manifest": manifest, "ledger": ledger, "catalog": catalog_uri, "run_id": RUN_ID,
            "instances": len(insts), "manifest_rows": manifest_rows, "statuses": counts, "modalities": modalities,
            "series": len({inst.series for inst in insts}), "catalog_rows": len(cat), "catalog_modalities": written}
