"""The restore ledger: one Parquet row per restore request (or Batch Operations hand-over), appended per run."""

from __future__ import annotations

import io
import logging
from typing import Any

from ..io import listing as io_listing
from ..io import reads, writes
from ..io import uris as io_uris

log = logging.getLogger(__name__)
LEDGER_FIELDS = ("run_id", "uri", "role", "wave", "size", "storage_class", "tier", "days", "requested_at",
                 "outcome", "http_status", "error_code", "error_detail", "job_id")


def restore_ledger_schema() -> Any:
    """The restore ledger's Arrow schema."""
    import pyarrow as pa

    return pa.schema([
        ("run_id", pa.string()), ("uri", pa.string()), ("role", pa.string()), ("wave", pa.int32()),
        ("size", pa.int64()), ("storage_class", pa.string()), ("tier", pa.string()), ("days", pa.int32()),
        ("requested_at", pa.timestamp("us", tz="UTC")), ("outcome", pa.string()), ("http_status", pa.int32()),
        ("error_code", pa.string()), ("error_detail", pa.string()), ("job_id", pa.string()),
    ])


def write_restore_ledger(rows: list[dict[str, Any]], ledger_uri: str, run_id: str, part: int) -> str:
    """Append ``rows`` to the restore ledger as one new Parquet file; returns its URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{k: r.get(k) for k in LEDGER_FIELDS} for r in rows], schema=restore_ledger_schema())
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    uri = io_uris.join_uri(ledger_uri, f"restore-{run_id}-{part:05d}.parquet")
    writes.write_bytes(uri, buf.getvalue(), writes.WriteOptions(content_type="application/vnd.apache.parquet"))
    return uri


def read_restore_ledger(ledger_uri: str) -> Any:
    """The whole restore ledger as an Arrow table (small: one row per request)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(io.BytesIO(reads.read_bytes(o.uri)))
              for o in io_listing.list_objects(ledger_uri, (".parquet",))]
    if not tables:
        return restore_ledger_schema().empty_table()
    return pa.concat_tables(tables)
