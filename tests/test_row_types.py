"""Rows built in Python for Spark carry the schema's types.

The manifest and ledger DataFrames are created with ``verifySchema=False``
(Spark's per-row check in Python costs a share of the hot path), so every path
that builds a row must type it itself: these tests walk those paths.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from helpers import work_item

PYTHON_TYPE = {"string": str, "long": int, "int": int, "timestamp": datetime}


def assert_typed(rows: list[tuple], fields: list[tuple[str, str]]) -> None:
    for row in rows:
        assert len(row) == len(fields)
        for value, (name, kind) in zip(row, fields):
            assert value is None or type(value) is PYTHON_TYPE[kind], (name, value)


def test_every_executor_ledger_row_has_the_schema_types(sample_delivery: Any, tmp_path: Any) -> None:
    """The ledger DataFrame skips Spark's per-row type check: every outcome path must build typed rows itself."""
    from dicom_reassembly.reassembly.executor import TaskSettings, reassemble_partition
    from dicom_reassembly.reassembly.writes import WritePolicy
    from dicom_reassembly.records.ledger import LEDGER_FIELDS, STATUSES

    root, expected = sample_delivery
    (u1, i1), (u2, i2) = sorted(expected["instances"].items())[:2]
    good = work_item(root, i1, u1)
    malformed = dict(work_item(root, i2, u2), header_json="{not json")
    u3, i3 = next((u, i) for u, i in sorted(expected["instances"].items()) if i["payload"] == "native" and u not in (u1, u2))
    native = work_item(root, i3, u3)
    short = dict(native, pixel_size=native["pixel_size"] - 2)
    same = [good["pixel_archive"], good["pixel_member"], good["pixel_offset"], good["pixel_size"]]
    dup = dict(good, sop_instance_uid="1.2.826.0.1.10", dup_pixels=json.dumps([same]))
    other = dict(work_item(root, i2, u2), sop_instance_uid="1.2.826.0.1.11")
    conflict = dict(other, dup_pixels=json.dumps([[good["pixel_archive"], good["pixel_member"], good["pixel_offset"],
                                                   other["pixel_size"]]]))
    missing = dict(good, sop_instance_uid="1.2.826.0.1.12", pixel_archive=str(tmp_path / "gone.tar"))
    items = sorted([good, malformed, short, dup, conflict, missing], key=lambda i: (i["pixel_archive"], i["pixel_offset"]))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    rows = []
    for out in (str(tmp_path / "out"), str(blocked)):
        rows += list(reassemble_partition(iter(items), TaskSettings("r", WritePolicy(out=out, upload_threads=2))))
    assert_typed(rows, LEDGER_FIELDS)
    seen = {row[2] for row in rows}
    assert {"written", "invalid_header", "invalid_pixels", "duplicate", "conflict", "failed"} <= seen <= set(STATUSES), seen


def test_every_manifest_row_has_the_schema_types(sample_delivery: Any, damaged_delivery: Any) -> None:
    from dicom_reassembly.manifest import index, listing
    from dicom_reassembly.run_id import new_run_id

    rows, errors = [], set()
    for root, _ in (sample_delivery, damaged_delivery):
        at = datetime.now(timezone.utc)
        run = new_run_id(at)
        for a in listing.list_archives(os.path.join(root, "text"), os.path.join(root, "images")):
            for row in index.index_archive(a, run, at):
                rows.append(row)
                errors.add(row[index.FIELD_NAMES.index("error")])
    assert_typed(rows, index.MANIFEST_FIELDS)
    # The damaged delivery's rows went through the error paths too.
    assert {None, "malformed_json", "truncated_archive"} <= errors, errors


def test_index_batches_carry_the_rows_of_index_archive_in_the_arrow_schema(sample_delivery: Any,
                                                                           damaged_delivery: Any) -> None:
    """What mapInArrow hands Spark: every row index_archive yields, typed by the schema, in batches of bounded size."""
    from dicom_reassembly.manifest import index, listing
    from dicom_reassembly.run_id import new_run_id

    at = datetime.now(timezone.utc)
    run = new_run_id(at)
    archives = [a for root, _ in (sample_delivery, damaged_delivery)
                for a in listing.list_archives(os.path.join(root, "text"), os.path.join(root, "images"))]
    rows = [row for a in archives for row in index.index_archive(a, run, at)]
    batches = list(index.index_batches(archives, run, at, batch_rows=7, batch_bytes=20_000))
    assert all(b.schema == index.arrow_schema() for b in batches)
    assert all(b.num_rows <= 7 for b in batches) and len(batches) >= len(rows) / 7
    json_at = index.FIELD_NAMES.index("header_json")
    assert all(sum(len(v or "") for v in b.column(json_at).to_pylist()[:-1]) < 20_000 for b in batches)
    got = [tuple(r.values()) for b in batches for r in b.to_pylist()]
    assert got == [tuple(v.astimezone(timezone.utc) if isinstance(v, datetime) else v for v in r) for r in rows]


def test_a_name_that_is_not_utf8_reaches_arrow_with_replacement_characters() -> None:
    from dicom_reassembly.manifest import index

    row = tuple("bad\udcff.json" if n == "member_name" else None for n in index.FIELD_NAMES)
    batch = index.rows_to_batch([row])
    assert batch.column(index.FIELD_NAMES.index("member_name")).to_pylist() == ["bad\ufffd.json"]


def test_header_sha256_is_the_hash_of_the_member_as_stored(sample_delivery: Any) -> None:
    """The manifest hashes each header member's bytes (read here with tarfile, not with the indexer's reader)."""
    import hashlib
    import tarfile

    from dicom_reassembly.manifest import index, listing

    at = datetime.now(timezone.utc)
    root, _ = sample_delivery
    archives = listing.list_archives(os.path.join(root, "text"), os.path.join(root, "images"))
    expected = {}
    for a in archives:
        if a["role"] == "text":
            with tarfile.open(a["uri"]) as tar:
                for m in tar.getmembers():
                    expected[m.name] = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
    got = {dict(zip(index.FIELD_NAMES, r))["member_name"]: dict(zip(index.FIELD_NAMES, r))["header_sha256"]
           for a in archives for r in index.index_archive(a, "run", at) if r[index.FIELD_NAMES.index("kind")] == "header"}
    assert got and got == expected
