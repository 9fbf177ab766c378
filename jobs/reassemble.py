"""Spark job: join headers and pixels on UID, write Part 10 objects, and a ledger of every outcome.

spark-submit jobs/reassemble.py --manifest URI --out URI --ledger URI [--criteria FILE] [--config conf/X]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from dicom_reassembly.cli.main import configure_logging, fail, run_spark_job
from dicom_reassembly.errors import ReassemblyError  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reassemble", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="manifest Parquet dataset from build_manifest")
    p.add_argument("--out", help="where .dcm objects go: local folder or s3://bucket/prefix")
    p.add_argument("--ledger", required=True, help="ledger Parquet dataset (one partition per run)")
    p.add_argument("--criteria", help="selection criteria JSON (a list, or orchestrator parameters)")
    p.add_argument("--config", help="JSON config from conf/ (flags override it)")
    p.add_argument("--runs", help="runs table (default: beside the ledger, <ledger>_runs)")
    p.add_argument("--computations", help="computations table (default: <ledger>_computations)")
    p.add_argument("--stow-url", help="also POST instances to this DICOMweb root (STOW-RS)")
    p.add_argument("--jdbc-url", help="also write ledger, runs and computations to this PostgreSQL "
                                      "(user and password from DICOM_REASSEMBLY_JDBC_USER/_PASSWORD)")
    p.add_argument("--key-template", help="output key template, default {sop_instance_uid}.dcm")
    p.add_argument("--partitions", type=int, help="reassembly tasks (default: one per pixel archive, capped)")
    args = p.parse_args(argv)
    if not args.out and not args.stow_url:
        p.error("give --out, --stow-url, or both")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    configure_logging()
    from dicom_reassembly import errors
    from dicom_reassembly.config import load_config
    from dicom_reassembly.io import writes
    from dicom_reassembly.records.tables import JdbcTarget, jdbc_session_settings
    from dicom_reassembly.selection.spec import load_criteria
    from dicom_reassembly.stow.settings import StowAuth, StowSettings

    started = datetime.now(timezone.utc)
    try:
        # Criteria are checked before Spark starts, so a bad criterion costs nothing.
        spec = load_criteria(args.criteria) if args.criteria else None
        cfg = load_config(args.config, key_template=args.key_template, reassemble_partitions=args.partitions)
        stow = (StowSettings(args.stow_url, batch_count=cfg.stow_batch_count, batch_bytes=cfg.stow_batch_bytes,
                             timeout=(min(10.0, cfg.stow_timeout), cfg.stow_timeout)) if args.stow_url else None)
        # Read here: executors on a cluster do not inherit the driver's environment.
        stow_auth = StowAuth.from_env() if args.stow_url else None
        jdbc = JdbcTarget.from_env(args.jdbc_url) if args.jdbc_url else None
        from dicom_reassembly.io.arrow_io import dataset_exists

        if not dataset_exists(args.manifest):
            raise errors.NotFoundError("manifest_not_found", "run build_manifest first", uri=args.manifest)
        if args.out:
            writes.check_writable(args.out)
    except ReassemblyError as exc:
        return fail(exc)

    extra = dict(cfg.spark)
    if jdbc is not None:
        extra.update(jdbc_session_settings())

    def reassemble(spark: Any) -> int:
        from dicom_reassembly.reassembly.run import ReassembleRun

        run = ReassembleRun(spark=spark, manifest_uri=args.manifest, out=args.out, ledger_uri=args.ledger,
                            runs_uri=args.runs or args.ledger.rstrip("/") + "_runs",
                            computations_uri=args.computations or args.ledger.rstrip("/") + "_computations",
                            cfg=cfg, spec=spec, stow=stow, stow_auth=stow_auth, jdbc=jdbc, argv=argv, started=started)
        summary = run.execute()
        print(run.report(summary))
        print(json.dumps({"run_id": summary["run_id"], "status_counts": summary["status_counts"]}))
        return 0

    return run_spark_job("dicom-reassembly reassemble", extra, reassemble)


if __name__ == "__main__":
    sys.exit(main())
