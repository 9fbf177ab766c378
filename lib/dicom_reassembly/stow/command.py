"""The ``stow`` command's work: what to send (a folder or prefix of .dcm, or the failures of a ledger), sending
it, and the per-instance results as a Parquet ledger.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigError, StowError
from ..io import arrow_io
from ..io.listing import head, list_objects
from ..io.uris import is_s3, join_uri
from .client import FAILED, SENT, StowClient, StowItem, StowResult
from .settings import StowSettings

log = logging.getLogger(__name__)


def read_failed_from_ledger(ledger_uri: str, from_uri: str | None = None) -> list[StowItem]:
    """Instances whose latest ledger row has ``stow_status == 'failed'``, as items to resend.

    The object is ``output_uri`` when present, else ``{from_uri}/{uid}.dcm``. When the
    ledger has ``finished_at``, only each UID's newest row counts, so a ledger that
    accumulates runs does not resend what a later run delivered.
    """
    import pyarrow.compute as pc

    try:
        dataset = arrow_io.open_dataset(ledger_uri, partitioning="hive")
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ConfigError("bad_ledger", type(exc).__name__, uri=ledger_uri) from exc
    names = set(dataset.schema.names)
    missing = {"sop_instance_uid", "stow_status"} - names
    if missing:
        raise ConfigError("bad_ledger", f"missing columns {sorted(missing)}", uri=ledger_uri)
    columns = [c for c in ("sop_instance_uid", "stow_status", "output_uri", "finished_at") if c in names]
    table = dataset.to_table(columns=columns, filter=pc.field("sop_instance_uid").is_valid())
    rows = table.to_pylist()
    if "finished_at" in names:
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            cur = newest.get(row["sop_instance_uid"])
            if cur is None or (row["finished_at"] is not None
                               and (cur["finished_at"] is None or row["finished_at"] >= cur["finished_at"])):
                newest[row["sop_instance_uid"]] = row
        rows = list(newest.values())
    items: list[StowItem] = []
    seen: set[str] = set()
    for row in rows:
        uid = row["sop_instance_uid"]
        if row["stow_status"] != FAILED or uid in seen:
            continue
        seen.add(uid)
        source = row.get("output_uri") or (join_uri(from_uri, f"{uid}.dcm") if from_uri else None)
        items.append(StowItem(uid, source, source))
    log.info("ledger %s: %d instance(s) to resend", ledger_uri, len(items))
    return items


def list_instances(from_uri: str) -> Iterator[StowItem]:
    """Items for every .dcm under a local folder or S3 prefix (or one file/object)."""
    if is_s3(from_uri) and from_uri.lower().endswith(".dcm") and head(from_uri) is not None:
        yield StowItem(None, from_uri, from_uri)
        return
    suffixes = () if os.path.isfile(from_uri) else (".dcm", ".DCM")
    for info in list_objects(from_uri, suffixes):
        yield StowItem(None, info.uri, info.uri)


def write_stow_ledger(path: str, results: list[StowResult], finished_at: datetime | None = None) -> str:
    """Write results as Parquet: a file when ``path`` ends in .parquet, else a new part
    file in the ``path`` dataset folder (so runs accumulate). Returns the file written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    finished = finished_at or datetime.now(timezone.utc)
    schema = pa.schema([
        ("sop_instance_uid", pa.string()),
        ("source_uri", pa.string()),
        ("stow_status", pa.string()),
        ("stow_reason", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ])
    table = pa.table({
        "sop_instance_uid": [r.sop_instance_uid for r in results],
        "source_uri": [None if r.key is None else str(r.key) for r in results],
        "stow_status": [r.status for r in results],
        "stow_reason": [r.reason for r in results],
        "finished_at": [finished] * len(results),
    }, schema=schema)
    if not path.endswith(".parquet"):
        stamp = finished.strftime("%Y%m%dT%H%M%S")
        path = join_uri(path, f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet")
    filesystem, fs_path = arrow_io.arrow_filesystem(path)
    try:
        if not is_s3(path):
            os.makedirs(os.path.dirname(fs_path) or ".", exist_ok=True)
        pq.write_table(table, fs_path, filesystem=filesystem)
    except OSError as exc:
        raise StowError("ledger_write_failed", type(exc).__name__, uri=path) from exc
    return path


def send_objects(items: Iterable[Any], settings: StowSettings, ledger_out: str | None = None,
                 client: StowClient | None = None) -> dict[str, Any]:
    """Send items and summarise: ``{"sent": n, "failed": n, "reasons": {reason: n}, "ledger": uri}``."""
    own = client is None
    client = client or StowClient(settings)
    try:
        results = list(client.send(items))
    finally:
        if own:
            client.close()
    summary: dict[str, Any] = {SENT: 0, FAILED: 0, "reasons": {}, "ledger": None}
    for r in results:
        summary[r.status] += 1
        if r.status == FAILED:
            summary["reasons"][r.reason] = summary["reasons"].get(r.reason, 0) + 1
    if ledger_out:
        summary["ledger"] = write_stow_ledger(ledger_out, results)
    return summary
