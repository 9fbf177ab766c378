"""Run ids: one maker for every run that leaves rows behind (index runs, reassembly runs, restores, intake).

``20260101T120000123456Z-1a2b3c4d``: UTC time to the microsecond, so ids sort by time (the manifest keeps each
archive's newest index run by the largest id), then 8 random hex digits, so two runs started together differ.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"


def new_run_id(now: datetime | None = None) -> str:
    """A run id for a run started at ``now`` (default: now, UTC)."""
    now = now or datetime.now(timezone.utc)
    return now.strftime(TIME_FORMAT) + "-" + uuid.uuid4().hex[:8]


def run_id_time(run_id: str) -> datetime | None:
    """When the run ``run_id`` started (UTC), or None when it is not a run id ``new_run_id`` makes."""
    try:
        return datetime.strptime(run_id.split("-", 1)[0], TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
