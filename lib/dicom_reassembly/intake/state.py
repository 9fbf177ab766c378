"""The intake's durable state: a SQLite file in the spool folder.

SQLite because the state is small, per instance and changes (an instance waits, fails, is retried, is
sent), which Parquet, being immutable, cannot do without rewriting files; and because it ships with
Python, commits atomically and survives a killed process. Two tables:

- ``instances``: one row per spool file still waiting to be forwarded (STOW-RS), with its attempts and
  when to try again. A row is removed, in the same transaction as its last ledger row, once the
  instance is forwarded (the spool file is deleted just after).
- ``outbox``: ledger and catalogue rows not yet appended to their Parquet datasets. A state change and
  its rows commit together; the recorder appends the rows in batches and then deletes them. A crash
  between the append and the delete appends them again on restart: readers take the newest row per
  instance, so a repeated row changes no answer.

WAL with ``synchronous=NORMAL``: a killed process loses nothing; a power cut may lose the last
transactions, whose spool files are still there and are processed again at start.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

STATE_FILE = "intake-state.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    base TEXT NOT NULL,
    stow_status TEXT NOT NULL,
    stow_reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_due ON instances (next_attempt);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    row TEXT NOT NULL
);
"""

Row = Mapping[str, Any]


def _encode(row: Row) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON")

    return json.dumps(dict(row), default=default, separators=(",", ":"))


class IntakeState:
    """The state file; safe to use from every thread of the process (one connection, one lock)."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, STATE_FILE)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def _transaction(self, statements: Iterable[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _outbox(ledger: Iterable[Row], catalog: Iterable[Row]) -> list[tuple[str, tuple]]:
        return ([("INSERT INTO outbox (kind, row) VALUES ('ledger', ?)", (_encode(r),)) for r in ledger]
                + [("INSERT INTO outbox (kind, row) VALUES ('catalog', ?)", (_encode(r),)) for r in catalog])

    def record(self, ledger: Iterable[Row] = (), catalog: Iterable[Row] = ()) -> None:
        """Queue ledger and catalogue rows for the recorder."""
        self._transaction(self._outbox(ledger, catalog))

    def add_waiting(self, name: str, uid: str, base: Row, ledger: Iterable[Row], catalog: Iterable[Row]) -> None:
        """An instance stored in the output and waiting to be forwarded, with its rows."""
        self._transaction([("INSERT OR REPLACE INTO instances (name, sop_instance_uid, base, stow_status) "
                            "VALUES (?, ?, ?, 'pending')", (name, uid, _encode(base))),
                           *self._outbox(ledger, catalog)])

    def finish(self, name: str, ledger: Iterable[Row] = ()) -> None:
        """The instance is forwarded: forget it, and queue its last ledger rows."""
        self._transaction([("DELETE FROM instances WHERE name = ?", (name,)), *self._outbox(ledger, ())])

    def retry_later(self, name: str, reason: str, next_attempt: float, ledger: Iterable[Row] = ()) -> None:
        """A forward failed: count the attempt, say when to try again, queue the ledger rows."""
        self._transaction([("UPDATE instances SET stow_status = 'failed', stow_reason = ?, attempts = attempts + 1, "
                            "next_attempt = ? WHERE name = ?", (reason, next_attempt, name)),
                           *self._outbox(ledger, ())])

    def waiting(self, name: str) -> dict[str, Any] | None:
        """One waiting instance as a dict (``base`` decoded), or None."""
        with self._lock:
            cur = self._db.execute("SELECT name, sop_instance_uid, base, stow_status, stow_reason, attempts, "
                                   "next_attempt FROM instances WHERE name = ?", (name,))
            row = cur.fetchone()
        if row is None:
            return None
        keys = ("name", "sop_instance_uid", "base", "stow_status", "stow_reason", "attempts", "next_attempt")
        out = dict(zip(keys, row))
        out["base"] = json.loads(out["base"])
        return out

    def due(self, now: float, limit: int, exclude: Iterable[str] = ()) -> list[str]:
        """Names of waiting instances whose next attempt is due, oldest attempt first."""
        skip = set(exclude)
        with self._lock:
            rows = self._db.execute("SELECT name FROM instances WHERE next_attempt <= ? ORDER BY next_attempt, rowid "
                                    "LIMIT ?", (now, limit + len(skip))).fetchall()
        return [r[0] for r in rows if r[0] not in skip][:limit]

    def waiting_names(self) -> set[str]:
        """Every waiting instance's name."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM instances")}

    def backlog(self) -> int:
        """How many instances wait to be forwarded."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM instances").fetchone()[0])

    def drop_waiting(self, name: str) -> None:
        """Forget a waiting row whose spool file is gone."""
        self._transaction([("DELETE FROM instances WHERE name = ?", (name,))])

    def take_outbox(self, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """The oldest queued rows as (id, kind, row); they stay until ``drop_outbox``."""
        with self._lock:
            rows = self._db.execute("SELECT id, kind, row FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(i, kind, json.loads(text)) for i, kind, text in rows]

    def drop_outbox(self, ids: list[int]) -> None:
        """Delete rows the recorder has appended."""
        if ids:
            self._transaction([("DELETE FROM outbox WHERE id <= ? AND id >= ?", (max(ids), min(ids)))])

    def outbox_size(self) -> int:
        """Rows not yet appended."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
