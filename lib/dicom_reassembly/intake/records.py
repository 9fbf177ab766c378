"""The recorder: appends the intake's queued ledger and catalogue rows to their Parquet datasets, in batches.

The ledger is the same dataset ``reassemble`` writes (Hive-partitioned by ``run_id``, ``ledger.LEDGER_FIELDS``);
the catalogue is ``catalog``'s. Rows wait in the state file's outbox until appended, so a crash loses none.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import date, datetime, timezone
from typing import Any

from ..errors import ReassemblyError
from ..io import arrow_io
from ..records import catalog
from ..records.ledger import LEDGER_FIELDS, LEDGER_NAMES
from .state import IntakeState

log = logging.getLogger(__name__)

BATCH_ROWS = 5000


def ledger_arrow_schema() -> Any:
    """The ledger's Arrow schema, ``run_id`` included (it becomes the partition folder)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "long": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(n, kinds[t]) for n, t in LEDGER_FIELDS])


def _revive(row: dict[str, Any], schema: Any) -> dict[str, Any]:
    """Dates and timestamps back from the ISO text the outbox stores."""
    import pyarrow as pa

    out = dict(row)
    for field in schema:
        value = out.get(field.name)
        if isinstance(value, str):
            if pa.types.is_timestamp(field.type):
                out[field.name] = datetime.fromisoformat(value)
            elif pa.types.is_date(field.type):
                out[field.name] = date.fromisoformat(value)
    return out


def write_ledger_rows(uri: str, rows: list[dict[str, Any]]) -> int:
    """Append ledger rows (dicts keyed by LEDGER_NAMES) under ``uri/run_id=.../``; returns how many."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not rows:
        return 0
    schema = ledger_arrow_schema()
    table = pa.Table.from_pylist([_revive({n: r.get(n) for n in LEDGER_NAMES}, schema) for r in rows], schema=schema)
    filesystem, path = arrow_io.arrow_filesystem(uri)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    pads.write_dataset(table, path, filesystem=filesystem, format="parquet",
                       partitioning=pads.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive"),
                       basename_template=f"part-intake-{stamp}-{uuid.uuid4().hex[:12]}-{{i}}.parquet",
                       existing_data_behavior="overwrite_or_ignore")
    return len(rows)


class Recorder:
    """Flushes the outbox every ``interval`` seconds on its own thread, and on demand."""

    def __init__(self, state: IntakeState, ledger_uri: str, catalog_uri: str, interval: float = 1.0) -> None:
        self.state = state
        self.ledger_uri = ledger_uri
        self.catalog_uri = catalog_uri
        self.interval = interval
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intake-recorder", daemon=True)

    def start(self) -> None:
        """Start the periodic flush."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then flush what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # the rows stay in the outbox; the next flush tries again
                log.exception("recording ledger/catalogue rows failed; will retry")

    def flush(self) -> int:
        """Append every queued row; returns how many were appended."""
        total = 0
        with self._flush_lock:
            while True:
                batch = self.state.take_outbox(BATCH_ROWS)
                if not batch:
                    return total
                ledger = [row for _, kind, row in batch if kind == "ledger"]
                rows = [_revive(row, catalog.arrow_schema()) for _, kind, row in batch if kind == "catalog"]
                try:
                    write_ledger_rows(self.ledger_uri, ledger)
                    catalog.write_catalog_rows(self.catalog_uri, rows)
                except (OSError, ReassemblyError) as exc:
                    log.warning("cannot append %d row(s) yet: %s", len(batch), exc)
                    return total
                self.state.drop_outbox([i for i, _, _ in batch])
                total += len(batch)
