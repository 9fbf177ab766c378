"""``dicom-reassembly restore plan|request|status``: Glacier restores planned, requested and tracked."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigError
from ..io import clients
from ..restore import batch
from ..restore import requests as restore_requests
from ..restore.ledger import write_restore_ledger
from ..restore.plan import WAVE_HEADERS, WAVE_PIXELS, RestorePlan, criteria_spec, plan_restore
from ..restore.status import restore_status
from ..run_id import new_run_id
from ..units import human_bytes

log = logging.getLogger(__name__)


def add_restore_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``restore plan|request|status``; the handler is ``args.func`` (returns an exit code)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--text", required=True, help="prefix of the text (header) archives")
    common.add_argument("--images", required=True, help="prefix of the image (pixel) archives")
    common.add_argument("--manifest", help="manifest dataset (Parquet) from build_manifest")
    common.add_argument("--criteria", help="criteria file (JSON); needs --manifest to select archives")
    common.add_argument("--evaluate-all", action="store_true",
                        help="parse every header even when no pixel archive can be located (slow at scale)")
    common.add_argument("--exclude-unknown", action="store_true",
                        help="do not restore pixel archives that cannot be proven unneeded")
    common.add_argument("--wave", type=int, choices=(WAVE_HEADERS, WAVE_PIXELS),
                        help="only this wave (1 headers, 2 pixels); default both, headers first")
    common.add_argument("--suffix", action="append", dest="suffixes", metavar="SUFFIX",
                        help="archive key ending (repeatable; default .tar; '' for every object)")
    common.add_argument("--workers", type=int, default=restore_requests.DEFAULT_WORKERS, help="concurrent S3 requests")
    common.add_argument("--config", help="JSON config with account_id, role_arn, report_bucket (Batch Operations)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = subparsers.add_parser("restore", help="plan, request and track Glacier restores")
    sub = p.add_subparsers(dest="restore_command", required=True, metavar="plan|request|status")
    sub.add_parser("plan", parents=[common], help="list the archives and what must be restored, per wave")
    req = sub.add_parser("request", parents=[common], help="issue RestoreObject (or a Batch Operations job)")
    req.add_argument("--tier", choices=restore_requests.TIERS, default="Bulk")
    req.add_argument("--days", type=int, default=7, help="days the restored copy stays (default 7)")
    req.add_argument("--rate", type=float, default=restore_requests.DEFAULT_RATE,
                     help=f"RestoreObject requests per second (default {restore_requests.DEFAULT_RATE:g})")
    req.add_argument("--ledger", help="restore ledger dataset (Parquet), appended to; required for API requests")
    req.add_argument("--batch-manifest", help="write an S3 Batch Operations CSV manifest here and use a job")
    req.add_argument("--batch-threshold", type=int, default=batch.DEFAULT_BATCH_THRESHOLD,
                     help="use Batch Operations from this many objects (default %(default)s)")
    req.add_argument("--create-job", action="store_true", help="create the Batch Operations job (else print it)")
    status = sub.add_parser("status", parents=[common], help="read each object's Restore header")
    status.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle_restore)
    return p


def handle_restore(args: argparse.Namespace) -> int:
    """Run a ``restore`` subcommand. Errors reach the CLI, which prints one line."""
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.criteria and not args.manifest:
        raise ConfigError("criteria_needs_manifest", "--criteria selects archives through --manifest; give both")
    if args.restore_command == "request":  # fail before listing millions of keys
        restore_requests.check_request_args(args.tier, args.days)
        if not args.ledger and not args.batch_manifest:
            raise ConfigError("ledger_required", "--ledger URI is required: every restore request is recorded")
    spec = criteria_spec(args.criteria)
    settings = getattr(spec, "s3", None)
    suffixes = tuple(s for s in args.suffixes if s) if args.suffixes else (".tar",)
    plan = plan_restore(args.text, args.images, args.manifest, spec, suffixes=suffixes,
                        always_evaluate=args.evaluate_all, access=getattr(spec, "access", None))
    include_unknown = not args.exclude_unknown
    if args.restore_command == "plan":
        summary = plan.summary(include_unknown)
        print(json.dumps(summary, indent=2, default=str) if args.json else format_plan(summary))
        return 0
    if args.restore_command == "status":
        objs = [o for o in plan.objects if args.wave is None or o.wave == args.wave]
        report = restore_status(RestorePlan(objs, plan.selection, plan.notes), include_unknown=include_unknown,
                                settings=settings, workers=args.workers, progress=not args.no_progress)
        summary = report.summary()
        print(json.dumps(summary, indent=2, default=str) if args.json else format_status(summary))
        return 0
    return _run_request(args, plan, include_unknown, settings)


def _run_request(args: argparse.Namespace, plan: RestorePlan, include_unknown: bool,
                 settings: clients.S3Settings | None) -> int:
    restore_requests.check_request_args(args.tier, args.days)
    todo = plan.to_restore(include_unknown, args.wave)
    if not todo:
        print("nothing to restore")
        return 0
    if args.batch_manifest or len(todo) >= args.batch_threshold:
        if not args.batch_manifest:
            raise ConfigError("batch_manifest_required", f"{len(todo)} objects reach --batch-threshold "
                                                         f"{args.batch_threshold}: give --batch-manifest s3://...")
        config = batch.read_restore_config(args.config)
        manifest = batch.write_batch_manifest((o.uri for o in todo), args.batch_manifest)
        request = batch.build_batch_restore_job(config, manifest, tier=args.tier, days=args.days)
        job_id = None
        if args.create_job:
            import boto3

            job_id = batch.submit_batch_job(boto3.client("s3control", region_name=config.region), request)
        if args.ledger:
            now = datetime.now(timezone.utc)
            run_id = new_run_id()
            rows = [{"run_id": run_id, "uri": o.uri, "role": o.role, "wave": o.wave, "size": o.size,
                     "storage_class": o.storage_class, "tier": args.tier, "days": args.days, "requested_at": now,
                     "outcome": restore_requests.OUTCOME_BATCH, "job_id": job_id} for o in todo]
            if rows:
                write_restore_ledger(rows, args.ledger, run_id, 0)
        out = {"batch_manifest": asdict(manifest), "job_id": job_id, "create_job_request": request}
        print(json.dumps(out, indent=2, default=str))
        return 0
    if not args.ledger:
        raise ConfigError("ledger_required", "--ledger URI is required: every restore request is recorded")
    report = restore_requests.request_restores(todo, args.tier, args.days, args.rate, args.ledger, workers=args.workers,
                              settings=settings)
    summary = asdict(report)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"restore run {report.run_id}: {len(todo)} objects, tier {args.tier}, {args.days} days")
        for k, v in sorted(report.outcomes.items()):
            print(f"  {k:<18} {v:>10}")
        for k, v in sorted(report.error_codes.items()):
            print(f"  error {k:<12} {v:>10}")
    if report.error_codes:
        print(f"dicom-reassembly restore: {sum(report.error_codes.values())} requests failed; see the ledger "
              f"{args.ledger} and re-run (idempotent)", file=sys.stderr)
    return 0


def format_plan(summary: dict[str, Any]) -> str:
    """A plan summary as a small text table."""
    lines = [f"{'wave':<6}{'state':<12}{'archives':>12}{'bytes':>14}"]
    for wave, states in sorted(summary["waves"].items()):
        for state, d in states.items():
            if d["count"]:
                lines.append(f"{wave:<6}{state:<12}{d['count']:>12,}{human_bytes(d['bytes']):>14}")
    t = summary["to_restore"]
    lines.append(f"to restore: {t['count']:,} archives, {human_bytes(t['bytes'])}"
                 f"{'' if t['include_unknown'] else ' (unknown excluded)'}")
    if "selection" in summary and summary["selection"]["evaluated"]:
        s = summary["selection"]
        lines.append(f"selection: {s['selected']:,} selected, {s['filtered_out']:,} filtered out, "
                     f"{s['invalid_headers']:,} invalid headers, {s['unlocated']:,} without a known pixel archive")
    lines.extend(f"note: {n}" for n in summary.get("notes", []))
    return "\n".join(lines)


def format_status(summary: dict[str, Any]) -> str:
    """A status summary as a small text table."""
    lines = [f"{'state':<15}{'objects':>12}{'bytes':>14}"]
    for state, d in sorted(summary["states"].items()):
        lines.append(f"{state:<15}{d['count']:>12,}{human_bytes(d['bytes']):>14}")
    if summary.get("earliest_expiry"):
        lines.append(f"earliest expiry of a restored copy: {summary['earliest_expiry']}")
    lines.append("all restored" if summary["complete"] else "not complete")
    return "\n".join(lines)
