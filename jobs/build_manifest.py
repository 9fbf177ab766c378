"""Spark job: index every tar member of a delivery into a Parquet manifest.

spark-submit jobs/build_manifest.py --text URI --images URI --manifest URI [--criteria FILE] [--config FILE]
    [--tranche T]

``--criteria`` is the same file reassemble takes; only its ``input_s3_parameters`` are used here (they list and
read the partner's archives), the criteria themselves apply in restore planning and reassembly.

The manifest is written in the lookup layout (``dicom_reassembly.manifest.layout``): a manifest in the layout
before issue 20 is rewritten into it first, and small groups of files are merged once there are more than
``--max-groups`` of them. One build at a time per manifest.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dicom_reassembly.cli.main import configure_logging, fail, run_spark_job
from dicom_reassembly.config import load_config  # noqa: E402
from dicom_reassembly.errors import ReassemblyError  # noqa: E402
from dicom_reassembly.selection.tranche import TRANCHE_HELP  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="build_manifest", description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="header archives: local folder or s3://bucket/prefix")
    p.add_argument("--images", required=True, help="pixel archives: local folder or s3://bucket/prefix")
    p.add_argument("--manifest", required=True, help="manifest Parquet dataset (appended to on re-runs)")
    p.add_argument("--criteria", help="criteria JSON: only its input_s3_parameters are used (the input bucket's "
                                      "client); a file, s3:// URI or Secrets Manager ARN")
    p.add_argument("--config", help="JSON config from conf/ (flags override it)")
    p.add_argument("--tasks", type=int, help="indexing tasks (default: derived from the cluster)")
    p.add_argument("--full", action="store_true", help="re-index every archive, not only new or changed ones")
    p.add_argument("--tranche", help="index only the image archives of a tranche (text archives always): "
                                     + TRANCHE_HELP.split(": ", 1)[1].replace(" or limit:N (N instances)", ""))
    p.add_argument("--max-groups", type=int, default=8, help="merge the smallest groups of manifest files beyond "
                                                              "this many (a lookup reads one bucket file per group)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging()
    from dicom_reassembly.manifest import layout
    from dicom_reassembly.manifest import spark as manifest_spark
    from dicom_reassembly.manifest.index import manifest_schema
    from dicom_reassembly.manifest.listing import archives_in_tranche, archives_to_index, list_archives, listing_summary
    from dicom_reassembly.manifest.spark import build_manifest_df, indexed_archives, manifest_tasks
    from dicom_reassembly.run_id import new_run_id
    from dicom_reassembly.selection.spec import load_criteria
    from dicom_reassembly.selection.tranche import archive_tranche, parse_tranche

    try:
        spec = load_criteria(args.criteria) if args.criteria else None
        # The input credentials reach the input bucket only: the manifest is written with the environment's.
        access = spec.access if spec is not None else None
        cfg = load_config(args.config, manifest_tasks=args.tasks)
        tranche = archive_tranche(parse_tranche(args.tranche), "build_manifest")
        listing = list_archives(args.text, args.images, cfg.archive_suffixes, access)
    except ReassemblyError as exc:
        return fail(exc)

    def index(spark: Any) -> int:
        migrated = manifest_spark.prepare_manifest(spark, args.manifest)
        todo = listing if args.full else archives_to_index(listing, indexed_archives(spark, args.manifest))
        todo = archives_in_tranche(todo, tranche)
        indexed_at = datetime.now(timezone.utc)
        index_run = new_run_id(indexed_at)
        tasks = manifest_tasks(len(todo), cfg.manifest_tasks, spark.sparkContext.defaultParallelism)
        if todo:
            df = build_manifest_df(spark, todo, index_run, indexed_at, tasks, cfg.coalesce_gap, cfg.max_header_bytes,
                                   access=access)
            manifest_spark.write_manifest(spark, df, args.manifest, index_run, *layout.estimated_bytes(todo))
        if migrated:
            print(f"manifest rewritten in buckets: {len(migrated['inputs'])} files of the earlier layout")
        print(f"manifest: {args.manifest}")
        for line in listing_summary(listing, todo):
            print(line)
        if tranche is not None:
            outside = sum(1 for a in listing if a["role"] == "images" and not tranche.matches_archive(a["uri"]))
            print(f"tranche {tranche}: {outside} image archives outside it, not indexed this run")
        if todo:
            from pyspark.sql import functions as F

            run = spark.read.schema(manifest_schema()).parquet(args.manifest).filter(F.col("index_run") == index_run)
            for r in run.groupBy("kind", "error").count().orderBy("kind", "error").collect():
                print(f"  {r['kind']:<8} {r['error'] or 'ok':<24} {r['count']}")
        merged = manifest_spark.merge_small_groups(spark, args.manifest, args.max_groups)
        if merged:
            print(f"manifest groups merged: {len(merged['inputs'])} files rewritten as one group")
        return 0

    return run_spark_job("dicom-reassembly build_manifest", cfg.spark, index)


if __name__ == "__main__":
    sys.exit(main())
