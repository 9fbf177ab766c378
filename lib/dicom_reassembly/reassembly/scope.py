"""What one run takes on: the instances of its tranche that are not final yet, and the archives it may read.

All of it is decided on narrow columns (no header JSON) before the UID join, so a pass over a grown delivery plans,
and reads, only what is new or not done:

- ``with_source_fingerprints``: one row per UID with the fingerprint of its source and the archive it belongs to;
- ``with_run_scope``: each UID marked in or out of the tranche, final (settled for this output) or not, and known
  (the state has a row for this source) or not;
- ``read_limited``: ``limit:N`` applied, whole archives first; ``RunScope.of`` gives it the sources the state does
  not know before those it knows (a retry of ``failed`` or ``not_restored``), so ``limit:`` tranches advance;
- ``with_unavailable_archives``: pending work on archives whose restored copy expired made ``not_restored``;
- ``RunScope``: the above put together for one run, with what its conservation check covers.

The fingerprint covers every member of the UID: kind, archive, member name, offset, size, the archive's ETag and
the SHA-256 of the header member's bytes (and any member error). Pixel bytes are not hashed (the manifest never reads them,
and reading them is what a pass must not do); their archive's ETag, offset and size stand for them, and
build_manifest re-indexes an archive whose ETag or size changed. A new copy of an instance arriving in a later
tranche changes the fingerprint too, so the instance is planned again and the new member is accounted for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..selection.tranche import Tranche
from .plan import PENDING

log = logging.getLogger(__name__)

FINGERPRINT_CHARS = 32  # 128 bits of SHA-256: compared per UID only, so collisions are out of reach
IN_TRANCHE = "in_tranche"
FINAL = "final"
KNOWN = "known"


def usable_members(manifest: Any) -> Any:
    """Member rows a UID can join (``with_members_by_uid``'s rule): headers and pixels without an unusable UID."""
    from pyspark.sql import functions as F

    return manifest.filter(F.col("kind").isin("header", "pixels")
                           & (F.col("error").isNull() | (F.col("error") != "invalid_uid")))


def with_source_fingerprints(manifest: Any) -> Any:
    """One row per UID: ``source_fingerprint``, and ``scope_archive``/``scope_offset`` (its first pixel member, else
    its first header member), which place it in a tranche and order ``limit:``."""
    from pyspark.sql import functions as F

    def text(name: str) -> Any:
        return F.coalesce(F.col(name).cast("string"), F.lit(""))

    member = F.concat_ws("|", *[text(c) for c in ("kind", "archive_uri", "member_name", "data_offset", "size",
                                                  "archive_etag", "header_sha256", "error")])
    first_pixels = F.min(F.when(F.col("kind") == "pixels", F.struct("archive_uri", "data_offset")))
    first_header = F.min(F.when(F.col("kind") == "header", F.struct("archive_uri", "data_offset")))
    grouped = usable_members(manifest).groupBy("sop_instance_uid").agg(
        F.substring(F.sha2(F.concat_ws("\n", F.array_sort(F.collect_list(member))), 256), 1,
                    FINGERPRINT_CHARS).alias("source_fingerprint"),
        first_pixels.alias("_p"), first_header.alias("_h"))
    return grouped.select(
        "sop_instance_uid", "source_fingerprint",
        F.coalesce(F.col("_p.archive_uri"), F.col("_h.archive_uri")).alias("scope_archive"),
        F.coalesce(F.col("_p.data_offset"), F.col("_h.data_offset")).alias("scope_offset"))


def with_run_scope(tranche: Tranche | None, states: Any) -> Callable[[Any], Any]:
    """Transform: fingerprinted UIDs -> the same with ``in_tranche``, ``final`` and ``known`` flags.

    ``states`` is (sop_instance_uid, source_fingerprint, final) of the state's instances for this output
    (``records.state.read_instance_states``; None: no state).
    """

    def transform(sources: Any) -> Any:
        from pyspark.sql import functions as F

        flagged = sources.withColumn(IN_TRANCHE, tranche.archive_condition(F.col("scope_archive"))
                                     if tranche is not None and tranche.bounds_archives else F.lit(True))
        if states is None:
            return flagged.withColumn(FINAL, F.lit(False)).withColumn(KNOWN, F.lit(False))
        # One state row per UID and output (records.state): no duplicate to remove before the join.
        marked = states.select("sop_instance_uid", "source_fingerprint", F.col("final").alias("_f"))
        return (flagged.join(marked, ["sop_instance_uid", "source_fingerprint"], "left")
                .withColumn(FINAL, F.coalesce(F.col("_f"), F.lit(False)))
                .withColumn(KNOWN, F.col("_f").isNotNull()).drop("_f"))

    return transform


def read_limited(todo: Any, limit: int) -> Any:
    """The first ``limit`` UIDs of ``todo``: whole archives in URI order, then the first members of the last one.

    Archive counts come to the driver sorted, one partition at a time, and only until ``limit`` is reached.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = todo.groupBy("scope_archive").agg(F.count(F.lit(1)).alias("n")).orderBy(F.col("scope_archive").asc_nulls_last())
    whole: list[str] = []
    taken = 0
    last: tuple[str, int] | None = None
    for row in counts.toLocalIterator():
        n = int(row["n"])
        if taken + n <= limit:
            whole.append(row["scope_archive"])
            taken += n
        else:
            last = (row["scope_archive"], limit - taken)
            taken = limit
        if taken >= limit:
            break
    spark = todo.sparkSession
    chosen = todo.join(F.broadcast(spark.createDataFrame([(a,) for a in whole], "scope_archive string")),
                       "scope_archive", "left_semi") if whole else todo.limit(0)
    if last is not None and last[1] > 0:
        order = Window.partitionBy("scope_archive").orderBy("scope_offset", "sop_instance_uid")
        part = (todo.filter(F.col("scope_archive").eqNullSafe(F.lit(last[0])))
                .withColumn("_n", F.row_number().over(order)).filter(F.col("_n") <= last[1]).drop("_n"))
        chosen = chosen.unionByName(part)
    return chosen


def with_unavailable_archives(unavailable: Any) -> Callable[[Any], Any]:
    """Transform: plan rows -> the same, pending work on an unavailable pixel archive made ``not_restored``.

    ``unavailable`` is (pixel_archive, reason). A pending row's extra pixel copies (``dup_pixels``) each get a row
    of their own, so every member stays accounted for.
    """

    def transform(plan: Any) -> Any:
        from pyspark.sql import functions as F

        marked = plan.join(F.broadcast(unavailable.select("pixel_archive", F.col("reason").alias("_why"))),
                           "pixel_archive", "left")
        rows = marked.withColumn("_hit", (F.col("status") == PENDING) & F.col("_why").isNotNull())
        hit = F.col("_hit")
        rows = (rows.withColumn("status", F.when(hit, F.lit("not_restored")).otherwise(F.col("status")))
                .withColumn("reason", F.when(hit, F.col("_why")).otherwise(F.col("reason"))))
        copies = (rows.filter(hit & F.col("dup_pixels").isNotNull())
                  .select("sop_instance_uid", "pixel_archive", "pixel_member", "_why",
                          F.explode(F.from_json("dup_pixels", "array<array<string>>")).alias("_c"))
                  .select("sop_instance_uid", F.lit("not_restored").alias("status"),
                          F.concat(F.lit("copy of "), F.col("pixel_archive"), F.lit(":"), F.col("pixel_member"),
                                   F.lit(": "), F.col("_why")).alias("reason"),
                          F.col("_c")[0].alias("pixel_archive"), F.col("_c")[1].alias("pixel_member")))
        columns = plan.columns
        kept = rows.withColumn("dup_pixels", F.when(hit, F.lit(None)).otherwise(F.col("dup_pixels"))).select(*columns)
        filler = [F.col(c) if c in copies.columns else F.lit(None).cast(plan.schema[c].dataType).alias(c)
                  for c in columns]
        return kept.unionByName(copies.select(*filler))

    return transform


@dataclass
class RunScope:
    """The UIDs one run plans (``todo``), from the persisted flags of every UID, and the run's counts.

    ``whole()`` is the scope of a run that neither reads nor writes a state and has no tranche: every UID, and no
    fingerprint computed (``flagged`` and ``todo`` are None, and ``planned_instances`` is not counted).
    """

    flagged: Any
    todo: Any
    tranche: Tranche | None
    narrowed: bool  # False: every UID is planned (no state, no tranche), so the manifest is used as it is
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, flagged: Any, tranche: Tranche | None, narrowed: bool) -> RunScope:
        """Count the flags (one job over narrow rows) and apply ``limit:``."""
        from pyspark.sql import functions as F

        groups: dict[tuple[bool, bool], int] = {}
        retries = 0  # pending sources the state knows (failed, not_restored, ...): a limit takes them last
        for r in flagged.groupBy(IN_TRANCHE, FINAL, KNOWN).count().collect():
            key = (bool(r[IN_TRANCHE]), bool(r[FINAL]))
            groups[key] = groups.get(key, 0) + int(r["count"])
            retries += int(r["count"]) if key == (True, False) and r[KNOWN] else 0
        carried = groups.get((True, True), 0)
        pending = groups.get((True, False), 0)
        outside = groups.get((False, True), 0) + groups.get((False, False), 0)
        columns = ("sop_instance_uid", "source_fingerprint", "scope_archive", "scope_offset")
        todo = flagged.filter(F.col(IN_TRANCHE) & ~F.col(FINAL)).select(*columns, KNOWN)
        if tranche is not None and tranche.limit is not None and pending > tranche.limit:
            fresh, limit = pending - retries, tranche.limit
            first = todo.filter(~F.col(KNOWN))
            todo = (read_limited(first, limit) if fresh >= limit
                    else first.unionByName(read_limited(todo.filter(F.col(KNOWN)), limit - fresh)))
            outside += pending - tranche.limit
            pending = tranche.limit
            narrowed = True
        counts = {"planned_instances": pending, "carried_over": carried, "outside_tranche": outside}
        todo = todo.select(*columns)
        log.info("run scope: %d instances planned, %d carried over (final), %d outside the tranche",
                 pending, carried, outside)
        return cls(flagged, todo, tranche, narrowed, counts)

    @classmethod
    def whole(cls) -> RunScope:
        """Every UID planned, nothing carried over or outside a tranche."""
        return cls(None, None, None, False, {"carried_over": 0, "outside_tranche": 0})

    def _uids(self, members: Any) -> Any:
        uids = self.todo.select(self.todo["sop_instance_uid"].alias("_uid"))
        return members.join(uids, members["sop_instance_uid"].eqNullSafe(uids["_uid"]), "left_semi")

    def members(self, manifest: Any) -> Any:
        """The manifest rows the UID join needs: every member of the planned UIDs."""
        return self._uids(usable_members(manifest)) if self.narrowed else manifest

    def damage_source(self, manifest: Any) -> Any:
        """The manifest rows whose damage this run records: the tranche's archives (all without one)."""
        from pyspark.sql import functions as F

        if self.tranche is None or not self.tranche.bounds_archives:
            return manifest
        return manifest.filter(self.tranche.archive_condition(F.col("archive_uri")))

    def expected_members(self, manifest: Any) -> Any:
        """The members this run's ledger must name: those of its planned UIDs, and the damage it records.

        Members of carried-over UIDs are accounted for by the state (their fingerprint, which covers every member,
        is the one a run recorded as final); members outside the tranche wait for their own run.
        """
        from pyspark.sql import functions as F

        if not self.narrowed:
            return manifest
        odd = self.damage_source(manifest).filter(
            (F.col("kind") == "other") | (F.col("kind").isin("header", "pixels") & (F.col("error") == "invalid_uid")))
        return self._uids(usable_members(manifest)).unionByName(odd)

    def release(self) -> None:
        if self.flagged is not None:
            self.flagged.unpersist()
