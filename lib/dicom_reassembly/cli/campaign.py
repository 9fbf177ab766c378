"""``dicom-reassembly campaign serve|run|status``: the campaign flow's command line.

- ``serve`` serves the deployment ``dicom-reassembly-campaign/default`` to ``PREFECT_API_URL`` until stopped;
- ``run --params FILE`` runs the same flow once, in this process, on Prefect's embedded ephemeral server;
- ``status --work W`` shows where a campaign stands (``--json`` for machines).

Prefect is imported only by ``serve`` and ``run``: ``status`` reads our data and needs no orchestrator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from typing import Any

from ..errors import ConfigError

EXIT_FAILED = 1
EPHEMERAL_STARTUP_SECONDS = 180


def _require_prefect() -> None:
    try:
        import prefect  # noqa: F401
    except ImportError:
        raise ConfigError("prefect_not_installed", "pip install 'dicom-reassembly[campaign]' (make setup does)") \
            from None


def add_campaign_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``campaign serve|run|status``; the handler is ``args.func``."""
    p = subparsers.add_parser("campaign", help="drive a whole campaign with Prefect, and show where it stands")
    sub = p.add_subparsers(dest="campaign_command", required=True, metavar="serve|run|status")
    s = sub.add_parser("serve", help="serve the deployment dicom-reassembly-campaign/default to PREFECT_API_URL")
    s.set_defaults(func=cmd_serve)
    r = sub.add_parser("run", help="run the campaign flow once, in process (ephemeral Prefect server)")
    r.add_argument("--params", required=True, help="parameters JSON (bare, or wrapped in {\"parameters\": ...})")
    r.set_defaults(func=cmd_run)
    st = sub.add_parser("status", help="instance states, restores, bytes done and left, ETA")
    st.add_argument("--work", required=True, help="the campaign's work folder or s3:// prefix")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--expiring-hours", type=float, default=24.0,
                    help="count restored copies expiring within this many hours (default 24)")
    st.add_argument("--params", help="the campaign's parameters: with them, restored copies are checked by HEAD "
                                     "(the Restore header) instead of estimated")
    st.add_argument("--head-limit", type=int, default=1000, help="HEAD at most this many archives (default 1000)")
    st.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until interrupted")
    st.set_defaults(func=cmd_status)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until stopped (Ctrl-C or SIGTERM)."""
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("prefect_api_url_unset", "set PREFECT_API_URL to a Prefect server (`make prefect-server` "
                                                   "starts one at http://127.0.0.1:4200/api)")
    _require_prefect()
    from ..campaign.flow import serve

    serve()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the flow once in process; print the report as JSON; exit 1 when the run did not complete."""
    from ..campaign.params import read_params

    read_params(args.params)  # bad parameters end here, before Prefect starts: one line, exit 2
    with open(args.params, encoding="utf-8-sig") as fh:
        raw = json.load(fh)
    if isinstance(raw, dict) and list(raw) == ["parameters"]:
        raw = raw["parameters"]
    _require_prefect()
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    from ..campaign.flow import campaign_flow

    # The embedded ephemeral server; its 20 s start-up bound is too short on a busy two-core machine.
    updates = {} if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ else \
        {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_SECONDS}
    with temporary_settings(updates=updates, restore_defaults={PREFECT_API_URL}):
        state = campaign_flow(**raw, return_state=True)
    if not state.is_completed():
        print(f"error: campaign_failed: {state.name}: {(state.message or '').splitlines()[0][:500]}",
              file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(state.result(), indent=1, sort_keys=True, default=str))
    return 0


def _head_with(params_path: str) -> Any:
    """A HEAD function over the input bucket with the campaign's credentials."""
    from ..campaign.params import read_params, resolve_credentials
    from ..campaign.steps import Inputs
    from ..restore import plan, status

    params = read_params(params_path)
    inputs = Inputs(params, resolve_credentials(params))

    def head(uris: list[str]) -> dict[str, tuple[str, datetime | None]]:
        objs = [plan.PlannedObject(u, 0, "", 0, plan.STATE_RESTORE, "status", "GLACIER") for u in uris]
        report = status.restore_status(objs, settings=inputs.settings)
        return {s.uri: (s.state, s.expiry) for s in report.objects}

    return head


def cmd_status(args: argparse.Namespace) -> int:
    """Print the campaign's status (a table with a progress bar, or JSON)."""
    from ..campaign.status import campaign_status, format_status, to_json

    head = _head_with(args.params) if args.params else None
    while True:
        summary = campaign_status(args.work, expiring_hours=args.expiring_hours, head=head,
                                  head_limit=args.head_limit)
        text = to_json(summary) if args.json else format_status(summary)
        if args.watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")  # clear the screen: a redrawn display, not a scroll
        print(text, flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)
