"""Where a campaign stands, read from ``work`` alone: instance states, restores, bytes, and an ETA.

- **States**: the newest outcome of each instance in the ledger (the rows of its newest run; a ``duplicate``
  row, which names a spare copy, gives way to the instance's own row). ``written`` and ``skipped_existing`` are
  done; ``not_restored`` and ``failed`` are left, with the instances the manifest holds and no run has reached;
  the other statuses are settled (they change only if the delivery does).
- **Bytes** are input bytes (header and pixel members, from the manifest), so done and left compare.
- **ETA**: bytes left over the throughput of the reassemble runs that wrote something (runs table timings).
  It is an upper bound while criteria have not filtered the instances left.
- **Restores**: the newest restore-ledger row per archive; a copy's expiry is estimated as requested_at + days
  (its real expiry is later by the restore time). ``head`` replaces the estimate by S3's ``Restore`` header
  for up to ``head_limit`` archives (it needs the input credentials).

The ledger is read with pyarrow in one process: fine to hundreds of millions of rows. Beyond that, read a state
table that the ledger feeds (issue 19 item 1) in ``read_instance_states``, the only function that reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from ..emr.layout import work_layout
from ..errors import NotFoundError, StorageError
from ..io import listing, uris
from ..records.ledger import STATUSES
from ..units import human_bytes

log = logging.getLogger(__name__)

DONE = ("written", "skipped_existing")
LEFT = ("not_restored", "failed")
PENDING = "pending"  # in the manifest, no ledger row yet
WAITING_OUTCOMES = ("requested", "in_progress", "batch")


def _dataset_table(uri: str, columns: list[str]) -> Any:
    """A Parquet dataset's columns, or None when there is none yet."""
    from ..io import arrow_io

    try:
        if uris.is_s3(uri):
            if not any(True for _ in listing.list_objects(uri, (".parquet",))):
                return None
        else:
            import os

            if not os.path.isdir(uri):
                return None
        dataset = arrow_io.open_dataset(uri, partitioning="hive")
    except (FileNotFoundError, NotFoundError):
        return None
    names = set(dataset.schema.names)
    if not dataset.files:
        return None
    return dataset.to_table(columns=[c for c in columns if c in names])


def _has_objects(uri: str) -> bool:
    """True when anything was written under ``uri`` (a typo in --work must not read as an empty campaign)."""
    import os

    if uris.is_s3(uri):
        return any(True for _ in listing.list_objects(uri))
    return os.path.isdir(uri) and any(files for _, _, files in os.walk(uri))


