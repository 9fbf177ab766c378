"""One reassembly run, end to end: plan, write, ledger, conservation, computations, runs table."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from ..config import Config
from ..errors import ReassemblyError
from ..manifest.spark import read_manifest
from ..records.ledger import STATUSES, ledger_schema, with_status_counts, with_unaccounted_members
from ..run_id import new_run_id
from ..selection.tranche import Tranche
from .executor import TaskSettings, reassemble_partition
from .plan import PENDING
from .reads import ReadTuning
from .scope import RunScope, with_run_scope, with_source_fingerprints, with_unavailable_archives
from .tasks import PartitionPolicy, plan_reassembly_tasks, read_manifest_bytes, shuffle_partitions_for
from .transforms import (
    with_archive_locality,
    with_instance_plan,
    with_ledger_columns,
    with_manifest_damage,
    with_members_by_uid,
)
from .writes import WritePolicy

log = logging.getLogger(__name__)

WRITTEN = ("written", "skipped_existing")
# (spark, pending pixel archives as a one-column DataFrame) -> (pixel_archive, reason) of those not to read.
ArchiveCheck = Callable[[Any, Any], Any]


@dataclass
class ReassembleRun:
    """Everything one run needs; ``execute`` does the run and returns its summary."""

    spark: Any
    manifest_uri: str
    out: str | None
    ledger_uri: str
    runs_uri: str
    computations_uri: str
    cfg: Config
    spec: Any = None  # criteria.CriteriaSpec
    stow: Any = None  # stow.StowSettings
    stow_auth: Any = None  # stow.StowAuth, read from the driver's environment
    jdbc: Any = None  # tables.JdbcTarget
    catalog_uri: str | None = None  # the catalogue of stored objects; None writes none
    only: str | None = None  # a UID list (records.cohort): the run is restricted to these instances
    argv: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    tranche: Tranche | None = None
    state_uri: str | None = None  # records.state: updated with this run's outcomes; None: no state at all
    skip_final: bool = True  # plan only the instances the state does not hold final for this output
    archive_check: ArchiveCheck | None = None  # restore expiry: archives kept out of the plan

    def task_settings(self, run_id: str) -> TaskSettings:
        """The picklable settings the executors get; the criteria's credentials go only as archive access."""
        cfg = self.cfg
        return TaskSettings(
            run_id=run_id,
            writes=WritePolicy(out=self.out, key_template=cfg.key_template, write_options=cfg.write_options(),
                               skip_existing=cfg.skip_existing, existing_check=cfg.existing_check,
                               put_rate=cfg.put_rate, upload_threads=cfg.upload_threads),
            reads=ReadTuning(stream_fraction=cfg.stream_fraction, coalesce_gap=cfg.coalesce_gap,
                             large_member_bytes=cfg.large_member_bytes),
            access=self.spec.access if self.spec is not None else None,
            max_header_bytes=cfg.max_header_bytes, stow=self.stow, stow_auth=self.stow_auth,
        )

    def execute(self) -> dict[str, Any]:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from ..selection.criteria import first_failure_json

        run_id = new_run_id(self.started)
        self.size_shuffle()
        manifest = read_manifest(self.spark, self.manifest_uri)
        not_listed = 0
        if self.only:
            manifest, not_listed = self.restrict_to_list(manifest)
        pending_restore = count_pending_restore(manifest)
        scope = self.read_scope(manifest)
        # Executors get the criteria alone: the spec itself holds the input credentials.
        select = partial(first_failure_json, self.spec.criteria) if self.spec is not None and self.spec.criteria else None
        plan = (scope.members(manifest).transform(with_members_by_uid)
                .transform(with_instance_plan(select, pending_restore))
                .persist(StorageLevel.MEMORY_AND_DISK))
        try:
            plan_now = self.with_available_archives(plan)
            skipped = skipped_archives(plan_now, manifest)
            log.info("run %s: %d of %d image archives need no read (%d bytes)", run_id,
                     skipped["archives_skipped"], skipped["archives_total"], skipped["bytes_skipped"])
            partitions, task_keys = plan_reassembly_tasks(plan_now, self.cfg.reassemble_partitions, self.cfg.task_bytes)
            ledger = reassemble_ledger(plan_now, scope.damage_source(manifest), self.task_settings(run_id),
                                       datetime.now(timezone.utc), partitions, task_keys)
            ledger.write.mode("append").partitionBy("run_id").parquet(self.ledger_uri)
            catalogued = self.write_catalog(plan, run_id)
        finally:
            plan.unpersist()
        run_ledger = self.spark.read.parquet(self.ledger_uri).filter(F.col("run_id") == run_id)
        counts = {r["status"]: int(r["rows"]) for r in with_status_counts(run_ledger).collect()}
        unaccounted = with_unaccounted_members(scope.expected_members(manifest), run_ledger)
        missing = unaccounted.count()
        examples = [f"{r['archive_uri']}:{r['member_name']}" for r in unaccounted.limit(5).collect()] if missing else []
        state_rows = self.write_state(run_ledger, scope, run_id)
        scope.release()
        computations = self.run_computations(run_ledger, run_id)
        finished = datetime.now(timezone.utc)
        summary = {
            "run_id": run_id, "status_counts": counts, "unaccounted_members": missing, "unaccounted_examples": examples,
            "pending_restore_archives": sum(pending_restore.values()), "computations": computations, **skipped,
            "catalog": catalogued, "listed_not_in_manifest": not_listed,
            **scope.counts, "tranche": str(self.tranche) if self.tranche else None, "state_rows": state_rows,
            "started_at": self.started, "finished_at": finished,
        }
        self.write_tables(run_ledger, summary)
        return summary

    def restrict_to_list(self, manifest: Any) -> tuple[Any, int]:
        """The manifest restricted to the listed UIDs (``--only``), and how many listed UIDs it does not hold."""
        from pyspark.sql import functions as F

        from ..records.cohort import read_uid_list_df
        from .transforms import with_listed_uids

        listed = read_uid_list_df(self.spark, self.only)
        held = manifest.filter(F.col("kind") != "archive").select("sop_instance_uid")
        missing = listed.join(held, "sop_instance_uid", "left_anti").count()
        if missing:
            log.warning("%d UID(s) of %s are not in the manifest", missing, self.only)
        return manifest.transform(with_listed_uids(listed)), missing

    def write_catalog(self, plan: Any, run_id: str) -> dict[str, int] | None:
        """The catalogue rows of the objects this run stored, written and compacted (after the ledger write)."""
        from pyspark.sql import functions as F

        from ..records.catalog_spark import write_catalog
        from .catalog_rows import replaces_objects, with_catalog_rows

        if not self.catalog_uri or not self.out:
            return None
        run_ledger = self.spark.read.parquet(self.ledger_uri).filter(F.col("run_id") == run_id)
        rows = run_ledger.transform(with_catalog_rows(plan, os.getcwd()))
        return write_catalog(self.spark, rows, self.catalog_uri, anywhere=replaces_objects(run_ledger))

    def output_identity(self) -> str | None:
        """What the state calls this run's output (None when it writes no objects: no state then)."""
        from ..records.state import output_identity

        return output_identity(self.out, self.cfg.key_template) if self.out else None

    def read_scope(self, manifest: Any) -> RunScope:
        """The UIDs this run plans: its tranche's, minus those final for this output in the state."""
        from pyspark import StorageLevel

        from ..records.state import read_instance_states

        output = self.output_identity()
        if not (self.state_uri and output) and self.tranche is None:
            return RunScope.whole()  # no state to read or write, no tranche: the fingerprints would go unused
        use = self.state_uri and output and self.skip_final
        states = (read_instance_states(self.spark, self.state_uri, output, self.criteria_sha256(),
                                       forwarding=self.stow is not None) if use else None)
        flagged = (manifest.transform(with_source_fingerprints).transform(with_run_scope(self.tranche, states))
                   .persist(StorageLevel.MEMORY_AND_DISK))
        return RunScope.of(flagged, self.tranche, narrowed=states is not None or self.tranche is not None)

    def criteria_sha256(self) -> str | None:
        """The SHA-256 of the criteria alone (never the input credentials), or None without a criteria file."""
        return self.spec.sha256() if self.spec is not None else None

    def with_available_archives(self, plan: Any) -> Any:
        """The plan with work on archives the check refuses (an expired restore) made ``not_restored``."""
        from pyspark.sql import functions as F

        if self.archive_check is None:
            return plan
        needed = plan.filter(F.col("status") == PENDING).select("pixel_archive").distinct()
        unavailable = self.archive_check(self.spark, needed)
        return plan.transform(with_unavailable_archives(unavailable))

    def write_state(self, run_ledger: Any, scope: RunScope, run_id: str) -> int | None:
        """Fold this run's outcomes into the state (``records.state``); the state's row count, or None without one."""
        from ..records.state import with_instance_states, write_state

        output = self.output_identity()
        if not self.state_uri or not output:
            return None
        rows = run_ledger.transform(with_instance_states(scope.todo, output, self.criteria_sha256()))
        return write_state(self.spark, self.state_uri, rows, run_id)

    def size_shuffle(self) -> None:
        """Size the UID join's shuffle from the manifest, unless the configuration pins it."""
        key = "spark.sql.shuffle.partitions"
        if key in self.cfg.spark or self.spark.conf.get(key) != "200":  # 200: Spark's default, i.e. not pinned
            return
        cores = self.spark.sparkContext.defaultParallelism
        policy = PartitionPolicy(minimum=2 * cores, default=2 * cores)
        n = shuffle_partitions_for(manifest_bytes=read_manifest_bytes(self.manifest_uri), policy=policy)
        self.spark.conf.set(key, str(n))
        log.info("shuffle partitions derived from the manifest size: %d", n)

    def run_computations(self, run_ledger: Any, run_id: str) -> dict[str, int]:
        """Per-series computations over the selected, written instances; recorded in their table."""
        from pyspark.sql import functions as F

        from ..records.computations import computations_schema, run_computations_partition
        from ..records.tables import write_table

        if not self.out or not self.cfg.computations:
            return {}
        series = (run_ledger.filter(F.col("status").isin(*WRITTEN) & F.col("series_instance_uid").isNotNull())
                  .groupBy("series_instance_uid").agg(F.sort_array(F.collect_list("output_uri")).alias("uris")))
        names, out = list(self.cfg.computations), self.out
        rdd = series.rdd.map(lambda r: (r["series_instance_uid"], list(r["uris"]))).mapPartitions(
            lambda rows: run_computations_partition(rows, names, out, run_id))
        df = self.spark.createDataFrame(rdd, computations_schema())
        write_table(df, "computations", self.computations_uri, self.jdbc)
        done = self.spark.read.parquet(self.computations_uri).filter(F.col("run_id") == run_id)
        return {r["status"]: int(r["count"]) for r in done.groupBy("status").count().collect()}

    def write_tables(self, run_ledger: Any, summary: dict[str, Any]) -> None:
        """The runs row always; the ledger too when PostgreSQL is configured."""
        from ..records.tables import build_runs_df, scrub_arguments, write_table

        row = {
            "run_id": summary["run_id"], "job": "reassemble", "started_at": summary["started_at"],
            "finished_at": summary["finished_at"], "arguments": json.dumps(scrub_arguments(self.argv)),
            "criteria_json": self.spec.to_public_json() if self.spec is not None else None,
            "criteria_sha256": self.spec.sha256() if self.spec is not None else None,
            "status_counts": json.dumps(summary["status_counts"], sort_keys=True),
            "archives_total": summary["archives_total"], "archives_skipped": summary["archives_skipped"],
            "bytes_skipped": summary["bytes_skipped"], "spark_version": self.spark.version,
        }
        write_table(build_runs_df(self.spark, row), "runs", self.runs_uri, self.jdbc)
        if self.jdbc is not None:
            from ..records.tables import write_jdbc

            write_jdbc(run_ledger, "ledger", self.jdbc)

    @staticmethod
    def report(summary: dict[str, Any]) -> str:
        """The end-of-run summary a person reads."""
        lines = [f"run {summary['run_id']}"]
        counts = summary["status_counts"]
        for status in STATUSES:
            if counts.get(status):
                lines.append(f"  {status:<18} {counts[status]}")
        lines.append(f"  {'total':<18} {sum(counts.values())}")
        if summary["unaccounted_members"]:
            lines.append(f"CONSERVATION FAILED: {summary['unaccounted_members']} manifest members have no ledger row, "
                         f"e.g. {', '.join(summary['unaccounted_examples'])}")
        else:
            lines.append("conservation: every manifest member is accounted for in the ledger")
        lines.extend(scope_lines(summary))
        lines.append(f"image archives not read: {summary['archives_skipped']} of {summary['archives_total']} "
                     f"({summary['bytes_skipped']} bytes)")
        if summary["pending_restore_archives"]:
            lines.append(f"archives still in Glacier: {summary['pending_restore_archives']} (re-run build_manifest after restore)")
        if summary.get("listed_not_in_manifest"):
            lines.append(f"listed UIDs not in the manifest: {summary['listed_not_in_manifest']}")
        if summary.get("catalog"):
            cat = summary["catalog"]
            lines.append(f"catalogue: {cat['rows']} row(s) written, {cat['partitions_compacted']} partition(s) compacted")
        if summary["computations"]:
            lines.append("computations: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["computations"].items())))
        return "\n".join(lines)


__all__ = ["ReassembleRun", "ReassemblyError"]


def scope_lines(summary: dict[str, Any]) -> list[str]:
    """The report's lines on what the run left alone: instances final from earlier runs, and outside its tranche."""
    lines = []
    if summary.get("carried_over"):
        lines.append(f"carried over: {summary['carried_over']} instances final from earlier runs (state), not planned; "
                     "their members are accounted for there")
    if summary.get("tranche"):
        lines.append(f"tranche {summary['tranche']}: {summary.get('planned_instances', 0)} instances planned, "
                     f"{summary.get('outside_tranche', 0)} outside it")
    return lines


def count_pending_restore(manifest: Any) -> dict[str, int]:
    """Archives per role (text, images) the manifest could not index because they are still in Glacier."""
    from pyspark.sql import functions as F

    rows = (manifest.filter((F.col("kind") == "archive") & (F.col("error") == "not_restored"))
            .groupBy("archive_role").count().collect())
    return {r["archive_role"]: int(r["count"]) for r in rows}


def reassemble_ledger(plan: Any, manifest: Any, task: TaskSettings, finished_at: datetime, partitions: int,
                      task_keys: Any = None) -> Any:
    """The whole run's ledger as one lazy DataFrame: terminal outcomes, damage, and written instances.

    Evaluating it writes the objects, so it is evaluated exactly once (by the ledger write).
    """
    from pyspark.sql import functions as F

    terminal = plan.filter(F.col("status") != PENDING).transform(with_ledger_columns(task.run_id, finished_at))
    damage = manifest.transform(with_manifest_damage).transform(with_ledger_columns(task.run_id, finished_at))
    work = plan.filter(F.col("status") == PENDING).transform(with_archive_locality(partitions, task_keys))
    written = plan.sparkSession.createDataFrame(
        work.rdd.mapPartitions(lambda rows: reassemble_partition(rows, task)), ledger_schema(),
        verifySchema=False)  # rows come from ledger_row, typed by construction (tests/test_row_types.py)
    return terminal.unionByName(damage).unionByName(written)


def skipped_archives(plan: Any, manifest: Any) -> dict[str, int]:
    """Image archives (and bytes) that no pending instance needs: never opened by this run."""
    from pyspark.sql import functions as F

    images = (manifest.filter((F.col("kind") == "archive") & (F.col("archive_role") == "images"))
              .select("archive_uri", "archive_size").distinct())
    needed = plan.filter(F.col("status") == PENDING).select(F.col("pixel_archive").alias("archive_uri")).distinct()
    unneeded = images.join(needed, "archive_uri", "left_anti")
    row = unneeded.agg(F.count(F.lit(1)).alias("n"), F.sum("archive_size").alias("b")).collect()[0]
    total = images.agg(F.count(F.lit(1)).alias("n")).collect()[0]
    return {"archives_total": int(total["n"] or 0), "archives_skipped": int(row["n"] or 0), "bytes_skipped": int(row["b"] or 0)}
