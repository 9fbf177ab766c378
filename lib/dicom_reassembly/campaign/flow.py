"""The Prefect flow ``dicom-reassembly-campaign``: restore waves, indexing, selection and reassembly in order.

restore wave 1 (headers) -> wait -> build_manifest -> selection (wave 2 plan) -> restore wave 2 (pixel archives
holding selected instances) -> wait -> build_manifest (the restored pixel archives) -> reassemble (+ STOW) ->
report. Each task is a step from ``steps`` and is idempotent; Prefect retries a task unless its error is bad
input or a reached bound. Nothing is cached in Prefect and no task result is persisted: the data under
``work`` are the state, so a flow started again after a crash resumes from them.

The input credentials never travel as a task input or result: the flow resolves them once (inline parameter or
``credentials_block``) into an :class:`steps.Inputs`, which refuses pickling, and tasks receive it by reference.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from ..errors import ConfigError, CriteriaError
from ..io import uris, writes
from ..restore import plan as restore_plan
from . import DEPLOYMENT_NAME, FLOW_NAME, steps
from .jobs import JobError
from .params import DEFAULT_POLL_SECONDS, CampaignParams, parse_params, resolve_credentials
from .status import campaign_status

RETRIES = 2
RETRY_DELAYS = [30, 120]


def _retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Retry faults (a lost connection, a crashed executor), not bad input or a reached bound."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, (JobError, steps.CampaignError)):
        return exc.retryable
    return not isinstance(exc, (ConfigError, CriteriaError))


_TASK = {"retries": RETRIES, "retry_delay_seconds": RETRY_DELAYS, "retry_condition_fn": _retryable,
         "cache_policy": NO_CACHE, "persist_result": False}


@task(name="plan-restore", **_TASK)
def plan_task(params: CampaignParams, inputs: steps.Inputs, wave: int) -> restore_plan.RestorePlan:
    plan = steps.plan_wave(params, inputs, wave)
    summary = plan.summary(params.include_unknown)
    get_run_logger().info("wave %d plan: %d archives to restore (%d bytes); %s", wave,
                          len(plan.to_restore(params.include_unknown, wave)),
                          sum(o.size for o in plan.to_restore(params.include_unknown, wave)),
                          "; ".join(summary.get("notes", [])) or "no notes")
    return plan


@task(name="request-restores", **_TASK)
def request_task(params: CampaignParams, inputs: steps.Inputs, plan: restore_plan.RestorePlan, wave: int) -> dict:
    out = steps.request_wave(params, inputs, plan, wave)
    get_run_logger().info("wave %d requests: %s", wave, json.dumps(out, default=str))
    return out


@task(name="wait-for-restores", **_TASK)
def wait_task(params: CampaignParams, inputs: steps.Inputs, plan: restore_plan.RestorePlan, wave: int) -> dict:
    logger = get_run_logger()
    result = steps.wait_wave(params, inputs, plan, wave, progress=logger.info)
    logger.info("wave %d restored: %d archives after %d polls", wave, result.objects, result.polls)
    return vars(result)


@task(name="build-manifest", **_TASK)
def build_manifest_task(params: CampaignParams, inputs: steps.Inputs) -> dict:
    out = steps.build_manifest(params, inputs)
    get_run_logger().info("build_manifest: %d archives listed, %d to index%s", out["archives_listed"],
                          out["to_index"], "" if out["ran"] else " (manifest up to date: no Spark run)")
    return out


@task(name="reassemble", **_TASK)
def reassemble_task(params: CampaignParams, inputs: steps.Inputs) -> dict:
    out = steps.reassemble(params, inputs)
    get_run_logger().info("reassemble: %s", json.dumps(out.get("status_counts", {}), sort_keys=True))
    return out


@task(name="report", **_TASK)
def report_task(params: CampaignParams, stages: dict[str, Any]) -> dict:
    """The run's report: step counts and the campaign status; also written under ``work`` (no secret)."""
    status = campaign_status(params.work)
    report = {"flow_run_id": str(flow_run.get_id() or ""), "finished_at": datetime.now(timezone.utc).isoformat(),
              "parameters": params.public(), "steps": stages,
              "status": {k: status[k] for k in ("states", "done", "left", "settled", "bytes_done", "bytes_left",
                                                "eta_seconds")},
              "restores": status["restores"]}
    name = f"{report['finished_at'][:19].replace(':', '')}-{report['flow_run_id'] or 'local'}.json"
    uri = uris.join_uri(steps.layout_of(params).reports, name)
    writes.write_bytes(uri, json.dumps(report, indent=1, sort_keys=True, default=str).encode("utf-8"),
                        writes.WriteOptions(content_type="application/json"))
    get_run_logger().info("report written: %s; states %s", uri, json.dumps(status["states"], sort_keys=True))
    report["report_uri"] = uri
    return report


@flow(name=FLOW_NAME, validate_parameters=True, log_prints=False, persist_result=False)
def campaign_flow(
    text: str,
    images: str,
    out: str,
    work: str,
    input_s3_parameters: dict[str, Any] | None = None,
    criteria: list[dict[str, Any]] | None = None,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    max_wait_seconds: float | None = None,
    tranche: str | None = None,
    stow_url: str | None = None,
    emr: dict[str, Any] | None = None,
    credentials_block: str | None = None,
    config: str | None = None,
    restore_tier: str = "Bulk",
    restore_days: int = 7,
    include_unknown: bool = True,
) -> dict[str, Any]:
    """Drive a campaign over ``text``/``images`` into ``out``, its state under ``work``; returns the report."""
    params = parse_params({
        "text": text, "images": images, "out": out, "work": work, "input_s3_parameters": input_s3_parameters,
        "criteria": criteria, "poll_seconds": poll_seconds, "max_wait_seconds": max_wait_seconds,
        "tranche": tranche, "stow_url": stow_url, "emr": emr, "credentials_block": credentials_block,
        "config": config, "restore_tier": restore_tier, "restore_days": restore_days,
        "include_unknown": include_unknown})
    inputs = steps.Inputs(params, resolve_credentials(params))
    steps.check_tranche(params)  # before any restore is paid for
    stages: dict[str, Any] = {}
    plan = plan_task(params, quote(inputs), restore_plan.WAVE_HEADERS)
    stages["restore_headers"] = request_task(params, quote(inputs), quote(plan), restore_plan.WAVE_HEADERS)
    stages["wait_headers"] = wait_task(params, quote(inputs), quote(plan), restore_plan.WAVE_HEADERS)
    stages["build_manifest"] = build_manifest_task(params, quote(inputs))
    plan = plan_task(params, quote(inputs), restore_plan.WAVE_PIXELS)  # the selection: archives of selected instances
    stages["selection"] = plan.summary(params.include_unknown).get("selection")
    stages["restore_pixels"] = request_task(params, quote(inputs), quote(plan), restore_plan.WAVE_PIXELS)
    stages["wait_pixels"] = wait_task(params, quote(inputs), quote(plan), restore_plan.WAVE_PIXELS)
    stages["build_manifest_pixels"] = build_manifest_task(params, quote(inputs))
    stages["reassemble"] = reassemble_task(params, quote(inputs))
    return report_task(params, stages)


def serve() -> None:
    """Serve the deployment ``dicom-reassembly-campaign/default`` to PREFECT_API_URL until stopped."""
    from prefect.deployments.runner import EntrypointType

    campaign_flow.serve(name=DEPLOYMENT_NAME, entrypoint_type=EntrypointType.MODULE_PATH)
