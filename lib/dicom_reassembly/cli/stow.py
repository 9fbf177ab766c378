"""``dicom-reassembly stow``: send Part 10 files or objects to a DICOMweb STOW-RS endpoint."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError, ReassemblyError
from ..stow.client import FAILED, SENT, StowItem
from ..stow.command import list_instances, read_failed_from_ledger, send_objects
from ..stow.settings import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_COUNT,
    DEFAULT_TIMEOUT,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    MB,
    StowSettings,
)

log = logging.getLogger(__name__)


def parse_size(text: str) -> int:
    """``50MB``, ``512k``, ``1G`` or bytes -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    factor = {"": 1, "k": 1024, "m": MB, "g": 1024 * MB}[m.group(2).lower()]
    value = int(float(m.group(1)) * factor)
    if value < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return value


def parse_timeout(text: str) -> tuple[float, float]:
    """``30`` (both) or ``10,300`` (connect, read) seconds."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a timeout: {text!r}") from exc
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError("timeout is SECONDS or CONNECT,READ, positive")
    return values[0], values[1]


def add_stow_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stow`` on an argparse subparsers object; sets ``func=run_stow``."""
    p = subparsers.add_parser(
        "stow", help="send .dcm files or objects to a DICOMweb STOW-RS endpoint",
        description=f"Send Part 10 files to {{URL}}/studies. Auth: {ENV_TOKEN} (bearer) or "
                    f"{ENV_USER}/{ENV_PASSWORD} (basic) in the environment.")
    p.add_argument("--from", dest="from_uri", metavar="URI",
                   help="local folder/file or s3:// prefix of .dcm objects")
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. https://pacs/dicom-web")
    p.add_argument("--only-failed", metavar="LEDGER",
                   help="Parquet ledger: resend only rows with stow_status = failed")
    p.add_argument("--ledger-out", metavar="PATH", help="write per-instance results as Parquet here")
    p.add_argument("--batch-count", type=int, default=DEFAULT_BATCH_COUNT, help="instances per request")
    p.add_argument("--batch-bytes", type=parse_size, default=DEFAULT_BATCH_BYTES, help="bytes per request (50MB)")
    p.add_argument("--timeout", type=parse_timeout, default=DEFAULT_TIMEOUT, help="SECONDS or CONNECT,READ")
    p.add_argument("--max-retries", type=int, default=5, help="retries on connection errors, 5xx and 429")
    p.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    p.set_defaults(func=run_stow, command="stow")
    return p


def settings_from_args(args: argparse.Namespace) -> StowSettings:
    """StowSettings from parsed ``stow`` arguments."""
    return StowSettings(
        url=args.url, batch_count=args.batch_count, batch_bytes=args.batch_bytes, timeout=args.timeout,
        verify_tls=not args.insecure, max_retries=getattr(args, "max_retries", 5),
        backoff_base=getattr(args, "backoff", 1.0))


def run_stow(args: argparse.Namespace) -> int:
    """The ``stow`` command: 0 when every instance was sent, 1 when some failed, 2 on bad input."""
    import sys

    try:
        if not args.from_uri and not args.only_failed:
            raise ConfigError("missing_source", "give --from URI or --only-failed LEDGER")
        settings = settings_from_args(args)
        if args.insecure:
            import urllib3

            print(f"warning: TLS certificate verification is disabled for {settings.url}", file=sys.stderr)
            # One warning above is enough; urllib3 would repeat it on every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        if args.only_failed:
            items: Iterable[StowItem] = read_failed_from_ledger(args.only_failed, args.from_uri)
        else:
            items = list_instances(args.from_uri)
        summary = send_objects(items, settings, args.ledger_out)
    except ReassemblyError as exc:
        print(f"stow: {exc.one_line()}", file=sys.stderr)
        return 2
    print(f"{SENT}: {summary[SENT]}")
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["reasons"].items(), key=lambda kv: str(kv[0])))
    print(f"{FAILED}: {summary[FAILED]}" + (f" ({reasons})" if reasons else ""))
    if summary["ledger"]:
        print(f"ledger: {summary['ledger']}")
    return 0 if summary[FAILED] == 0 else 1
