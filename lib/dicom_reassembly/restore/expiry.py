"""Restore expiry for reassemble: which pixel archives to keep out of a run because their restored copy is gone.

A restored copy of a GLACIER object lasts ``days`` after the restore completes. An archive whose copy expired (or
expires within ``margin`` of the run's start) is not read: its instances get ``not_restored`` with a reason that
names the expiry, and come back into a plan once a newer restore request appears. Two sources, each a check that
``ReassembleRun.archive_check`` calls with the pending pixel archives:

- ``ledger_check``: the restore ledger, no request at all. The expiry is estimated as ``requested_at + days`` of the
  archive's newest successful request, which is earlier than the real one by the restore's own duration (hours):
  an archive may be held back a little early, never read after its copy is gone.
- ``head_check``: HEAD each pending archive from the executors and read S3's ``x-amz-restore`` (exact, one request
  per archive the run would read anyway; none on archives whose instances are all final).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from ..errors import NotFoundError, StorageError
from ..io import clients
from ..io import uris as io_uris
from .ledger import read_restore_ledger
from .requests import OUTCOME_ALREADY_RESTORED, OUTCOME_BATCH, OUTCOME_IN_PROGRESS, OUTCOME_REQUESTED

log = logging.getLogger(__name__)
# Outcomes after which a restored copy exists or is on its way, until about requested_at + days.
ACTIVE_OUTCOMES = (OUTCOME_REQUESTED, OUTCOME_IN_PROGRESS, OUTCOME_ALREADY_RESTORED, OUTCOME_BATCH)
DEFAULT_MARGIN = timedelta(hours=1)  # a copy expiring this soon after the run starts is not worth starting on
Check = Callable[[Any, Any], Any]


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%MZ")


def read_newest_restores(restore_ledger_uri: str) -> dict[str, dict[str, Any]]:
    """Each archive's newest successful restore request (``uri``, ``requested_at``, ``outcome``, ``days``).

    A later failed request does not count: it takes nothing away from a copy that an earlier request restored.
    """
    try:
        table = read_restore_ledger(restore_ledger_uri)
    except NotFoundError:
        return {}
    newest: dict[str, dict[str, Any]] = {}
    for row in table.select(["uri", "requested_at", "outcome", "days"]).to_pylist():
        if row["outcome"] not in ACTIVE_OUTCOMES or row["requested_at"] is None:
            continue
        prev = newest.get(row["uri"])
        if prev is None or row["requested_at"] >= prev["requested_at"]:
            newest[row["uri"]] = row
    return newest


def restored_until(row: dict[str, Any]) -> datetime:
    """About when a restore request's copy expires: ``requested_at + days``."""
    return row["requested_at"] + timedelta(days=int(row["days"] or 0))


def read_active_restores(restore_ledger_uri: str, now: datetime) -> set[str]:
    """Archives whose newest successful restore has a copy (or one on its way) that has not expired at ``now``."""
    return {uri for uri, r in read_newest_restores(restore_ledger_uri).items() if restored_until(r) > now}


def read_expired_archives(restore_ledger_uri: str, now: datetime, margin: timedelta = DEFAULT_MARGIN) -> dict[str, str]:
    """``{archive_uri: reason}`` for archives whose newest successful restore expires before ``now + margin``.

    Archives the ledger never restored (already readable, or never asked for) are not named: a read decides.
    """
    out = {}
    for uri, r in read_newest_restores(restore_ledger_uri).items():
        expiry = restored_until(r)
        if expiry > now + margin:
            continue
        verb = "expired" if expiry <= now else f"expires within {margin.total_seconds() / 3600:g} h, at"
        out[uri] = (f"restore_expired: the restored copy {verb} about {_when(expiry)} (restore requested "
                    f"{_when(r['requested_at'])} for {r['days']} days, restore ledger); restore it again")
    return out


def ledger_check(restore_ledger_uri: str, now: datetime, margin: timedelta = DEFAULT_MARGIN) -> Check:
    """A check from the restore ledger (read once, on the driver, when the run calls it)."""

    def check(spark: Any, archives: Any) -> Any:
        expired = read_expired_archives(restore_ledger_uri, now, margin)
        log.info("restore ledger: %d archives with an expired restored copy", len(expired))
        return spark.createDataFrame(sorted(expired.items()), "pixel_archive string, reason string")

    return check


def head_unavailable(uris: Iterable[str], access: clients.ArchiveAccess | None, now: datetime,
                     margin: timedelta) -> Iterator[tuple[str, str]]:
    """(uri, reason) for each S3 archive in an archive class with no restored copy that outlasts ``now + margin``."""
    from .plan import PlannedObject
    from .status import STATUS_ERROR, STATUS_NOT_REQUESTED, STATUS_PENDING, STATUS_RESTORED, status_one

    for uri in uris:
        if not uri or not io_uris.is_s3(uri):
            continue
        try:
            st = status_one(clients.client_for(uri, access), PlannedObject(uri, 0, "images", 2, "restore", "", None))
        except StorageError:
            continue  # the read will say what is wrong
        if st.state == STATUS_NOT_REQUESTED:
            yield uri, (f"restore_expired: in {st.storage_class} with no restored copy (its restore expired or was "
                        "never requested; HEAD); restore it again")
        elif st.state == STATUS_PENDING:
            yield uri, "restore_pending: its restore is still in progress (HEAD)"
        elif st.state == STATUS_RESTORED and st.expiry is not None and st.expiry <= now + margin:
            yield uri, (f"restore_expired: the restored copy expires at {_when(st.expiry)}, within "
                        f"{margin.total_seconds() / 3600:g} h of the run's start (HEAD); restore it again")
        elif st.state == STATUS_ERROR:
            log.debug("HEAD %s failed: %s", uri, st.error)


def head_check(access: clients.ArchiveAccess | None, now: datetime, margin: timedelta = DEFAULT_MARGIN) -> Check:
    """A check by HEAD on the executors, one request per pending pixel archive; the refused ones are collected."""

    def check(spark: Any, archives: Any) -> Any:
        rdd = archives.rdd.map(lambda r: r[0]).mapPartitions(lambda it: head_unavailable(it, access, now, margin))
        found = rdd.collect()  # few, and collected once so the HEADs are not made again when the plan is reused
        log.info("HEAD: %d pending archives have no usable restored copy", len(found))
        return spark.createDataFrame(sorted(found), "pixel_archive string, reason string")

    return check
