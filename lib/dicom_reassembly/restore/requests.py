"""Restore requests: RestoreObject for each planned archive, rate-limited and idempotent, each recorded.

In progress (409) and already restored (200) are outcomes, not errors, so a re-run is harmless; every
per-object failure becomes a ledger row with its error code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigError, StorageError
from ..io import clients
from ..io import uris as io_uris
from ..io.throttle import TokenBucket
from ..run_id import new_run_id
from .ledger import write_restore_ledger
from .plan import PlannedObject, RestorePlan

log = logging.getLogger(__name__)
TIERS = ("Bulk", "Standard", "Expedited")
# Request outcomes recorded in the restore ledger.
OUTCOME_REQUESTED = "requested"  # 202: a new restore started
OUTCOME_ALREADY_RESTORED = "already_restored"  # 200: a restored copy exists (its expiry was extended)
OUTCOME_IN_PROGRESS = "in_progress"  # 409 RestoreAlreadyInProgress
OUTCOME_NOT_ARCHIVED = "not_archived"  # 403 InvalidObjectState: not in an archive class, readable as is
OUTCOME_BATCH = "batch"  # handed to an S3 Batch Operations job
OUTCOME_ERROR = "error"
DEFAULT_RATE = 100.0  # RestoreObject requests/s; AWS allows 1,000 per account and Region, shared by all callers
DEFAULT_WORKERS = 16
_LEDGER_FLUSH_ROWS = 50_000
_MAX_DETAIL = 300


@dataclass
class RequestReport:
    """What a ``request_restores`` run did."""

    run_id: str
    outcomes: dict[str, int]
    bytes_requested: int
    ledger_files: list[str]
    error_codes: dict[str, int]


def check_request_args(tier: str, days: int) -> None:
    if tier not in TIERS:
        raise ConfigError("bad_tier", f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    if not isinstance(days, int) or days < 1:
        raise ConfigError("bad_days", f"days must be a whole number >= 1, got {days!r}")


def restore_one(client: Any, obj: PlannedObject, tier: str, days: int) -> dict[str, Any]:
    """Issue one RestoreObject and classify the answer; never raises for per-object problems."""
    from botocore.exceptions import BotoCoreError, ClientError

    row: dict[str, Any] = {"uri": obj.uri, "role": obj.role, "wave": obj.wave, "size": obj.size,
                           "storage_class": obj.storage_class, "tier": tier, "days": days,
                           "requested_at": datetime.now(timezone.utc)}
    if (obj.storage_class or "").upper() == "DEEP_ARCHIVE" and tier == "Expedited":
        return dict(row, outcome=OUTCOME_ERROR, error_code="tier_not_supported",
                    error_detail="Expedited retrieval is not available for DEEP_ARCHIVE")
    try:
        bucket, key = io_uris.split_s3(obj.uri)
        resp = client.restore_object(Bucket=bucket, Key=key,
                                     RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or "ClientError"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "RestoreAlreadyInProgress":
            outcome = OUTCOME_IN_PROGRESS
        elif code == "InvalidObjectState":
            outcome = OUTCOME_NOT_ARCHIVED
        else:
            outcome = OUTCOME_ERROR
        return dict(row, outcome=outcome, http_status=status, error_code=code,
                    error_detail=str(err.get("Message", ""))[:_MAX_DETAIL])
    except (BotoCoreError, StorageError) as exc:
        return dict(row, outcome=OUTCOME_ERROR, error_code=type(exc).__name__, error_detail=str(exc)[:_MAX_DETAIL])
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    outcome = OUTCOME_ALREADY_RESTORED if status == 200 else OUTCOME_REQUESTED
    return dict(row, outcome=outcome, http_status=status)


def request_restores(objects: RestorePlan | Iterable[PlannedObject], tier: str = "Bulk", days: int = 7,
                     rate: float = DEFAULT_RATE, ledger_uri: str | None = None, *, include_unknown: bool = True,
                     wave: int | None = None, workers: int = DEFAULT_WORKERS, settings: clients.S3Settings | None = None,
                     bucket: TokenBucket | None = None, run_id: str | None = None,
                     flush_rows: int = _LEDGER_FLUSH_ROWS) -> RequestReport:
    """Issue RestoreObject for each object (headers first), rate-limited, and record each in the ledger.

    In progress (409) and already restored (200) are outcomes, not errors, so a re-run is harmless. Every
    per-object failure becomes a ledger row with its error code; nothing here raises for one object.
    """
    check_request_args(tier, days)
    if isinstance(objects, RestorePlan):
        todo = objects.to_restore(include_unknown, wave)
    else:
        todo = sorted((o for o in objects if wave is None or o.wave == wave), key=lambda o: (o.wave, o.uri))
    run_id = run_id or new_run_id()
    limiter = bucket or TokenBucket(rate)
    client = clients.s3_client(settings)

    def one(obj: PlannedObject) -> dict[str, Any]:
        limiter.acquire()
        return restore_one(client, obj, tier, days)

    outcomes: dict[str, int] = {}
    codes: dict[str, int] = {}
    files: list[str] = []
    pending: list[dict[str, Any]] = []
    requested_bytes = 0
    chunk = max(1, min(flush_rows, 10_000))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore") as pool:
        for start in range(0, len(todo), chunk):
            for row in pool.map(one, todo[start:start + chunk]):
                row["run_id"] = run_id
                outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
                if row["outcome"] == OUTCOME_REQUESTED:
                    requested_bytes += row["size"]
                if row.get("error_code") and row["outcome"] == OUTCOME_ERROR:
                    codes[row["error_code"]] = codes.get(row["error_code"], 0) + 1
                pending.append(row)
            if ledger_uri and len(pending) >= flush_rows:
                files.append(write_restore_ledger(pending, ledger_uri, run_id, len(files)))
                pending = []
    if ledger_uri and pending:
        files.append(write_restore_ledger(pending, ledger_uri, run_id, len(files)))
    log.info("restore run %s: %s", run_id, ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())) or "nothing")
    return RequestReport(run_id, outcomes, requested_bytes, files, codes)


