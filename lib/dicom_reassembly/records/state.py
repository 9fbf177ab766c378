"""The instance state: each instance's current outcome per output, compacted from the ledger, one row per UID.

``reassemble`` reads it to plan only the instances that are not final; each run folds its own ledger rows in.

- **Final** (settled) is an outcome that a rerun on the same source cannot change, for the same output (``--out``
  and key template) and the same source fingerprint (``reassembly.scope.with_source_fingerprints``: every member of
  the UID, its location, size, archive ETag and header SHA-256): ``written``, ``skipped_existing``, ``duplicate``,
  ``orphan_*`` and ``invalid_*`` (``SETTLED``), and ``filtered_out`` by the same criteria (``criteria_sha256``).
  ``failed``, ``not_restored``, ``unreadable_archive`` (errors reading an archive) and ``conflict`` (the output may
  hold another object at the key, which an operator can clear) are planned again, and so is a changed source.
  For a run that forwards by STOW-RS, ``written`` and ``skipped_existing`` are final only once forwarded
  (``stow_status`` ``sent``), so a rerun retries a failed forward as it did before the state.
- **Layout**, beside the ledger: ``<ledger>_state/snapshots/<run_id>/`` (Parquet, one row per UID and output) and
  ``<ledger>_state/_commits/<run_id>.json``. A snapshot counts only once its commit file exists, so a run that
  dies while writing leaves an ignored folder, never a half state. Readers take the newest commit.
- **Compaction**: a run unions the newest committed snapshot (read when it writes, not when it planned) with its own
  rows and keeps, per UID and output, the row of the newest run. Two runs at once can each miss the other's rows:
  those instances are then planned again and end ``skipped_existing``; the state never claims a final outcome that
  the ledger does not hold.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import NotFoundError, StorageError
from ..io import listing, reads, uris, writes
from ..run_id import run_id_time
from .ledger import STATUSES

log = logging.getLogger(__name__)

WRITTEN = ("written", "skipped_existing")
# Outcomes that are a function of the source alone: the same fingerprint gives the same outcome again.
SETTLED = (*WRITTEN, "duplicate", "orphan_header", "orphan_pixels", "invalid_header", "invalid_pixels")
STOW_SENT = "sent"  # stow.client.SENT (records must not import stow)
FILTERED = "filtered_out"  # settled only for the same criteria (their canonical JSON's SHA-256)
# The row that speaks for a UID with several: written first, then anything a rerun must retry, then settled ones,
# so a UID is settled only when none of its rows (e.g. a transient failure beside an invalid copy) needs a retry.
STATE_RANK = (*WRITTEN, "failed", "not_restored", "unreadable_archive", "conflict", "received", "invalid_header",
              "invalid_pixels", FILTERED, "orphan_header", "orphan_pixels", "duplicate")
STATE_FIELDS: list[tuple[str, str]] = [
    ("sop_instance_uid", "string"), ("output", "string"), ("source_fingerprint", "string"), ("status", "string"),
    ("run_id", "string"), ("output_uri", "string"), ("output_bytes", "long"), ("output_checksum", "string"),
    ("finished_at", "timestamp"),
    ("criteria_sha256", "string"),  # the run's criteria (None: no criteria file); older snapshots read it as null
    ("stow_status", "string"),  # the ledger row's STOW-RS result (None: not forwarded)
]
STATE_NAMES = [n for n, _ in STATE_FIELDS]
KEEP_COMMITS = 2  # the newest and the one before, which a run that started earlier may still be reading
STALE_UNCOMMITTED = timedelta(days=7)  # a snapshot folder this old without a commit is a dead run's leftover


def state_uri_for(ledger_uri: str) -> str:
    """Where the state of a ledger lives: ``<ledger>_state``."""
    return ledger_uri.rstrip("/") + "_state"


def output_identity(out: str, key_template: str) -> str:
    """One string naming where a run's objects go: the output root and the key template, e.g. ``s3://b/dcm/{...}``.

    A local root is made absolute: the same relative ``--out`` given from another folder is another output.
    """
    return uris.join_uri(out if uris.is_s3(out) else os.path.abspath(out), key_template)


def state_schema() -> Any:
    """The state's Spark schema."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "long": T.LongType(), "timestamp": T.TimestampType()}
    return T.StructType([T.StructField(n, kinds[t], True) for n, t in STATE_FIELDS])


