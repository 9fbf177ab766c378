"""Tranches (the --tranche grammar) and restore expiry, without Spark."""

from __future__ import annotations

import os
import uuid
import zlib
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicom_reassembly.errors import ConfigError
from dicom_reassembly.io import clients
from dicom_reassembly.restore import expiry
from dicom_reassembly.restore.ledger import restore_ledger_schema
from dicom_reassembly.selection.tranche import Tranche, archive_hash, archive_tranche, parse_tranche


def test_grammar_terms_and_their_combination() -> None:
    assert parse_tranche(None) is None and parse_tranche("  ") is None
    t = parse_tranche("prefix:s3://b/images/2024-01/,s3://b/images/2024-02/")
    assert t == Tranche(prefixes=("s3://b/images/2024-01/", "s3://b/images/2024-02/"))
    assert t.matches_archive("s3://b/images/2024-02/x.tar") and not t.matches_archive("s3://b/images/2024-03/x.tar")
    assert parse_tranche("hash:0-63/256") == Tranche(hash_range=(0, 63, 256))
    assert parse_tranche("limit:1000") == Tranche(limit=1000)
    both = parse_tranche("hash:0-63/256; limit:10")
    assert both.hash_range == (0, 63, 256) and both.limit == 10 and str(both) == "hash:0-63/256;limit:10"
    assert parse_tranche(str(both)) == both
    assert parse_tranche("prefix:rel/images/").prefixes == (os.path.abspath("rel/images") + os.sep,)


@pytest.mark.parametrize("text", ["hash:5-2/256", "hash:0-256/256", "hash:0-1", "limit:0", "limit:-3", "limit:x",
                                  "prefix:", "size:10", "limit:1;limit:2", "nonsense"])
def test_bad_tranches_are_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_tranche(text)
    assert exc.value.reason == "bad_tranche" and "prefix:URI" in exc.value.detail


def test_hash_ranges_cut_archives_into_disjoint_tranches_that_cover_them() -> None:
    uris = [f"s3://bucket/images/{i:05d}.tar" for i in range(2000)]
    quarters = [parse_tranche(f"hash:{q * 64}-{q * 64 + 63}/256") for q in range(4)]
    owners = [[q for q, t in enumerate(quarters) if t.matches_archive(u)] for u in uris]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(1 for o in owners if o == [q]) for q in range(4)]
    assert min(sizes) > 400, sizes  # CRC-32 spreads sequential names
    assert archive_hash("s3://b/é.tar", 7) == zlib.crc32("s3://b/é.tar".encode()) % 7  # the documented rule


def test_archive_steps_refuse_a_limit() -> None:
    assert archive_tranche(parse_tranche("hash:0-1/4"), "build_manifest").hash_range == (0, 1, 4)
    with pytest.raises(ConfigError) as exc:
        archive_tranche(parse_tranche("limit:5"), "build_manifest")
    assert "build_manifest" in exc.value.detail


# ------------------------------------------------------------------------------------------- restore expiry


def _ledger(path: str, rows: list[dict]) -> str:
    os.makedirs(path, exist_ok=True)
    table = pa.Table.from_pylist([{**{n: None for n in restore_ledger_schema().names}, **r} for r in rows],
                                 schema=restore_ledger_schema())
    pq.write_table(table, os.path.join(path, "restore-0.parquet"))
    return path


def test_expiry_from_the_restore_ledger_newest_successful_request_wins(tmp_path) -> None:  # noqa: ANN001
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    ledger = _ledger(str(tmp_path / "rl"), [
        {"uri": "s3://b/expired.tar", "outcome": "requested", "days": 7, "requested_at": now - timedelta(days=8)},
        {"uri": "s3://b/renewed.tar", "outcome": "requested", "days": 7, "requested_at": now - timedelta(days=8)},
        {"uri": "s3://b/renewed.tar", "outcome": "already_restored", "days": 7, "requested_at": now - timedelta(days=1)},
        {"uri": "s3://b/soon.tar", "outcome": "requested", "days": 2, "requested_at": now - timedelta(days=2, minutes=-30)},
        {"uri": "s3://b/failed-later.tar", "outcome": "requested", "days": 7, "requested_at": now - timedelta(days=9)},
        {"uri": "s3://b/failed-later.tar", "outcome": "error", "days": 7, "requested_at": now},
        {"uri": "s3://b/standard.tar", "outcome": "not_archived", "days": 7, "requested_at": now - timedelta(days=30)},
    ])
    found = expiry.read_expired_archives(ledger, now)
    assert set(found) == {"s3://b/expired.tar", "s3://b/soon.tar", "s3://b/failed-later.tar"}
    assert found["s3://b/expired.tar"] == ("restore_expired: the restored copy expired about 2026-02-28T12:00Z "
                                           "(restore requested 2026-02-21T12:00Z for 7 days, restore ledger); "
                                           "restore it again")
    assert "expires within 1 h, at about 2026-03-01T12:30Z" in found["s3://b/soon.tar"]
    assert expiry.read_expired_archives(str(tmp_path / "none"), now) == {}


def test_active_restores_are_the_complement_of_expired_ones_on_the_same_ledger(tmp_path) -> None:  # noqa: ANN001
    # The campaign's "already under way" and the run's "expired" read one rule: a later failed request takes
    # nothing away from a copy an earlier request restored.
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    ledger = _ledger(str(tmp_path / "rl"), [
        {"uri": "s3://b/live.tar", "outcome": "requested", "days": 7, "requested_at": now - timedelta(days=2)},
        {"uri": "s3://b/live.tar", "outcome": "error", "days": 7, "requested_at": now - timedelta(days=1)},
        {"uri": "s3://b/gone.tar", "outcome": "requested", "days": 1, "requested_at": now - timedelta(days=3)},
        {"uri": "s3://b/never.tar", "outcome": "error", "days": 7, "requested_at": now},
    ])
    assert expiry.read_active_restores(ledger, now) == {"s3://b/live.tar"}
    assert set(expiry.read_expired_archives(ledger, now, timedelta(0))) == {"s3://b/gone.tar"}


def test_expiry_by_head_on_moto(s3) -> None:  # noqa: ANN001
    clients._clients.clear()
    bucket = f"expiry-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for key, cls in (("cold.tar", "GLACIER"), ("warm.tar", "GLACIER"), ("std.tar", "STANDARD")):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 10, StorageClass=cls)
    s3.restore_object(Bucket=bucket, Key="warm.tar", RestoreRequest={"Days": 3})
    now = datetime.now(timezone.utc)
    uris = [f"s3://{bucket}/{k}" for k in ("cold.tar", "warm.tar", "std.tar")] + ["/local/file.tar"]
    found = dict(expiry.head_unavailable(uris, None, now, timedelta(hours=1)))
    assert list(found) == [f"s3://{bucket}/cold.tar"]
    assert found[f"s3://{bucket}/cold.tar"].startswith("restore_expired: in GLACIER with no restored copy")
    # A copy that expires within the margin is as good as gone.
    late = dict(expiry.head_unavailable(uris[1:2], None, now, timedelta(days=4)))
    assert late[uris[1]].startswith("restore_expired: the restored copy expires at")
