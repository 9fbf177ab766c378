"""``dicom-reassembly cost``: what a full run would cost, from a manifest or from listing totals."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from ..errors import ConfigError
from ..estimate import cost as cost_model
from ..estimate.prices import DEFAULT_BENCH_REPORT, DEFAULT_PRICES, STORAGE_CLASSES, read_prices
from ..estimate.workload import merge_listing, read_manifest_workload, scale_workload, workload_from_totals
from ..io import listing, writes

log = logging.getLogger(__name__)


def add_cost_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``cost``; the handler is ``args.func`` (returns an exit code)."""
    p = subparsers.add_parser("cost", help="estimate the cost of a full run")
    src = p.add_argument_group("workload (a manifest, a listing, or totals)")
    src.add_argument("--manifest", help="manifest dataset (Parquet)")
    src.add_argument("--text", help="text archive prefix to list (archive counts and bytes)")
    src.add_argument("--images", help="image archive prefix to list (archive counts and bytes)")
    src.add_argument("--listing", action="store_true", help="use the totals below (--archives, --bytes, --instances)")
    src.add_argument("--archives", type=int, help="number of archives (text + image)")
    src.add_argument("--bytes", type=float, help="bytes of all archives")
    src.add_argument("--instances", type=float,
                     help="number of instances (with --listing); with --manifest, the same delivery scaled to N")
    src.add_argument("--avg-header-bytes", type=int, default=12 * 1024, help="average header JSON size (12 KiB)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--prices", default=DEFAULT_PRICES, help="prices file (default conf/prices.json)")
    p.add_argument("--bench-report", default=DEFAULT_BENCH_REPORT, help="benchmark report with per_core_mb_s")
    p.add_argument("--tier", choices=("Bulk", "Standard", "Expedited"), default="Bulk")
    p.add_argument("--days", type=int, default=7, help="days restored copies stay")
    p.add_argument("--selected-fraction", type=float, default=1.0, help="share of instances selected")
    p.add_argument("--pixel-archive-fraction", type=float, help="share of pixel archives holding a selected instance")
    p.add_argument("--selective-restore", action="store_true",
                   help="restore only pixel archives with selected instances (headers name their archive)")
    p.add_argument("--storage-class", choices=STORAGE_CLASSES, default="STANDARD", help="destination class")
    p.add_argument("--instance-type", default="m6i.4xlarge")
    p.add_argument("--nodes", type=int, default=50, help="EMR worker nodes (core + task fleets)")
    p.add_argument("--utilization", type=float, default=0.7, help="share of vCPU time at measured throughput")
    p.add_argument("--per-core-mb-s", type=float, help="override the measured throughput per core")
    p.add_argument("--spot-discount", type=float, default=0.0, help="EC2 discount on worker nodes (0.6 = 60%% off)")
    p.add_argument("--no-bucket-key", action="store_true", help="SSE-KMS without S3 Bucket Keys (KMS per request)")
    p.add_argument("--restore-via", choices=("api", "batch", "auto"), default="auto")
    p.add_argument("--json-out", help="write the estimate as JSON here")
    p.set_defaults(func=handle_cost)
    return p


def handle_cost(args: argparse.Namespace) -> int:
    """Run ``cost``: print the table, write JSON. Errors reach the CLI, which prints one line."""
    est = _run(args)
    at_scale = None
    if est.one_time_total < cost_model.MEANINGFUL_TOTAL and est.workload["instances"] < cost_model.SCALE_PREVIEW_INSTANCES:
        args = argparse.Namespace(**{**vars(args), "instances": float(cost_model.SCALE_PREVIEW_INSTANCES)})
        at_scale = _run(args)
    print(cost_model.format_cost_table(est, at_scale))
    if args.json_out:
        writes.write_bytes(args.json_out, json.dumps(est.to_dict(), indent=2, default=str).encode("utf-8"),
                            writes.WriteOptions(content_type="application/json"))
    return 0


def _run(args: argparse.Namespace) -> cost_model.Estimate:
    prices = read_prices(args.prices, args.region)
    if args.listing or (args.manifest is None and args.archives is not None):
        if args.archives is None or args.bytes is None or args.instances is None:
            raise ConfigError("bad_workload", "--listing needs --archives, --bytes and --instances")
        workload = workload_from_totals(int(args.archives), int(args.bytes), int(args.instances),
                                        args.avg_header_bytes)
    elif args.manifest:
        workload = read_manifest_workload(args.manifest)
        if args.text and args.images:
            ha, hb = listing.count_objects(args.text)
            pa_, pb = listing.count_objects(args.images)
            workload = merge_listing(workload, ha, hb, pa_, pb)
        if workload.instances == 0:
            raise ConfigError("bad_workload", "the manifest has no header rows: nothing to estimate", uri=args.manifest)
        if args.instances is not None:
            workload = scale_workload(workload, int(args.instances))
    else:
        raise ConfigError("bad_workload", "give --manifest M, or --listing --archives N --bytes B --instances N")
    a = cost_model.Assumptions(tier=args.tier, days=args.days, selected_fraction=args.selected_fraction,
                    pixel_archive_fraction=args.pixel_archive_fraction, selective_restore=args.selective_restore,
                    destination_class=args.storage_class, instance_type=args.instance_type,
                    worker_nodes=args.nodes, utilization=args.utilization, per_core_mb_s=args.per_core_mb_s,
                    spot_discount=args.spot_discount, kms_bucket_key=not args.no_bucket_key,
                    restore_via=args.restore_via)
    return cost_model.estimate_cost(workload, prices, a, args.bench_report)
