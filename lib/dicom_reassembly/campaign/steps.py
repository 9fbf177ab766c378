"""The campaign's steps, each a small idempotent function over our own commands and jobs.

A step decides what to do from the data under ``work`` (restore ledger, manifest, ledger), so running it again
after a crash or a finished run does only what is left: restores already requested and not expired are not
requested again, an up-to-date manifest is not rebuilt, and reassemble records ``skipped_existing`` for objects
already written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import errors
from ..emr.layout import WorkLayout, work_layout
from ..errors import ConfigError, ReassemblyError
from ..io import arrow_io, clients, uris
from ..io.clients import ArchiveAccess
from ..manifest import listing as manifest_listing
from ..restore import ledger, requests, status
from ..restore import plan as restore_plan
from . import jobs
from .channel import criteria_file
from .params import CampaignParams, SecretText

log = logging.getLogger(__name__)

# Restore-ledger outcomes that mean a restored copy exists or is on its way (until ``days`` after the request).
ACTIVE_OUTCOMES = (requests.OUTCOME_REQUESTED, requests.OUTCOME_IN_PROGRESS, requests.OUTCOME_ALREADY_RESTORED,
                   requests.OUTCOME_BATCH)


class CampaignError(ReassemblyError):
    """A step cannot go on: a bound was reached or S3 refused us. ``retryable`` tells Prefect's retries."""

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False, uri: str | None = None) -> None:
        super().__init__(reason, detail, uri=uri)
        self.retryable = retryable


class Inputs:
    """The run's view of the partner's bucket: settings with the secret, never shown, never pickled."""

    def __init__(self, params: CampaignParams, credentials: SecretText | None) -> None:
        from ..selection.spec import parse_criteria

        self.params = params
        self._credentials = credentials
        self.spec = parse_criteria(params.criteria_document(credentials))  # holds the secret; not picklable

    def __repr__(self) -> str:
        return f"Inputs(bucket={self.params.input.bucket if self.params.input else None!r})"

    def __reduce__(self) -> Any:
        raise TypeError("Inputs holds credentials and is not picklable")

    @property
    def settings(self) -> clients.S3Settings | None:
        return self.spec.s3

    def document(self) -> dict[str, Any]:
        """The criteria document for a job's ``--criteria`` (the secret included: hand it over a safe channel)."""
        return self.params.criteria_document(self._credentials)

    def redact(self, text: str) -> str:
        """``text`` with every form of the secret replaced by ``***``."""
        from ..selection.spec import redact

        return redact(text, self.spec)

    @property
    def access(self) -> ArchiveAccess | None:
        """The input credentials for the input bucket only, for the listings and reads of this process."""
        return self.spec.access


def layout_of(params: CampaignParams) -> WorkLayout:
    """Where the campaign keeps its state: the data under ``work`` are the state of record, not Prefect's."""
    return work_layout(params.work, s3_only=False)


def check_tranche(params: CampaignParams) -> None:
    """Fail before any restore when a tranche is asked for but reassemble has no ``--tranche`` yet."""
    if params.tranche and not jobs.job_accepts("reassemble", jobs.TRANCHE_OPTION):
        raise ConfigError("tranche_not_supported", "this version's jobs/reassemble.py has no --tranche option; "
                                                   "leave tranche out, or update the jobs")


# ------------------------------------------------------------------------------------------- restores


def plan_wave(params: CampaignParams, inputs: Inputs, wave: int) -> restore_plan.RestorePlan:
    """The restore plan with the manifest as it stands: wave 1 needs no criteria, wave 2 applies them."""
    layout = layout_of(params)
    manifest = layout.manifest if arrow_io.dataset_exists(layout.manifest) else None
    spec = inputs.spec if wave == restore_plan.WAVE_PIXELS and params.criteria and manifest else None
    return restore_plan.plan_restore(params.text, params.images, manifest, spec, access=inputs.access)


