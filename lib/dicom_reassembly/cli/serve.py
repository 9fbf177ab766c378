"""The ``serve`` and ``token`` commands.

``serve`` runs the DICOMweb app with uvicorn over a local (or S3) catalogue and output store; uploads go
through an intake with its own spool. ``token`` mints an HS256 token for local use with the secret in
``DICOM_REASSEMBLY_JWT_SECRET``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

from ..dicomweb.auth import ENV_SECRET
from ..errors import ConfigError
from .listen import DEFAULT_LEDGER, DEFAULT_OUT, absolute_uri, default_catalog

log = logging.getLogger(__name__)

DEFAULT_SPOOL = "work/serve-spool"


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve``; sets ``func=run_serve``."""
    p = subparsers.add_parser(
        "serve", help="a DICOMweb service (QIDO/WADO/STOW-RS) over the output store and the catalogue",
        description=f"DICOMweb (PS3.18) with per-patient JWT bearer tokens: HS256 with the secret in {ENV_SECRET}, "
                    "or RS256 with --jwks. Uploads (STOW-RS) are checked and written like received instances.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="TCP port (default 8081)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"where uploads are written (default {DEFAULT_OUT})")
    p.add_argument("--ledger", default=DEFAULT_LEDGER, help=f"ledger for uploads (default {DEFAULT_LEDGER})")
    p.add_argument("--catalog", help="catalogue to search and serve (default <ledger>_catalog)")
    p.add_argument("--spool", default=DEFAULT_SPOOL, help=f"local spool for uploads (default {DEFAULT_SPOOL})")
    p.add_argument("--config", help="job config (JSON): key_template and write options for uploads")
    p.add_argument("--jwks", metavar="FILE", help="verify RS256 tokens with the public keys of this JWKS file")
    p.add_argument("--read-only", action="store_true", help="refuse uploads (no STOW-RS)")
    p.set_defaults(func=run_serve, command="serve")
    return p


def add_token_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``token``; sets ``func=run_token``."""
    p = subparsers.add_parser("token", help="mint a bearer token for serve (local use)",
                              description=f"Print an HS256 JWT signed with {ENV_SECRET}.")
    p.add_argument("--patient", action="append", default=[], metavar="ID",
                   help="a PatientID the token may see (repeatable)")
    p.add_argument("--all-patients", action="store_true", help="every patient (patient_ids ['*'])")
    p.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    p.add_argument("--subject", help="the token's sub claim (who it is for)")
    p.set_defaults(func=run_token, command="token")
    return p


def run_token(args: argparse.Namespace) -> int:
    """Print a token; bad input raises ConfigError (exit 2)."""
    from ..dicomweb.auth import ALL_PATIENTS, mint_token, parse_ttl

    secret = os.environ.get(ENV_SECRET)
    if not secret:
        raise ConfigError("no_secret", f"set {ENV_SECRET} (at least 32 bytes) to sign tokens")
    if args.all_patients == bool(args.patient):
        raise ConfigError("no_patient", "give --patient ID (repeatable) or --all-patients")
    ids = [ALL_PATIENTS] if args.all_patients else args.patient
    print(mint_token(ids, parse_ttl(args.ttl), secret, args.subject))
    return 0


def build_app(args: argparse.Namespace) -> tuple[Any, Any]:
    """(app, intake or None) from ``serve`` arguments."""
    from ..config import load_config
    from ..dicomweb.app import create_app
    from ..dicomweb.auth import AuthSettings
    from ..dicomweb.query import CatalogIndex
    from ..intake.receiver import Intake, IntakeSettings
    from ..run_id import new_run_id

    auth = AuthSettings.from_env(args.jwks)
    ledger = absolute_uri(args.ledger)
    catalog = absolute_uri(args.catalog) if args.catalog else default_catalog(ledger)
    intake = None
    if not args.read_only:
        cfg = load_config(args.config)
        settings = IntakeSettings(out=absolute_uri(args.out), ledger=ledger, catalog=catalog,
                                  run_id=new_run_id(datetime.now(timezone.utc)), key_template=cfg.key_template,
                                  write_options=cfg.write_options())
        intake = Intake(settings, args.spool)
    return create_app(CatalogIndex(catalog), auth, intake), intake


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn's handlers), then record what uploads left queued."""
    import uvicorn

    if not 0 <= args.port <= 65535:
        raise ConfigError("bad_port", f"--port {args.port} is not 0-65535")
    app, intake = build_app(args)
    if intake is not None:
        intake.start()
    print(f"serving DICOMweb on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        if intake is not None:
            intake.stop()
    return 0
