#!/usr/bin/env python3
"""Submit the two jobs (build_manifest, then reassemble) to EMR or EMR Serverless.

    python emr/submit.py --cluster-id J --text URI --images URI --out URI --work URI \\
        [--criteria FILE] [--config conf/emr.json] [--dry-run] [--wait]

``--create-cluster`` starts a transient cluster from the config instead of
``--cluster-id``; ``--serverless-app-id`` runs the same jobs on EMR Serverless.
All logic lives in ``dicom_reassembly.emr``; this file parses, prints and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import uuid
from typing import Any, NoReturn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(ROOT, "lib")):  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(ROOT, "lib"))

from dicom_reassembly import __version__  # noqa: E402 - after the sys.path line above
from dicom_reassembly.emr import config as emr_config  # noqa: E402
from dicom_reassembly.emr import layout, submit  # noqa: E402
from dicom_reassembly.emr import plan as emr_plan  # noqa: E402
from dicom_reassembly.errors import ConfigError, CriteriaError, EmrError, ReassemblyError  # noqa: E402
from dicom_reassembly.reassembly import tasks  # noqa: E402

PROG = "submit.py"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the command line."""
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--cluster-id", help="add the steps to this running cluster")
    target.add_argument("--create-cluster", action="store_true", help="start a transient cluster from --config")
    target.add_argument("--serverless-app-id", help="run on this EMR Serverless application")
    p.add_argument("--text", required=True, help="s3:// prefix of the header (text) archives")
    p.add_argument("--images", required=True, help="s3:// prefix of the pixel (image) archives")
    p.add_argument("--out", required=True, help="s3:// prefix for the .dcm objects")
    p.add_argument("--work", required=True, help="s3:// prefix for manifest, ledger, runs and code")
    p.add_argument("--criteria", help="criteria JSON file (uploaded to {work}/code/criteria.json) or s3:// URI")
    p.add_argument("--config", default=os.path.join(ROOT, "conf", "emr.json"), help="EMR config (conf/emr.json)")
    p.add_argument("--region", help="AWS region (default: config, then the AWS environment)")
    p.add_argument("--dry-run", action="store_true", help="print the requests as JSON; no AWS call, no upload")
    p.add_argument("--wait", action="store_true", help="follow the steps; non-zero exit if one fails")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of an unexpected error (also with DICOM_REASSEMBLY_LOG=DEBUG)")
    return p.parse_args(argv)


class _ProgressLine:
    """One progress line on stderr: rewritten in place on a terminal, one line per change otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, p: submit.Progress) -> None:
        minutes, seconds = divmod(int(p.elapsed), 60)
        line = f"[{p.index + 1}/{p.total}] {p.name}: {p.state} ({minutes}m{seconds:02d}s)"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(len(self.last)))
            sys.stderr.flush()
        elif line.split(" (")[0] != self.last.split(" (")[0]:
            print(line, file=sys.stderr)
        self.last = line

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def _clients(region: str | None, target: str) -> dict[str, Any]:
    import boto3

    clients = {"s3": boto3.client("s3", region_name=region)}
    if target == "serverless":
        clients["serverless"] = boto3.client("emr-serverless", region_name=region)
    else:
        clients["emr"] = boto3.client("emr", region_name=region)
    return clients


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parse_args(argv)
    target = "cluster" if args.cluster_id else "new_cluster" if args.create_cluster else "serverless"
    progress = _ProgressLine()
    try:
        config = emr_config.read_emr_config(args.config)
        region = args.region or config.region

        def plan_for(region: str | None, manifest_bytes: int | None = None) -> emr_plan.SubmissionPlan:
            return emr_plan.build_submission_plan(
                config, target=target, text=args.text, images=args.images, out=args.out, work=args.work,
                root=ROOT, version=__version__, criteria=args.criteria, cluster_id=args.cluster_id,
                application_id=args.serverless_app_id, region=region, manifest_bytes=manifest_bytes,
                client_token=client_token)

        client_token = uuid.uuid4().hex
        plan = plan_for(region)  # validates every argument before any AWS call
        if args.dry_run:
            print(json.dumps(plan.describe(), indent=2))
            if plan.missing:
                print(f"{PROG}: warning: missing {', '.join(plan.missing)}: run `make dist` "
                      f"(and `make wheelhouse` for --create-cluster) before a real submission", file=sys.stderr)
            return 0
        if plan.missing:
            raise ConfigError("missing_artifact", f"{', '.join(plan.missing)}: run `make dist`"
                              + (" and `make wheelhouse`" if target == "new_cluster" else ""))
        from botocore.exceptions import BotoCoreError

        try:
            clients = _clients(region, target)
        except BotoCoreError as exc:
            raise EmrError("aws_unreachable", str(exc)) from exc
        region = region or clients["s3"].meta.region_name
        # a rerun sizes the reassemble shuffle from the manifest already there
        plan = plan_for(region, tasks.read_manifest_bytes(plan.layout.manifest))
        layout.write_uploads(clients["s3"], plan.uploads)
        result = emr_plan.run_plan(plan, emr=clients.get("emr"), serverless=clients.get("serverless"), wait=args.wait,
                              progress=progress, poll_seconds=config.poll_seconds,
                              timeout_seconds=config.timeout_hours * 3600)
        progress.done()
        print(json.dumps(result))
        return 0
    except (ConfigError, CriteriaError) as exc:
        progress.done()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except ReassemblyError as exc:
        progress.done()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.done()
        print(f"{PROG}: interrupted; anything already submitted keeps running", file=sys.stderr)
        return 130
    except Exception as exc:  # a fault, not bad input: still one line unless asked for the traceback
        progress.done()
        if args.debug or os.environ.get("DICOM_REASSEMBLY_LOG", "").upper() == "DEBUG":
            traceback.print_exc(file=sys.stderr)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"{PROG}: error: {type(exc).__name__}: {first} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