def read_active_restores(ledger_uri: str, now: datetime) -> set[str]:
    """Archives whose newest restore request succeeded and whose copy has not expired (requested_at + days)."""
    try:
        table = ledger.read_restore_ledger(ledger_uri)
    except errors.NotFoundError:
        return set()
    newest: dict[str, dict[str, Any]] = {}
    for row in table.select(["uri", "requested_at", "outcome", "days"]).to_pylist():
        prev = newest.get(row["uri"])
        if prev is None or (row["requested_at"] or now) >= (prev["requested_at"] or now):
            newest[row["uri"]] = row
    return {uri for uri, r in newest.items() if r["outcome"] in ACTIVE_OUTCOMES and r["requested_at"] is not None
            and r["requested_at"] + timedelta(days=int(r["days"] or 0)) > now}


def request_wave(params: CampaignParams, inputs: Inputs, plan: restore_plan.RestorePlan, wave: int) -> dict[str, Any]:
    """Request the restores of one wave that are not already under way; every request goes to the ledger."""
    todo = plan.to_restore(params.include_unknown, wave)
    active = read_active_restores(layout_of(params).restore_ledger, datetime.now(timezone.utc))
    fresh = [o for o in todo if o.uri not in active]
    out: dict[str, Any] = {"wave": wave, "to_restore": len(todo), "bytes": sum(o.size for o in todo),
                           "already_requested": len(todo) - len(fresh), "outcomes": {}}
    if fresh:
        report = requests.request_restores(fresh, params.restore_tier, params.restore_days,
                                          ledger_uri=layout_of(params).restore_ledger, settings=inputs.settings)
        out["outcomes"], out["errors"] = report.outcomes, report.error_codes
    return out


@dataclass
class WaitResult:
    """How a wait for restores ended."""

    wave: int
    objects: int
    polls: int = 0
    waited_seconds: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    earliest_expiry: str | None = None


def wait_wave(params: CampaignParams, inputs: Inputs, plan: restore_plan.RestorePlan, wave: int, *,
              sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
              progress: Callable[[str], None] = log.info) -> WaitResult:
    """Poll each object still waiting every ``poll_seconds`` until all are restored, up to the wait bound.

    Objects seen restored are not asked again. An object that shows no restore under way (never requested,
    or its copy expired) is requested again. The bound raises ``restore_wait_timeout``; a new run resumes.
    """
    waiting = {o.uri: o for o in plan.to_restore(params.include_unknown, wave)}
    result = WaitResult(wave, len(waiting))
    start = clock()
    expiries: list[datetime] = []
    while waiting:
        result.polls += 1
        report = status.restore_status(list(waiting.values()), settings=inputs.settings)
        again = []
        for st in report.objects:
            if st.state in (status.STATUS_RESTORED, status.STATUS_NOT_NEEDED):
                waiting.pop(st.uri, None)
                if st.expiry is not None:
                    expiries.append(st.expiry)
            elif st.state == status.STATUS_NOT_REQUESTED:
                again.append(waiting[st.uri])
            elif st.state == status.STATUS_MISSING:
                log.warning("archive %s is gone; it is no longer waited for", st.uri)
                waiting.pop(st.uri, None)
            elif st.state == status.STATUS_ERROR and st.error in ("AccessDenied", "403"):
                raise CampaignError("restore_status_denied", f"HEAD refused ({st.error}): check input_s3_parameters",
                                    uri=st.uri)
        summary = report.summary()
        result.states = {k: v["count"] for k, v in summary["states"].items()}
        if again:
            requests.request_restores(again, params.restore_tier, params.restore_days,
                                     ledger_uri=layout_of(params).restore_ledger, settings=inputs.settings)
        if not waiting:
            break
        elapsed = clock() - start
        progress(f"wave {wave}: {len(waiting)} of {result.objects} archives not restored yet "
                 f"({', '.join(f'{k} {v}' for k, v in sorted(result.states.items()))}); waited {elapsed:.0f}s")
        if elapsed + params.poll_seconds > params.wait_bound:
            raise CampaignError("restore_wait_timeout",
                                f"wave {wave}: {len(waiting)} archives still not restored after {elapsed:.0f}s "
                                f"(bound {params.wait_bound:.0f}s); start the flow again to resume waiting")
        sleep(params.poll_seconds)
    result.waited_seconds = round(clock() - start, 3)
    result.earliest_expiry = min(expiries).isoformat() if expiries else None
    return result


