"""Restore status: each archive's ``x-amz-restore`` header read by HEAD, pending, restored (with expiry) or not."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from ..errors import StorageError
from ..io import clients
from ..io import uris as io_uris
from .plan import STATE_AVAILABLE, STATE_RESTORE, STATE_UNKNOWN, PlannedObject, RestorePlan, is_archived
from .requests import DEFAULT_WORKERS

log = logging.getLogger(__name__)
# Status states.
STATUS_PENDING = "pending"
STATUS_RESTORED = "restored"
STATUS_NOT_REQUESTED = "not_requested"  # still archived, no restore under way
STATUS_NOT_NEEDED = "not_needed"  # not in an archive class
STATUS_MISSING = "missing"
STATUS_ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class ObjectStatus:
    """The restore status of one object: what it is (from the plan, its class from HEAD), then its state."""

    uri: str
    size: int
    wave: int
    storage_class: str | None = None
    state: str
    expiry: datetime | None = None
    error: str | None = None


def _status(obj: PlannedObject, state: str, **found: Any) -> ObjectStatus:
    return ObjectStatus(uri=obj.uri, size=obj.size, wave=obj.wave, state=state, **found)


def parse_restore_header(value: str | None) -> tuple[bool | None, datetime | None]:
    """Parse S3's ``x-amz-restore`` header into (ongoing, expiry).

    ``ongoing-request="true"`` -> (True, None); ``ongoing-request="false", expiry-date="Fri, 21 Dec 2012
    00:00:00 GMT"`` -> (False, that datetime); no header -> (None, None).
    """
    if not value:
        return None, None
    fields: dict[str, str] = {}
    rest = value
    while rest:
        name, sep, rest = rest.partition("=")
        if not sep:
            break
        rest = rest.lstrip()
        if rest.startswith('"'):
            val, _, rest = rest[1:].partition('"')
        else:
            val, _, rest = rest.partition(",")
        fields[name.strip().strip(",").strip().lower()] = val
        rest = rest.lstrip().lstrip(",")
    ongoing_text = fields.get("ongoing-request", "").lower()
    ongoing = True if ongoing_text == "true" else False if ongoing_text == "false" else None
    expiry = None
    if fields.get("expiry-date"):
        try:
            expiry = parsedate_to_datetime(fields["expiry-date"])
        except (TypeError, ValueError):
            expiry = None
    return ongoing, expiry


def status_one(client: Any, obj: PlannedObject) -> ObjectStatus:
    """HEAD one object and read its Restore header; never raises for per-object problems."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not io_uris.is_s3(obj.uri) or (obj.storage_class is not None and not is_archived(obj.storage_class)):
        return _status(obj, STATUS_NOT_NEEDED, storage_class=obj.storage_class)
    try:
        bucket, key = io_uris.split_s3(obj.uri)
        r = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
        state = STATUS_MISSING if code in ("404", "NoSuchKey", "NotFound") else STATUS_ERROR
        return _status(obj, state, storage_class=obj.storage_class, error=code)
    except (BotoCoreError, StorageError) as exc:
        return _status(obj, STATUS_ERROR, storage_class=obj.storage_class, error=type(exc).__name__)
    sc = r.get("StorageClass") or "STANDARD"
    if not is_archived(sc):
        return _status(obj, STATUS_NOT_NEEDED, storage_class=sc)
    ongoing, expiry = parse_restore_header(r.get("Restore"))
    if ongoing is True:
        state = STATUS_PENDING
    elif ongoing is False:
        state = STATUS_RESTORED
    else:
        state = STATUS_NOT_REQUESTED
    return _status(obj, state, expiry=expiry, storage_class=sc)


@dataclass
class StatusReport:
    """Restore status of a set of objects, with per-state counts and bytes."""

    objects: list[ObjectStatus]

    def summary(self) -> dict[str, Any]:
        """Counts and bytes per state and per wave, and the earliest expiry of the restored copies."""
        states: dict[str, dict[str, int]] = {}
        waves: dict[str, dict[str, int]] = {}
        for s in self.objects:
            d = states.setdefault(s.state, {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += s.size
            w = waves.setdefault(str(s.wave), {})
            w[s.state] = w.get(s.state, 0) + 1
        expiries = [s.expiry for s in self.objects if s.expiry is not None]
        return {
            "objects": len(self.objects),
            "states": states,
            "waves": waves,
            "earliest_expiry": min(expiries).isoformat() if expiries else None,
            "complete": all(s.state in (STATUS_RESTORED, STATUS_NOT_NEEDED) for s in self.objects),
        }


def restore_status(objects: RestorePlan | Iterable[PlannedObject], *, include_unknown: bool = True,
                   settings: clients.S3Settings | None = None, workers: int = DEFAULT_WORKERS,
                   progress: bool = False) -> StatusReport:
    """HEAD every object to be restored and report pending, restored (with expiry) and not needed.

    ``progress`` shows a tqdm bar on stderr (CLI use).
    """
    if isinstance(objects, RestorePlan):
        todo = [o for o in objects.objects if o.state in (STATE_RESTORE, STATE_AVAILABLE)
                or (include_unknown and o.state == STATE_UNKNOWN)]
    else:
        todo = list(objects)
    todo.sort(key=lambda o: (o.wave, o.uri))
    client = clients.s3_client(settings)
    from tqdm import tqdm

    out: list[ObjectStatus] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore-status") as pool, \
            tqdm(total=len(todo), unit="obj", file=sys.stderr, disable=not progress, desc="restore status") as bar:
        for st in pool.map(lambda o: status_one(client, o), todo):
            out.append(st)
            bar.update(1)
    return StatusReport(out)
