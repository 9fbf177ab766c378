"""The ``listen`` command: run the C-STORE SCP until SIGTERM or SIGINT, then drain and stop.

Everything runs locally with no other service: the spool, its state file, the output, the ledger and the
catalogue are local folders by default (each may be an ``s3://`` prefix but the spool).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from ..config import load_config
from ..errors import ConfigError
from ..io import uris, writes

log = logging.getLogger(__name__)

DEFAULT_SPOOL = "work/spool"
DEFAULT_OUT = "out/received"
DEFAULT_LEDGER = "out/received_ledger"


def default_catalog(ledger: str) -> str:
    """Issue 20's default: the catalogue sits beside the ledger, as ``<ledger>_catalog``."""
    return ledger.rstrip("/") + "_catalog"


def add_listen_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``listen``; sets ``func=run_listen``."""
    p = subparsers.add_parser(
        "listen", help="receive instances by DICOM C-STORE into the output, ledger and catalogue",
        description="A C-STORE SCP: each instance is spooled, checked, written to --out under the key template, "
                    "recorded (status received) and, with --stow-url, forwarded by STOW-RS. SIGTERM or SIGINT "
                    "drains the forward queue; a restart picks up what is left in the spool.")
    p.add_argument("--ae-title", default="DCMREASM", help="this SCP's AE title (default DCMREASM)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default 11112; 0 picks a free one)")
    p.add_argument("--allow", action="append", default=[], metavar="AE",
                   help="calling AE title allowed to associate (repeatable; default: any)")
    p.add_argument("--spool", default=DEFAULT_SPOOL, help=f"local spool folder, with the state file (default {DEFAULT_SPOOL})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder or s3:// prefix (default {DEFAULT_OUT})")
    p.add_argument("--ledger", default=DEFAULT_LEDGER, help=f"ledger dataset (default {DEFAULT_LEDGER})")
    p.add_argument("--catalog", help="catalogue dataset (default <ledger>_catalog)")
    p.add_argument("--config", help="job config (JSON): key_template and the write options are used")
    p.add_argument("--stow-url", help="forward every stored instance to this DICOMweb root by STOW-RS")
    p.add_argument("--stow-batch", type=int, default=50, help="instances per STOW-RS request (default 50)")
    p.add_argument("--max-backlog", type=int, default=10000,
                   help="instances waiting to be forwarded before new ones are refused with 0xA700 (default 10000)")
    p.add_argument("--retry-max", type=float, default=60.0, help="longest wait between forward retries, seconds")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain the queue at shutdown")
    p.set_defaults(func=run_listen, command="listen")
    return p


def absolute_uri(uri: str) -> str:
    """Local paths made absolute: output URIs in the ledger and catalogue must not depend on the cwd."""
    return uri if uris.is_s3(uri) else os.path.abspath(uri)


def _settings(args: argparse.Namespace, run_id: str) -> Any:
    from ..intake.receiver import IntakeSettings
    from ..stow.settings import StowSettings

    if not 0 <= args.port <= 65535:
        raise ConfigError("bad_port", f"--port {args.port} is not 0-65535")
    if not args.ae_title.strip() or len(args.ae_title) > 16:
        raise ConfigError("bad_ae_title", "--ae-title must be 1 to 16 characters")
    if uris.is_s3(args.spool):
        raise ConfigError("bad_spool", "--spool must be a local folder (files are created exclusively and fsynced)")
    if args.max_backlog < 1 or args.stow_batch < 1 or args.retry_max <= 0 or args.drain_timeout < 0:
        raise ConfigError("bad_limit", "--max-backlog and --stow-batch must be at least 1, --retry-max positive")
    cfg = load_config(args.config)
    out, ledger = absolute_uri(args.out), absolute_uri(args.ledger)
    catalog = absolute_uri(args.catalog) if args.catalog else default_catalog(ledger)
    # The forwarder retries for ever with its own backoff; the client only retries a request once.
    stow = (StowSettings(args.stow_url, batch_count=args.stow_batch, max_retries=1, backoff_base=0.5,
                         backoff_max=2.0, timeout=(5.0, 120.0)) if args.stow_url else None)
    return IntakeSettings(out=out, ledger=ledger, catalog=catalog,
                          run_id=run_id, key_template=cfg.key_template, write_options=cfg.write_options(), stow=stow,
                          max_backlog=args.max_backlog, retry_max=args.retry_max,
                          retry_base=min(1.0, args.retry_max))


def run_listen(args: argparse.Namespace) -> int:
    """Serve until a signal; returns 0 after a clean drain. Bad options raise ConfigError (exit 2)."""
    from ..intake.receiver import Intake
    from ..intake.scp import build_ae, handlers
    from ..run_id import new_run_id

    run_id = new_run_id(datetime.now(timezone.utc))
    settings = _settings(args, run_id)
    writes.check_writable(settings.out)
    intake = Intake(settings, args.spool)
    picked = intake.start()
    ae = build_ae(args.ae_title, args.allow)
    try:
        server = ae.start_server((args.host, args.port), block=False, evt_handlers=handlers(intake))
    except OSError as exc:
        intake.stop(0)
        raise ConfigError("cannot_listen", f"{args.host}:{args.port}: {exc.strerror or exc}") from exc
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port} as {args.ae_title} (run {run_id}; {picked} picked up from the spool)",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("stopping: no new associations; draining", file=sys.stderr, flush=True)
        server.shutdown()
        deadline = time.monotonic() + args.drain_timeout
        while ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        ae.shutdown()  # aborts associations still open after the drain time
        intake.stop(args.drain_timeout)
    left = len(intake.spool.complete())
    print(f"stopped; {left} instance(s) left in the spool for the next start", file=sys.stderr, flush=True)
    return 0
