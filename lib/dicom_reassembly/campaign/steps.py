"""The campaign's steps, each a small idempotent function over our own commands and jobs.

A step decides what to do from the data under ``work`` (restore ledger, manifest, ledger), so running it again
after a crash or a finished run does only what is left: restores already requested and not expired are not
requested again, an up-to-date manifest is not rebuilt, and reassemble plans only the instances its state does
not hold final (the ones already written are carried over).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..emr.layout import WorkLayout, work_layout
from ..errors import ConfigError, ReassemblyError
from ..io import arrow_io, clients, uris
from ..io.clients import ArchiveAccess
from ..manifest import listing as manifest_listing
from ..restore import expiry, requests, status
from ..restore import plan as restore_plan
from . import jobs
from .channel import criteria_file
from .params import CampaignParams, SecretText

log = logging.getLogger(__name__)
SPARK_PLAN_BYTES = 1 << 30  # about 300,000 headers: minutes in one process; beyond, wave 2 is planned on Spark



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
    """Fail before any restore when a tranche is malformed, or asked for but reassemble has no ``--tranche`` yet."""
    from ..selection.tranche import parse_tranche

    if params.tranche and not jobs.job_accepts("reassemble", jobs.TRANCHE_OPTION):
        raise ConfigError("tranche_not_supported", "this version's jobs/reassemble.py has no --tranche option; "
                                                   "leave tranche out, or update the jobs")
    parse_tranche(params.tranche)


def archive_tranche(params: CampaignParams) -> Any:
    """The tranche's archive terms (prefix, hash) that bound restores and indexing too; None without them.

    ``limit:N`` counts instances, so it bounds reassemble alone.
    """
    from ..selection.tranche import parse_tranche

    tranche = parse_tranche(params.tranche)
    return tranche.archive_terms() if tranche is not None else None


# ------------------------------------------------------------------------------------------- restores


def plan_wave(params: CampaignParams, inputs: Inputs, wave: int) -> restore_plan.RestorePlan:
    """The restore plan with the manifest as it stands: wave 1 needs no criteria, wave 2 applies them.

    Wave 2 evaluates every header: on EMR, or once the manifest outgrows ``spark_plan_bytes()``, a Spark job
    (``jobs/plan_restore.py``) does it on the executors; a small manifest is planned here, with pyarrow.
    """
    layout = layout_of(params)
    manifest = layout.manifest if arrow_io.dataset_exists(layout.manifest) else None
    spec = inputs.spec if wave == restore_plan.WAVE_PIXELS and params.criteria and manifest else None
    tranche = archive_tranche(params)
    if spec is not None and plans_on_spark(params, layout.manifest):
        return plan_wave_on_spark(params, inputs, tranche)
    return restore_plan.plan_restore(params.text, params.images, manifest, spec, access=inputs.access,
                                     tranche=tranche)


def spark_plan_bytes() -> int:
    """The manifest size above which wave 2 is planned by a Spark job (``DICOM_REASSEMBLY_SPARK_PLAN_BYTES``)."""
    raw = os.environ.get("DICOM_REASSEMBLY_SPARK_PLAN_BYTES", "")
    return int(raw) if raw.strip().isdigit() else SPARK_PLAN_BYTES


def plans_on_spark(params: CampaignParams, manifest: str) -> bool:
    """True on EMR, and when the manifest's Parquet outgrows what one process parses in minutes."""
    from ..reassembly.tasks import read_manifest_bytes

    return params.emr is not None or (read_manifest_bytes(manifest) or 0) > spark_plan_bytes()


def plan_wave_on_spark(params: CampaignParams, inputs: Inputs, tranche: Any) -> restore_plan.RestorePlan:
    """Wave 2 planned by ``jobs/plan_restore.py`` (spark-submit or an EMR step); the plan is read back from ``work``."""
    from ..restore import spark_plan

    layout = layout_of(params)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    where = uris.join_uri(layout.work, "campaign", "plans", f"{stamp}-{uuid.uuid4().hex[:8]}")
    args = ["--text", params.text, "--images", params.images, "--manifest", layout.manifest, "--plan", where]
    if tranche is not None:
        args += [jobs.TRANCHE_OPTION, str(tranche)]
    run_job(params, inputs, "plan_restore", args)
    return spark_plan.read_plan(where)


def request_wave(params: CampaignParams, inputs: Inputs, plan: restore_plan.RestorePlan, wave: int) -> dict[str, Any]:
    """Request the restores of one wave that are not already under way; every request goes to the ledger."""
    todo = plan.to_restore(params.include_unknown, wave)
    active = expiry.read_active_restores(layout_of(params).restore_ledger, datetime.now(timezone.utc))
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
    todo = manifest_listing.archives_in_tranche(manifest_listing.archives_to_index(listing, indexed),
                                                archive_tranche(params))
    return len(listing), len(todo)


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
    args = ["--text", params.text, "--images", params.images, "--manifest", layout.manifest]
    tranche = archive_tranche(params)
    if tranche is not None and jobs.job_accepts("build_manifest", jobs.TRANCHE_OPTION):
        args += [jobs.TRANCHE_OPTION, str(tranche)]
    result = run_job(params, inputs, "build_manifest", args)
    return {"archives_listed": listed, "to_index": todo, "ran": True,
            "output": [line for line in result.stdout.splitlines() if line.strip()][-8:]}


def reassemble(params: CampaignParams, inputs: Inputs) -> dict[str, Any]:
    """Reassemble the selected instances into ``out`` (and STOW them when ``stow_url`` is set)."""
    layout = layout_of(params)
    args = ["--manifest", layout.manifest, "--out", params.out, "--ledger", layout.ledger, "--runs", layout.runs,
            "--computations", layout.computations]
    if params.stow_url:
        args += ["--stow-url", params.stow_url]
    if jobs.job_accepts("reassemble", jobs.RESTORE_LEDGER_OPTION):  # expired restores stay out of the plan
        args += [jobs.RESTORE_LEDGER_OPTION, layout.restore_ledger]
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
