"""A whole submission: validated arguments, uploads and requests for one target (``build_submission_plan``),
and sending it (``run_plan``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, CriteriaError
from ..io.uris import is_s3
from ..reassembly.tasks import shuffle_partitions_for
from .config import EmrConfig
from .layout import JOB_NAMES, Upload, WorkLayout, build_uploads, find_artifacts, work_layout
from .requests import (
    build_cluster_request,
    build_job_args,
    build_pipeline_steps,
    build_serverless_runs,
    build_spark_conf,
    step_name,
)
from .submit import (
    ProgressFn,
    list_step_ids,
    submit_cluster,
    submit_serverless,
    submit_steps,
    wait_for_job_run,
    wait_for_steps,
)

log = logging.getLogger(__name__)
TARGETS = ("cluster", "new_cluster", "serverless")


@dataclass(frozen=True)
class SubmissionPlan:
    """Everything a submission sends, built without any AWS call."""

    target: str
    layout: WorkLayout
    uploads: tuple[Upload, ...]
    requests: Mapping[str, Any]
    shuffle_partitions: int
    shuffle_source: str
    missing: tuple[str, ...]
    cluster_id: str | None = None
    application_id: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-safe view for --dry-run (criteria by URI only, never their content)."""
        return {
            "target": self.target,
            "cluster_id": self.cluster_id,
            "application_id": self.application_id,
            "work": {"manifest": self.layout.manifest, "ledger": self.layout.ledger, "runs": self.layout.runs,
                     "code": self.layout.code + "/"},
            "uploads": [u.describe() for u in self.uploads],
            "shuffle_partitions": {"value": self.shuffle_partitions, "source": self.shuffle_source},
            "requests": self.requests,
        }


def check_criteria_file(path: str) -> None:
    """Validate a criteria file fully before anything is paid for; errors never echo its content.

    The same loader runs in the reassemble job, so a file that passes here passes there.
    """
    from ..selection.spec import load_criteria

    if not os.path.isfile(path):
        raise CriteriaError("missing_criteria", "no such file", uri=path)
    load_criteria(path)


def build_submission_plan(config: EmrConfig, *, target: str, text: str, images: str, out: str, work: str,
                          root: str, version: str, criteria: str | None = None, cluster_id: str | None = None,
                          application_id: str | None = None, region: str | None = None,
                          manifest_bytes: int | None = None, client_token: str = "dicom-reassembly") -> SubmissionPlan:
    """Validate the arguments and build the uploads and the request(s) for one target.

    ``manifest_bytes`` (the size of a manifest already under ``--work``, if any)
    sizes the reassemble shuffle; otherwise the configured default is used and
    adaptive execution coalesces what is too small.
    """
    if target not in TARGETS:
        raise ConfigError("bad_target", f"unknown target {target!r}")
    layout = work_layout(work)
    artifacts = find_artifacts(config, root, version)
    criteria_uri = None
    criteria_path = None
    if criteria:
        if is_s3(criteria):
            criteria_uri = criteria
        else:
            check_criteria_file(criteria)
            criteria_path, criteria_uri = criteria, layout.criteria
    job_config_path = None
    job_config_uri = None
    if config.job_config:
        job_config_path = config.job_config if os.path.isabs(config.job_config) \
            else os.path.join(root, config.job_config)
        if not os.path.isfile(job_config_path):
            raise ConfigError("missing_job_config", "job_config file not found", uri=job_config_path)
        job_config_uri = layout.job_config
    job_args = build_job_args(layout, text=text, images=images, out=out, criteria_uri=criteria_uri,
                              job_config_uri=job_config_uri)
    partitions = shuffle_partitions_for(manifest_bytes=manifest_bytes, policy=config.partitions)
    source = f"existing manifest ({manifest_bytes} bytes)" if manifest_bytes is not None else "conf default"
    spark_target = "serverless" if target == "serverless" else "cluster"
    conf = build_spark_conf(config, target=spark_target, region=region)
    reassemble_conf = build_spark_conf(config, target=spark_target, region=region, shuffle_partitions=partitions)
    py_files = [layout.code_file(os.path.basename(artifacts.py_files))]
    uploads = build_uploads(layout, artifacts, with_cluster_bootstrap=target == "new_cluster",
                            criteria_path=criteria_path, job_config_path=job_config_path,
                            kms_key_id=config.kms_key_id)
    missing = tuple(m for m in artifacts.missing
                    if target == "new_cluster" or not (m.endswith("*.whl") or m in (artifacts.wheel,
                                                                                     artifacts.bootstrap)))
    requests: dict[str, Any]
    if target == "serverless":
        if not application_id:
            raise ConfigError("bad_argument", "an EMR Serverless application id is required")
        requests = {"start_job_run": build_serverless_runs(config, layout, application_id, job_args, conf,
                                                           reassemble_conf, py_files, client_token)}
    else:
        steps = build_pipeline_steps(layout, job_args, conf, reassemble_conf=reassemble_conf, py_files=py_files,
                                     action_on_failure=config.action_on_failure)
        if target == "cluster":
            if not cluster_id:
                raise ConfigError("bad_argument", "a cluster id is required")
            requests = {"add_job_flow_steps": {"JobFlowId": cluster_id, "Steps": steps}}
        else:
            requests = {"run_job_flow": build_cluster_request(config, layout, steps)}
    return SubmissionPlan(target, layout, tuple(uploads), requests, partitions, source, missing,
                          cluster_id=cluster_id, application_id=application_id)


def run_plan(plan: SubmissionPlan, *, emr: Any = None, serverless: Any = None, wait: bool = False,
             progress: ProgressFn | None = None, poll_seconds: float = 30,
             timeout_seconds: float = 7 * 86400) -> dict[str, Any]:
    """Send the plan's requests (uploads are done before); returns the ids created.

    EMR Serverless has no step queue, so reassemble is started only after
    build_manifest succeeded, even without ``wait``.
    """
    names = [step_name(job) for job in JOB_NAMES]
    if plan.target == "serverless":
        runs = list(plan.requests["start_job_run"])
        ids: list[str] = []
        for i, request in enumerate(runs):
            ids.append(submit_serverless(serverless, request))
            if wait or i < len(runs) - 1:
                wait_for_job_run(serverless, str(plan.application_id), ids[-1], progress, poll_seconds=poll_seconds,
                                 timeout_seconds=timeout_seconds, index=i, total=len(runs))
        return {"application_id": plan.application_id, "job_run_ids": ids}
    if plan.target == "cluster":
        request = plan.requests["add_job_flow_steps"]
        cluster_id = str(request["JobFlowId"])
        step_ids = submit_steps(emr, cluster_id, request["Steps"])
    else:
        cluster_id = submit_cluster(emr, plan.requests["run_job_flow"])
        step_ids = list_step_ids(emr, cluster_id, names)
    if wait:
        wait_for_steps(emr, cluster_id, step_ids, progress, names=names, poll_seconds=poll_seconds,
                       timeout_seconds=timeout_seconds)
    return {"cluster_id": cluster_id, "step_ids": step_ids}