# ------------------------------------------------------------------------------------------ Spark jobs


def archives_to_index(params: CampaignParams, inputs: Inputs) -> tuple[int, int]:
    """(archives listed, archives build_manifest would index): the job's own rule, read without Spark."""
    from ..config import load_config
    from ..io import arrow_io

    suffixes = load_config(params.config).archive_suffixes if params.config and not params.emr else (".tar",)
    listing = manifest_listing.list_archives(params.text, params.images, suffixes, inputs.access)
    manifest = layout_of(params).manifest
    indexed: list[dict[str, Any]] = []
    if arrow_io.dataset_exists(manifest):
        dataset = arrow_io.open_manifest(manifest)
        cols = [c for c in ("archive_role", "archive_size", "archive_etag", "error") if c in dataset.schema.names]
        with arrow_io.manifest_errors(manifest):
            indexed = arrow_io.newest_archive_rows(dataset, cols).to_pylist()
    return len(listing), len(manifest_listing.archives_to_index(listing, indexed))


def run_job(params: CampaignParams, inputs: Inputs, job: str, args: list[str]) -> jobs.JobResult:
    """Run one job locally or on EMR, its ``--criteria`` carried by the safe channel of each (see ``channel``)."""
    document = inputs.document() if params.input is not None or params.criteria else None
    if params.emr is not None:
        layout = layout_of(params)
        job_config = params.config if params.config and not uris.is_s3(params.config) else None
        extra = ["--config", uris.join_uri(layout.work, "code", "job-config.json")] if job_config else \
            (["--config", params.config] if params.config else [])
        with jobs.emr_criteria(params.emr, params.work, document) as arn:
            return jobs.run_emr(job, [*args, *(["--criteria", arn] if arn else []), *extra], params.emr, params.work,
                                poll_seconds=min(params.poll_seconds, 60.0),
                                timeout_seconds=7 * 86400, job_config=job_config)
    extra = ["--config", params.config] if params.config else []
    if document is None:
        return jobs.run_local(job, [*args, *extra], inputs.redact)
    with criteria_file(document) as path:
        return jobs.run_local(job, [*args, "--criteria", path, *extra], inputs.redact)


def build_manifest(params: CampaignParams, inputs: Inputs) -> dict[str, Any]:
    """Index new, changed and not-yet-restored archives (incremental); no Spark when nothing is left to index."""
    listed, todo = archives_to_index(params, inputs)
    if not todo:
        return {"archives_listed": listed, "to_index": 0, "ran": False}
    layout = layout_of(params)
    result = run_job(params, inputs, "build_manifest",
                     ["--text", params.text, "--images", params.images, "--manifest", layout.manifest])
    return {"archives_listed": listed, "to_index": todo, "ran": True,
            "output": [line for line in result.stdout.splitlines() if line.strip()][-8:]}


def reassemble(params: CampaignParams, inputs: Inputs) -> dict[str, Any]:
    """Reassemble the selected instances into ``out`` (and STOW them when ``stow_url`` is set)."""
    layout = layout_of(params)
    args = ["--manifest", layout.manifest, "--out", params.out, "--ledger", layout.ledger, "--runs", layout.runs,
            "--computations", layout.computations]
    if params.stow_url:
        args += ["--stow-url", params.stow_url]
    if params.tranche:
        check_tranche(params)
        args += [jobs.TRANCHE_OPTION, params.tranche]
    result = run_job(params, inputs, "reassemble", args)
    summary: dict[str, Any] = {"ran": True}
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                summary.update(json.loads(line))
            break
    return summary