def read_instance_states(ledger_uri: str) -> Any:
    """A table of (sop_instance_uid, run_id, status, output_bytes): each instance's newest outcome."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _dataset_table(ledger_uri, ["run_id", "sop_instance_uid", "status", "output_bytes"])
    if table is None or table.num_rows == 0:
        return pa.table({"sop_instance_uid": pa.array([], pa.string()), "run_id": pa.array([], pa.string()),
                         "status": pa.array([], pa.string()), "output_bytes": pa.array([], pa.int64())})
    table = table.filter(pc.is_valid(table.column("sop_instance_uid")))
    if "output_bytes" not in table.column_names:
        table = table.append_column("output_bytes", pa.nulls(table.num_rows, pa.int64()))
    table = table.set_column(table.column_names.index("run_id"), "run_id", table.column("run_id").cast(pa.string()))
    newest = table.group_by("sop_instance_uid").aggregate([("run_id", "max")])
    table = table.join(newest, "sop_instance_uid").filter(pc.equal(pc.field("run_id"), pc.field("run_id_max")))
    # One state per instance: its own row before the rows of spare copies, then the status order.
    rank = {s: (len(STATUSES) if s == "duplicate" else i) for i, s in enumerate(STATUSES)}
    ranks = pa.array([rank.get(s, len(STATUSES) + 1) for s in table.column("status").to_pylist()], pa.int32())
    table = table.append_column("rank", ranks)
    best = table.group_by("sop_instance_uid").aggregate([("rank", "min")])
    table = table.join(best, "sop_instance_uid").filter(pc.equal(pc.field("rank"), pc.field("rank_min")))
    table = table.group_by(["sop_instance_uid", "run_id", "status"]).aggregate([("output_bytes", "max")])
    return table.rename_columns(["sop_instance_uid", "run_id", "status", "output_bytes"])


def read_instance_bytes(manifest_uri: str) -> dict[str, int]:
    """Input bytes (header + pixel members) per instance, from the newest index of each archive."""
    import pyarrow.dataset as pads

    from ..io import arrow_io

    try:
        table = arrow_io.read_manifest_table(manifest_uri, ["sop_instance_uid", "size"],
                                             pads.field("kind").isin(["header", "pixels"]))
    except NotFoundError:
        return {}
    sums = table.group_by("sop_instance_uid").aggregate([("size", "sum")])
    return {u: int(s or 0) for u, s in zip(sums.column("sop_instance_uid").to_pylist(),
                                           sums.column("size_sum").to_pylist()) if u}


def read_throughput(runs_uri: str, states: Any, sizes: dict[str, int], ledger_uri: str) -> dict[str, Any]:
    """Input bytes per second of the reassemble runs that wrote something (runs table and ledger)."""
    import pyarrow.compute as pc

    runs = _dataset_table(runs_uri, ["run_id", "job", "started_at", "finished_at"])
    ledger = _dataset_table(ledger_uri, ["run_id", "sop_instance_uid", "status"])
    if runs is None or ledger is None:
        return {"runs": 0, "bytes": 0, "seconds": 0.0, "bytes_per_second": None}
    written = ledger.filter(pc.equal(ledger.column("status"), "written"))
    by_run: dict[str, int] = {}
    for run_id, uid in zip(written.column("run_id").to_pylist(), written.column("sop_instance_uid").to_pylist()):
        by_run[str(run_id)] = by_run.get(str(run_id), 0) + sizes.get(uid, 0)
    total_bytes, seconds, counted = 0, 0.0, 0
    for row in runs.to_pylist():
        if row.get("job") not in (None, "reassemble") or not by_run.get(str(row["run_id"])):
            continue
        if row.get("started_at") is None or row.get("finished_at") is None:
            continue
        counted += 1
        total_bytes += by_run[str(row["run_id"])]
        seconds += max(0.001, (row["finished_at"] - row["started_at"]).total_seconds())
    return {"runs": counted, "bytes": total_bytes, "seconds": round(seconds, 3),
            "bytes_per_second": (total_bytes / seconds) if seconds else None}


def read_restore_state(restore_ledger_uri: str, now: datetime, expiring_hours: float,
                       head: Callable[[list[str]], dict[str, tuple[str, datetime | None]]] | None = None,
                       head_limit: int = 1000) -> dict[str, Any]:
    """Archives waiting for their restore, and restored copies expiring within ``expiring_hours``."""
    from ..restore import ledger as restore_ledger

    try:
        table = restore_ledger.read_restore_ledger(restore_ledger_uri)
    except NotFoundError:
        table = None
    newest: dict[str, dict[str, Any]] = {}
    for row in ([] if table is None else table.select(["uri", "requested_at", "outcome", "days", "wave",
                                                          "size"]).to_pylist()):
        prev = newest.get(row["uri"])
        if prev is None or (row["requested_at"] or now) >= (prev["requested_at"] or now):
            newest[row["uri"]] = row
    outcomes: dict[str, int] = {}
    for r in newest.values():
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    live = {u: r for u, r in newest.items() if r["outcome"] in (*WAITING_OUTCOMES, "already_restored")
            and r["requested_at"] is not None and r["requested_at"] + timedelta(days=int(r["days"] or 0)) > now}
    horizon = now + timedelta(hours=expiring_hours)
    source = "estimated"
    states: dict[str, tuple[str, datetime | None]] = {}
    if head is not None and live and len(live) <= head_limit:
        states = head(sorted(live))
        source = "head"
    waiting, expiring = [], []
    for uri, r in sorted(live.items()):
        if uri in states:
            state, expiry = states[uri]
        else:
            state, expiry = "unknown", r["requested_at"] + timedelta(days=int(r["days"] or 0))
        if state in ("pending", "not_requested") or (state == "unknown" and r["outcome"] in WAITING_OUTCOMES):
            waiting.append({"uri": uri, "wave": r["wave"], "requested_at": r["requested_at"].isoformat()})
        if expiry is not None and expiry <= horizon and state in ("restored", "unknown"):
            expiring.append({"uri": uri, "expiry": expiry.isoformat()})
    return {"archives": len(newest), "outcomes": outcomes, "waiting": len(waiting), "waiting_examples": waiting[:5],
            "expiring_soon": len(expiring), "expiring_examples": expiring[:5], "expiry_source": source,
            "expiring_hours": expiring_hours}


def campaign_status(work: str, *, now: datetime | None = None, expiring_hours: float = 24.0,
                    head: Callable[[list[str]], dict[str, tuple[str, datetime | None]]] | None = None,
                    head_limit: int = 1000) -> dict[str, Any]:
    """Everything ``campaign status`` shows, as a JSON-safe dict."""
    now = now or datetime.now(timezone.utc)
    layout = work_layout(work, s3_only=False)
    if not _has_objects(layout.work):
        raise NotFoundError("campaign_not_found", "no manifest, ledger or restore ledger here yet", uri=work)
    states = read_instance_states(layout.ledger)
    try:
        sizes = read_instance_bytes(layout.manifest)
    except StorageError as exc:
        log.warning("manifest unreadable: %s", exc)
        sizes = {}
    counts: dict[str, int] = {}
    bytes_done = 0
    output_bytes = 0
    reached: set[str] = set()
    uids = states.column("sop_instance_uid").to_pylist()
    for uid, status, out in zip(uids, states.column("status").to_pylist(), states.column("output_bytes").to_pylist()):
        counts[status] = counts.get(status, 0) + 1
        reached.add(uid)
        if status in DONE:
            bytes_done += sizes.get(uid, 0)
            output_bytes += int(out or 0)
    pending = [u for u in sizes if u not in reached]
    if pending:
        counts[PENDING] = len(pending)
    left_uids = pending + [u for u, s in zip(uids, states.column("status").to_pylist()) if s in LEFT]
    bytes_left = sum(sizes.get(u, 0) for u in left_uids)
    throughput = read_throughput(layout.runs, states, sizes, layout.ledger)
    rate = throughput["bytes_per_second"]
    done = sum(counts.get(s, 0) for s in DONE)
    left = len(left_uids)
    return {
        "work": work, "at": now.isoformat(), "instances": sum(counts.values()), "states": dict(sorted(counts.items())),
        "done": done, "left": left, "settled": sum(counts.values()) - done - left,
        "bytes_done": bytes_done, "bytes_left": bytes_left, "output_bytes": output_bytes,
        "throughput": throughput,
        "eta_seconds": (round(bytes_left / rate, 1) if rate and bytes_left else (0.0 if not bytes_left else None)),
        "restores": read_restore_state(layout.restore_ledger, now, expiring_hours, head, head_limit),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no reassemble run has written anything yet)"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d {h}h {m}m" if days else f"{h}h {m}m {s}s" if h else f"{m}m {s}s"


def format_status(summary: dict[str, Any], width: int = 40) -> str:
    """The status for a person: a progress bar over the instances, then states, bytes, ETA and restores."""
    from tqdm import tqdm

    total = summary["done"] + summary["left"]
    lines = [f"campaign {summary['work']} at {summary['at']}"]
    bar = tqdm.format_meter(summary["done"], total or 1, 0, ncols=width + 40, prefix="instances done",
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}")
    lines.append(bar)
    lines.append(f"{'state':<20}{'instances':>12}")
    for state, n in summary["states"].items():
        lines.append(f"{state:<20}{n:>12,}")
    lines.append(f"bytes done {human_bytes(summary['bytes_done'])}, left {human_bytes(summary['bytes_left'])} "
                 f"(input bytes; {human_bytes(summary['output_bytes'])} written)")
    rate = summary["throughput"]["bytes_per_second"]
    lines.append(f"throughput {human_bytes(rate) + '/s' if rate else 'unknown'} over {summary['throughput']['runs']} "
                 f"runs; ETA {_duration(summary['eta_seconds'])}")
    r = summary["restores"]
    lines.append(f"restores: {r['archives']} archives in the restore ledger "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(r['outcomes'].items())) or 'none'}); "
                 f"waiting {r['waiting']}; expiring within {r['expiring_hours']:g} h: {r['expiring_soon']} "
                 f"({r['expiry_source']})")
    for e in r["expiring_examples"]:
        lines.append(f"  expires {e['expiry']}  {e['uri']}")
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    """The status for machines."""
    return json.dumps(summary, indent=2, sort_keys=True, default=str)
