"""Spark job: the Glacier restore plan (both waves), its header evaluation on the executors, written as files.

spark-submit jobs/plan_restore.py --text URI --images URI --manifest URI --criteria FILE --plan URI
    [--tranche T] [--config FILE] [--evaluate-all]

The campaign runs it for wave 2 on large manifests and on EMR (the one-process plan of ``restore plan`` parses every
header in one Python process); it writes ``plan.json`` and ``objects.parquet`` under --plan, read back with
``restore.spark_plan.read_plan``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dicom_reassembly.cli.main import configure_logging, fail, run_spark_job
from dicom_reassembly.errors import ReassemblyError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="plan_restore", description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="header archives: local folder or s3://bucket/prefix")
    p.add_argument("--images", required=True, help="pixel archives: local folder or s3://bucket/prefix")
    p.add_argument("--manifest", required=True, help="manifest Parquet dataset from build_manifest")
    p.add_argument("--criteria", help="criteria JSON (with input_s3_parameters); a file, s3:// URI or secret ARN")
    p.add_argument("--plan", required=True, help="where the plan goes (a folder or s3:// prefix)")
    p.add_argument("--tranche", help="wave 2 only for the image archives of a tranche: prefix:URI[,URI...] or "
                                     "hash:A-B/M")
    p.add_argument("--config", help="JSON config from conf/ (archive_suffixes)")
    p.add_argument("--evaluate-all", action="store_true",
                   help="parse every header even when no pixel archive can be located")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging()
    from dicom_reassembly.config import load_config
    from dicom_reassembly.restore.plan import plan_restore
    from dicom_reassembly.restore.spark_plan import write_plan
    from dicom_reassembly.selection.spec import load_criteria
    from dicom_reassembly.selection.tranche import archive_tranche, parse_tranche

    try:
        spec = load_criteria(args.criteria) if args.criteria else None
        tranche = archive_tranche(parse_tranche(args.tranche), "restore planning")
        cfg = load_config(args.config)
    except ReassemblyError as exc:
        return fail(exc)

    def plan(spark: Any) -> int:
        result = plan_restore(args.text, args.images, args.manifest, spec, suffixes=cfg.archive_suffixes,
                              always_evaluate=args.evaluate_all, access=spec.access if spec is not None else None,
                              tranche=tranche, spark=spark)
        write_plan(result, args.plan)
        summary = result.summary()
        print(f"restore plan: {summary['archives']} archives, to restore {summary['to_restore']['count']} "
              f"({summary['to_restore']['bytes']} bytes); written to {args.plan}")
        return 0

    return run_spark_job("dicom-reassembly plan_restore", cfg.spark, plan)


if __name__ == "__main__":
    sys.exit(main())