def _commits(state_uri: str) -> list[str]:
    """Committed run ids, oldest first."""
    try:
        found = [o for o in listing.list_objects(uris.join_uri(state_uri, "_commits"), (".json",)) if not o.error]
    except NotFoundError:
        return []
    except StorageError as exc:
        if exc.reason == "no_such_bucket":
            return []
        raise
    return sorted(uris.basename(o.uri)[: -len(".json")] for o in found)


def read_state_commit(state_uri: str) -> dict[str, Any] | None:
    """The newest commit (``run_id``, ``snapshot``, ``rows``), or None when no run has committed a state yet."""
    committed = _commits(state_uri)
    if not committed:
        return None
    data = reads.read_bytes(uris.join_uri(state_uri, "_commits", committed[-1] + ".json"))
    commit = json.loads(data)
    commit["snapshot_uri"] = uris.join_uri(state_uri, commit["snapshot"])
    return commit


def read_state(spark: Any, state_uri: str) -> Any:
    """The newest committed state as a DataFrame, or None when there is none."""
    commit = read_state_commit(state_uri)
    if commit is None:
        return None
    return spark.read.schema(state_schema()).parquet(commit["snapshot_uri"])


def read_instance_states(spark: Any, state_uri: str, output: str, criteria_sha256: str | None,
                         forwarding: bool = False) -> Any:
    """(sop_instance_uid, source_fingerprint, final) of every instance the state holds for ``output``; None without
    a state. ``final`` says settled (module docstring) for a run with criteria ``criteria_sha256`` that forwards
    by STOW-RS or not (``forwarding``)."""
    from pyspark.sql import functions as F

    state = read_state(spark, state_uri)
    if state is None:
        return None
    same_criteria = F.col("criteria_sha256") == F.lit(criteria_sha256) if criteria_sha256 else F.lit(False)
    final = F.col("status").isin(*SETTLED) | ((F.col("status") == FILTERED) & same_criteria)
    if forwarding:
        final = final & (~F.col("status").isin(*WRITTEN) | (F.col("stow_status") == F.lit(STOW_SENT)))
    return (state.filter(F.col("output") == output)
            .select("sop_instance_uid", "source_fingerprint", F.coalesce(final, F.lit(False)).alias("final")))


def read_final_instances(spark: Any, state_uri: str, output: str, criteria_sha256: str | None = None,
                         forwarding: bool = False) -> Any:
    """(sop_instance_uid, source_fingerprint) of the instances final for ``output``, or None without a state."""
    from pyspark.sql import functions as F

    states = read_instance_states(spark, state_uri, output, criteria_sha256, forwarding)
    return None if states is None else states.filter(F.col("final")).select("sop_instance_uid", "source_fingerprint")


