"""How a run is cut into tasks: shuffle partitions for the UID join, reassembly tasks sized by the bytes to read,
and which task each pixel archive goes to.

Sized from the data, never from the executors registered when the driver starts. The running job needs this, the
deployment side (``emr``) too: it lives here so the job does not import the deployment code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, NotFoundError, StorageError
from ..manifest.spark import balance_by_bytes
from .plan import PENDING

MIB = 1024 * 1024
# Above this many pixel archives in one run, tasks take archives by hash instead of by size: balancing
# collects each archive's wanted bytes to the driver (about 200 bytes each).
MAX_BALANCED_ARCHIVES = 200_000
TASK_KEY = "task_key"


def plan_reassembly_tasks(plan: Any, configured: int, task_bytes: int,
                          max_balanced: int = MAX_BALANCED_ARCHIVES) -> tuple[int, Any]:
    """How many reassembly tasks, and which task each pixel archive goes to.

    Tasks: configured, else sized by the pixel bytes to read. Sized from the
    data, not from the executors registered when the driver starts: under
    dynamic allocation that is one executor, and the job would never give the
    cluster enough work to scale out. Never more tasks than pixel archives,
    since an archive is never split.

    Archives are spread over the tasks by wanted bytes, largest first onto the
    lightest task: hashing leaves tasks uneven (a few big archives can share
    one), and the run waits for its slowest task. Returns (tasks, task_keys):
    task_keys is a small DataFrame (pixel_archive, task_key) for
    ``with_archive_locality``, or None when there is one task or more than
    ``max_balanced`` archives (their list is collected to the driver).
    """
    from pyspark.sql import functions as F

    per_archive = (plan.filter(F.col("status") == PENDING).groupBy("pixel_archive")
                   .agg(F.sum("pixel_size").alias("b")))
    row = per_archive.agg(F.count(F.lit(1)).alias("n"), F.sum("b").alias("b")).collect()[0]
    archives, wanted = int(row["n"] or 0), int(row["b"] or 0)
    if configured > 0:
        tasks = configured
    else:
        cores = plan.sparkSession.sparkContext.defaultParallelism
        tasks = max(1, min(archives, max(2 * cores, math.ceil(wanted / task_bytes))))
    if tasks < 2 or archives < 2 or archives > max_balanced:
        return tasks, None
    keys = partition_keys(plan.sparkSession, tasks)
    if keys is None:
        return tasks, None
    sizes = [{"uri": r["pixel_archive"], "size": int(r["b"] or 0)} for r in per_archive.collect()]
    placed = [(a["uri"], keys[i]) for i, bucket in enumerate(balance_by_bytes(sizes, tasks)) for a in bucket]
    return tasks, plan.sparkSession.createDataFrame(placed, f"pixel_archive string, {TASK_KEY} long")


def partition_keys(spark: Any, partitions: int) -> list[int] | None:
    """For each of ``partitions`` partitions, a long that ``repartition(partitions, col)`` sends there.

    Spark places a row by a hash of the column; asking Spark for the hashes of
    the first longs finds a key for every partition (None if some partition
    got none, which the tests never saw: 64 tries each).
    """
    from pyspark.sql import functions as F

    rows = (spark.range(0, 64 * partitions).select(F.pmod(F.hash("id"), F.lit(partitions)).alias("p"), "id")
            .groupBy("p").agg(F.min("id").alias("id")).collect())
    found = {int(r["p"]): int(r["id"]) for r in rows}
    return [found[p] for p in range(partitions)] if len(found) == partitions else None


@dataclass(frozen=True)
class PartitionPolicy:
    """How ``spark.sql.shuffle.partitions`` follows the manifest size."""

    bytes_per_partition: int = 128 * MIB
    rows_per_partition: int = 100_000
    minimum: int = 200
    maximum: int = 100_000
    default: int = 2000


def shuffle_partitions_for(manifest_bytes: int | None = None, manifest_rows: int | None = None,
                           policy: PartitionPolicy = PartitionPolicy()) -> int:
    """Shuffle partitions for the UID join, from the manifest's size on disk and/or row count.

    The join shuffles almost every manifest column (keys, locations, header JSON),
    and shuffle blocks compress about like Parquet, so the manifest's bytes are a
    fair estimate of the shuffle volume. With both measures, the larger estimate
    wins. The result is clamped to ``[policy.minimum, policy.maximum]``; with
    neither measure, ``policy.default`` is returned.
    """
    estimates = []
    for value, per in ((manifest_bytes, policy.bytes_per_partition), (manifest_rows, policy.rows_per_partition)):
        if value is None:
            continue
        if value < 0:
            raise ConfigError("bad_manifest_size", f"negative size {value}")
        estimates.append(math.ceil(value / per))
    if not estimates:
        return policy.default
    return max(policy.minimum, min(policy.maximum, max(estimates)))


def read_manifest_bytes(manifest_uri: str) -> int | None:
    """Total size of an existing manifest dataset, or None when there is none yet."""
    from ..io.listing import list_objects

    try:
        total = sum(o.size for o in list_objects(manifest_uri, (".parquet",)))
    except NotFoundError:
        return None
    except StorageError as exc:
        if exc.reason == "no_such_bucket":
            return None
        raise
    return total or None
