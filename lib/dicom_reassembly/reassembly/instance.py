"""One instance through the pipeline's own rules, without Spark: the ``uid`` and ``pair`` commands.

``plan_instance`` decides on all copies of the members (identical duplicates, conflicts, orphans, invalid
members), and the instance's work item goes through ``reassemble_partition`` as on an executor: pixel copies
compared by content, assembly, a create-exclusive write. The ledger rows that come out are the pipeline's;
``outcome`` picks the one that is the instance's fate, the others become notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..manifest.lookup import Members
from ..records.ledger import ledger_row, row_dict
from .executor import TaskSettings, reassemble_partition
from .plan import PENDING, PLAN_NAMES, plan_instance
from .writes import WritePolicy

# The instance's fate is its most decisive row: a written object, else a conflict, else why it failed.
_PRECEDENCE = ("written", "skipped_existing", "conflict", "invalid_header", "invalid_pixels", "unreadable_archive",
               "not_restored", "failed", "orphan_header", "orphan_pixels")
_LOCATION_FIELDS = ("sop_instance_uid", "header_archive", "header_member", "pixel_archive", "pixel_member",
                    "study_instance_uid", "series_instance_uid")


@dataclass
class Outcome:
    """The instance's ledger row (None when no member was found at all) and the other members' rows."""

    row: dict[str, Any] | None
    others: list[dict[str, Any]] = field(default_factory=list)


def reassemble_members(uid: str, members: Members, out: str, *, replace: bool = False) -> list[dict[str, Any]]:
    """The ledger rows (as dicts) the pipeline would give ``uid``'s members, writing to ``out``/<uid>.dcm.

    ``replace`` replaces an earlier, different object of this instance at the key (``skip_existing: false``).
    """
    task = TaskSettings(run_id="cli", writes=WritePolicy(out=out, skip_existing=not replace, upload_threads=1))
    rows: list[dict[str, Any]] = []
    for plan in plan_instance(uid, members.headers, members.pixels):
        item = dict(zip(PLAN_NAMES, plan))
        if item["status"] == PENDING:
            rows += [row_dict(r) for r in reassemble_partition([item], task)]
        else:
            rows.append(row_dict(ledger_row(task.run_id, item["status"], item["reason"],
                                            **{k: item.get(k) for k in _LOCATION_FIELDS})))
    return rows


def outcome(rows: list[dict[str, Any]]) -> Outcome:
    """The instance's row among ``rows``; rows that repeat its status and reason (copies) are not kept."""
    ranked = [r for r in rows if r["status"] in _PRECEDENCE]
    if not ranked:
        return Outcome(None, rows)
    main = min(ranked, key=lambda r: (_PRECEDENCE.index(r["status"]), r["header_member"] is None))
    others = [r for r in rows if r is not main and (r["status"], r["reason"]) != (main["status"], main["reason"])]
    return Outcome(main, others)


def location(row: dict[str, Any]) -> str:
    """The members a row names, for a message."""
    parts = []
    if row.get("header_member"):
        parts.append(f"header {row['header_archive']}:{row['header_member']}")
    if row.get("pixel_member"):
        parts.append(f"pixels {row['pixel_archive']}:{row['pixel_member']}")
    return ", ".join(parts)