def with_instance_states(sources: Any, output: str, criteria_sha256: str | None = None) -> Any:
    """Transform: a run's ledger rows -> its state rows, one per UID (``STATE_RANK`` picks the row that speaks).

    ``sources`` is (sop_instance_uid, source_fingerprint) of the UIDs the run planned; ``criteria_sha256`` the run's.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ranked = list(STATE_RANK) + [s for s in STATUSES if s not in STATE_RANK]
    values = {"output": F.lit(output), "criteria_sha256": F.lit(criteria_sha256).cast("string")}

    def transform(ledger: Any) -> Any:
        # A CASE chain, not array_position: Spark 3.5's Python array_position takes no Column as the value.
        rank = F.when(F.col("status") == ranked[0], 1)
        for i, status in enumerate(ranked[1:], 2):
            rank = rank.when(F.col("status") == status, i)
        rank = rank.otherwise(len(ranked) + 1)
        best = Window.partitionBy("sop_instance_uid").orderBy(rank, F.col("output_uri").asc_nulls_last())
        own = (ledger.filter(F.col("sop_instance_uid").isNotNull())
               .withColumn("_n", F.row_number().over(best)).filter(F.col("_n") == 1))
        return (own.join(sources.select("sop_instance_uid", "source_fingerprint"), "sop_instance_uid")
                .select(*[values[n].alias(n) if n in values else F.col(n) for n in STATE_NAMES]))

    return transform


def write_state(spark: Any, state_uri: str, rows: Any, run_id: str, now: datetime | None = None) -> int:
    """Fold ``rows`` (state rows of run ``run_id``) into the newest committed state; returns the state's rows.

    Writes a new snapshot, then its commit file; prunes snapshots older than the ``KEEP_COMMITS`` newest. A run
    without state rows (nothing planned) leaves the state as it is.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from ..io import arrow_io

    if rows.isEmpty():
        commit = read_state_commit(state_uri)
        log.info("run %s: no new state rows, the state is left as it is", run_id)
        return int(commit["rows"]) if commit is not None else 0
    previous = read_state(spark, state_uri)
    merged = rows.select(*STATE_NAMES) if previous is None else previous.unionByName(rows.select(*STATE_NAMES))
    newest = Window.partitionBy("sop_instance_uid", "output").orderBy(F.col("run_id").desc(),
                                                                     F.col("finished_at").desc_nulls_last())
    state = merged.withColumn("_n", F.row_number().over(newest)).filter(F.col("_n") == 1).drop("_n")
    snapshot = f"snapshots/{run_id}"
    # Our own folder (only a retry of this run is there). zstd: 94 bytes a row against snappy's 173 (measured).
    state.write.mode("overwrite").option("compression", "zstd").parquet(uris.join_uri(state_uri, snapshot))
    written = arrow_io.open_dataset(uris.join_uri(state_uri, snapshot)).count_rows()  # from the Parquet footers
    commit = {"run_id": run_id, "snapshot": snapshot, "rows": written,
              "committed_at": (now or datetime.now(timezone.utc)).isoformat()}
    writes.write_bytes(uris.join_uri(state_uri, "_commits", f"{run_id}.json"),
                       json.dumps(commit, sort_keys=True).encode("utf-8"),
                       writes.WriteOptions(content_type="application/json"))
    prune_state(state_uri, now or datetime.now(timezone.utc))
    return written


def prune_state(state_uri: str, now: datetime) -> None:
    """Drop all but the ``KEEP_COMMITS`` newest snapshots, and week-old snapshot folders no run committed."""
    committed = _commits(state_uri)
    keep = set(committed[-KEEP_COMMITS:])
    for run_id in committed[:-KEEP_COMMITS]:
        writes.delete(uris.join_uri(state_uri, "_commits", f"{run_id}.json"))  # the commit first: never a dangling one
        writes.delete_tree(uris.join_uri(state_uri, "snapshots", run_id))
    for run_id in _snapshot_folders(state_uri):
        started = run_id_time(run_id)
        if run_id not in keep and run_id not in committed and started is not None and now - started > STALE_UNCOMMITTED:
            writes.delete_tree(uris.join_uri(state_uri, "snapshots", run_id))


def _snapshot_folders(state_uri: str) -> set[str]:
    base = uris.join_uri(state_uri, "snapshots")
    try:
        objects = list(listing.list_objects(base))
    except NotFoundError:
        return set()
    prefix = base.rstrip("/") + "/"
    return {o.uri[len(prefix):].split("/", 1)[0] for o in objects if o.uri.startswith(prefix)}


def read_state_table(ledger_uri: str, columns: list[str]) -> tuple[Any, str | None]:
    """The newest committed state with ``columns`` through pyarrow (no Spark), and the run that committed it.

    (None, None) when no state has been committed.
    """
    from ..io import arrow_io

    state_uri = state_uri_for(ledger_uri)
    commit = read_state_commit(state_uri)
    if commit is None:
        return None, None
    dataset = arrow_io.open_dataset(commit["snapshot_uri"])
    return dataset.to_table(columns=columns), commit["run_id"]
