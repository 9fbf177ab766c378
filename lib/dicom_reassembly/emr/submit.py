"""Sending requests and waiting (``submit_*``, ``wait_*``): each takes the boto3 client as an argument; a
ClientError is logged with context and re-raised as ``EmrError``; waits stop on every terminal state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EmrError

log = logging.getLogger(__name__)
# Step and job-run states after which waiting is pointless.
STEP_FAILURE_STATES = {"FAILED": "step_failed", "CANCELLED": "step_cancelled", "INTERRUPTED": "step_interrupted"}
JOB_RUN_FAILURE_STATES = {"FAILED": "job_failed", "CANCELLED": "job_cancelled"}


def _aws_call(what: str, context: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call boto3; a ClientError is logged with context and re-raised as :class:`EmrError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        log.error("%s failed (%s): %s: %s", what, context, err.get("Code"), err.get("Message"))
        raise EmrError("aws_error", f"{what} ({context}): {err.get('Code')}: {err.get('Message')}") from exc
    except BotoCoreError as exc:
        log.error("%s failed (%s): %s", what, context, exc)
        raise EmrError("aws_unreachable", f"{what} ({context}): {exc}") from exc


def submit_steps(client: Any, cluster_id: str, steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """Add the steps to a running cluster; returns their ids in order."""
    r = _aws_call("AddJobFlowSteps", f"cluster {cluster_id}", client.add_job_flow_steps,
                  JobFlowId=cluster_id, Steps=[dict(s) for s in steps])
    ids = list(r["StepIds"])
    log.info("added %d steps to %s: %s", len(ids), cluster_id, ids)
    return ids


def submit_cluster(client: Any, request: Mapping[str, Any]) -> str:
    """Start a cluster (``run_job_flow``); returns its id."""
    r = _aws_call("RunJobFlow", f"cluster {request.get('Name')}, {request.get('ReleaseLabel')}",
                  client.run_job_flow, **dict(request))
    log.info("started cluster %s", r["JobFlowId"])
    return str(r["JobFlowId"])


def list_step_ids(client: Any, cluster_id: str, names: Sequence[str]) -> list[str]:
    """The ids of the named steps, in the order of ``names`` (newest step of each name)."""
    found: dict[str, str] = {}
    pages = client.get_paginator("list_steps").paginate(ClusterId=cluster_id)

    def collect() -> None:
        for page in pages:  # newest first
            for step in page.get("Steps", []):
                found.setdefault(step["Name"], step["Id"])

    _aws_call("ListSteps", f"cluster {cluster_id}", collect)
    missing = [n for n in names if n not in found]
    if missing:
        raise EmrError("step_not_found", f"cluster {cluster_id} has no step named {missing}")
    return [found[n] for n in names]


def submit_serverless(client: Any, request: Mapping[str, Any]) -> str:
    """Start one EMR Serverless job run; returns its id."""
    r = _aws_call("StartJobRun", f"application {request.get('applicationId')}, {request.get('name')}",
                  client.start_job_run, **dict(request))
    return str(r["jobRunId"])


@dataclass(frozen=True)
class Progress:
    """A progress report while waiting on a step or job run."""

    id: str
    name: str
    state: str
    elapsed: float
    index: int
    total: int


ProgressFn = Callable[[Progress], None]


def _failure_text(step: Mapping[str, Any]) -> str:
    status = step.get("Status", {})
    details = status.get("FailureDetails") or {}
    parts = [details.get("Reason"), details.get("Message"),
             (status.get("StateChangeReason") or {}).get("Message")]
    text = "; ".join(p for p in parts if p) or "no reason given"
    if details.get("LogFile"):
        text += f" (log: {details['LogFile']})"
    return text


def wait_for_steps(client: Any, cluster_id: str, step_ids: Sequence[str], progress: ProgressFn | None = None,
                   *, names: Sequence[str] = (), poll_seconds: float = 30, timeout_seconds: float = 7 * 86400,
                   clock: Callable[[], float] = time.monotonic) -> None:
    """Wait for the steps in order with boto3's ``step_complete`` waiter.

    The waiter stops at once on FAILED or CANCELLED; it is run in short rounds
    so ``progress`` gets a line per round. A step that fails, is cancelled or
    is interrupted raises :class:`EmrError` carrying the step's FailureDetails.
    ``names`` (same order as ``step_ids``) label progress before EMR reports them.
    """
    from botocore.exceptions import WaiterError

    waiter = client.get_waiter("step_complete")
    start = clock()
    for index, step_id in enumerate(step_ids):
        name = names[index] if index < len(names) else step_id
        while True:
            try:
                # Two attempts: one poll, one sleep, one poll; then control returns for progress and the deadline.
                waiter.wait(ClusterId=cluster_id, StepId=step_id,
                            WaiterConfig={"Delay": poll_seconds, "MaxAttempts": 2})
                if progress:
                    progress(Progress(step_id, name, "COMPLETED", clock() - start, index, len(step_ids)))
                break
            except WaiterError as exc:
                last = exc.last_response or {}
                if "Error" in last:
                    err = last["Error"]
                    log.error("DescribeStep failed (cluster %s, step %s): %s", cluster_id, step_id, err)
                    raise EmrError("aws_error", f"DescribeStep ({cluster_id}/{step_id}): {err.get('Code')}: "
                                                f"{err.get('Message')}") from exc
                step = last.get("Step", {})
                state = step.get("Status", {}).get("State", "UNKNOWN")
                name = step.get("Name", step_id)
                if state in STEP_FAILURE_STATES:
                    raise EmrError(STEP_FAILURE_STATES[state], f"{name} ({step_id}) {state}: {_failure_text(step)}",
                                   uri=cluster_id) from exc
                if progress:
                    progress(Progress(step_id, name, state, clock() - start, index, len(step_ids)))
                if clock() - start > timeout_seconds:
                    raise EmrError("wait_timeout", f"{name} ({step_id}) still {state} after "
                                                   f"{timeout_seconds:.0f}s; not cancelled", uri=cluster_id) from exc


def wait_for_job_run(client: Any, application_id: str, job_run_id: str, progress: ProgressFn | None = None,
                     *, poll_seconds: float = 30, timeout_seconds: float = 7 * 86400, index: int = 0, total: int = 1,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait for an EMR Serverless job run (boto3 has no waiter for it).

    The loop ends on every terminal state (SUCCESS, FAILED, CANCELLED) and on the
    deadline, so a failed job never leaves it spinning.
    """
    start = clock()
    while True:
        r = _aws_call("GetJobRun", f"application {application_id}, run {job_run_id}", client.get_job_run,
                      applicationId=application_id, jobRunId=job_run_id)
        run = r["jobRun"]
        state = str(run.get("state"))
        name = str(run.get("name") or job_run_id)
        if progress:
            progress(Progress(job_run_id, name, state, clock() - start, index, total))
        if state == "SUCCESS":
            return
        if state in JOB_RUN_FAILURE_STATES:
            raise EmrError(JOB_RUN_FAILURE_STATES[state],
                           f"{name} ({job_run_id}) {state}: {run.get('stateDetails') or 'no reason given'}",
                           uri=application_id)
        if clock() - start > timeout_seconds:
            raise EmrError("wait_timeout", f"{name} ({job_run_id}) still {state} after {timeout_seconds:.0f}s",
                           uri=application_id)
        sleep(poll_seconds)
