"""One Spark job of ours, run by local spark-submit or as an EMR step / EMR Serverless job run.

The jobs are the ones users run by hand (``jobs/build_manifest.py``, ``jobs/reassemble.py``); the campaign
adds no Spark code. Exit codes keep their meaning: 2 is bad input (not worth a retry), anything else may be.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import ConfigError, ReassemblyError
from .params import EmrTarget

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXIT_INPUT = 2
# Where spark-submit runs locally; DICOM_REASSEMBLY_SPARK_MASTER overrides (e.g. local[2] on a shared machine).
DEFAULT_MASTER = "local[*]"
# The option a job must list in its --help before the campaign passes it on (see ``job_accepts``).
TRANCHE_OPTION = "--tranche"


class JobError(ReassemblyError):
    """A job ended without success. ``retryable`` is False for bad input (exit 2)."""

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = True) -> None:
        super().__init__(reason, detail)
        self.retryable = retryable


@dataclass(frozen=True)
class JobResult:
    """What a job run left: its exit code and its standard output (the job's own summary lines)."""

    job: str
    returncode: int
    stdout: str


def jobs_dir() -> str:
    """The folder of the job scripts: DICOM_REASSEMBLY_JOBS, else the checkout's jobs/."""
    folder = os.environ.get("DICOM_REASSEMBLY_JOBS") or os.path.join(ROOT, "jobs")
    if not os.path.isfile(os.path.join(folder, "reassemble.py")):
        raise ConfigError("jobs_not_found", "no jobs/reassemble.py here; set DICOM_REASSEMBLY_JOBS", uri=folder)
    return folder


def spark_submit() -> str:
    """The spark-submit beside this interpreter (the venv's), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    found = here if os.access(here, os.X_OK) else shutil.which("spark-submit")
    if not found:
        raise ConfigError("spark_submit_not_found", "spark-submit is neither beside python nor on PATH")
    return found


@lru_cache(maxsize=8)
def job_accepts(job: str, option: str) -> bool:
    """True when ``jobs/<job>.py --help`` lists ``option``: the one place the campaign learns a job's options.

    The help is printed by argparse before Spark starts, so this costs an interpreter start, not a JVM.
    """
    script = os.path.join(jobs_dir(), f"{job}.py")
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    return out.returncode == 0 and option in out.stdout.split()


def local_command(job: str, args: Sequence[str]) -> list[str]:
    """The spark-submit command line of one job (no secret: credentials go by ``--criteria`` path)."""
    from ..session import local_driver_java_options

    master = os.environ.get("DICOM_REASSEMBLY_SPARK_MASTER", DEFAULT_MASTER)
    log4j = os.path.join(ROOT, "conf", "log4j2.properties")
    cmd = [spark_submit(), "--master", master]
    if os.path.isfile(log4j):
        cmd += ["--driver-java-options", local_driver_java_options(log4j)]
    return [*cmd, "--conf", "spark.ui.showConsoleProgress=false", os.path.join(jobs_dir(), f"{job}.py"), *args]


def run_local(job: str, args: Sequence[str], redact: Callable[[str], str] = lambda s: s) -> JobResult:
    """Run one job with spark-submit and wait; raises :class:`JobError` when it fails."""
    env = dict(os.environ, PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable),
               PYSPARK_DRIVER_PYTHON=os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable))
    cmd = local_command(job, args)
    log.info("spark-submit %s", job)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        # spark-submit merges the driver's stderr into stdout; our jobs print one "error:" line.
        output = redact(proc.stdout + proc.stderr)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        detail = errors[-1] if errors else " | ".join(output.strip().splitlines()[-5:])[-600:]
        raise JobError("job_failed", f"{job} exited {proc.returncode}: {detail}",
                       retryable=proc.returncode != EXIT_INPUT)
    return JobResult(job, proc.returncode, redact(proc.stdout))


# --------------------------------------------------------------------------------------------- EMR


@contextlib.contextmanager
def emr_criteria(target: EmrTarget, work: str, document: dict[str, Any] | None) -> Iterator[str | None]:
    """The secret ARN that carries ``document`` to an EMR job for the ``with`` block (None without one)."""
    if document is None:
        yield None
        return
    import boto3

    from .channel import delete_criteria_secret, put_criteria_secret, secret_name

    client = boto3.client("secretsmanager", region_name=target.region)
    arn = put_criteria_secret(client, secret_name(work), document)
    try:
        yield arn
    finally:
        delete_criteria_secret(client, arn)


def run_emr(job: str, args: Sequence[str], target: EmrTarget, work: str, *, poll_seconds: float,
            timeout_seconds: float, job_config: str | None = None) -> JobResult:
    """Upload the code, run one job as an EMR step (or Serverless job run) and wait for it."""
    import boto3

    from .. import __version__
    from ..emr import config as emr_config
    from ..emr import layout as emr_layout
    from ..emr import requests, submit

    config = emr_config.read_emr_config(target.config if os.path.isabs(target.config)
                                 else os.path.join(target.root, target.config))
    region = target.region or config.region
    layout = emr_layout.work_layout(work)
    artifacts = emr_layout.find_artifacts(config, target.root, __version__)
    missing = [m for m in artifacts.missing if not (m.endswith("*.whl") or m in (artifacts.wheel, artifacts.bootstrap))]
    if missing:
        raise ConfigError("missing_artifact", f"{', '.join(missing)}: run `make dist`")
    uploads = emr_layout.build_uploads(layout, artifacts, with_cluster_bootstrap=False, job_config_path=job_config)
    emr_layout.write_uploads(boto3.client("s3", region_name=region), uploads)
    py_files = [layout.code_file(os.path.basename(artifacts.py_files))]
    name = requests.step_name(job)
    if target.cluster_id:
        conf = requests.build_spark_conf(config, target="cluster", region=region)
        step = requests.build_spark_step(name, layout.script(job), args, conf, py_files, config.action_on_failure)
        client = boto3.client("emr", region_name=region)
        step_ids = submit.submit_steps(client, target.cluster_id, [step])
        submit.wait_for_steps(client, target.cluster_id, step_ids, names=[name], poll_seconds=poll_seconds,
                           timeout_seconds=timeout_seconds)
        return JobResult(job, 0, f"EMR step {step_ids[0]} on {target.cluster_id} completed")
    conf = requests.build_spark_conf(config, target="serverless", region=region)
    role = str(config.serverless.get("execution_role_arn") or "")
    if not role:
        raise ConfigError("bad_config", "serverless.execution_role_arn is required", uri=config.source)
    request = requests.build_serverless_job_run(str(target.serverless_app_id), role, name, layout.script(job), args,
                                           conf, py_files, log_uri=layout.logs + "serverless/",
                                           client_token=uuid.uuid4().hex)
    client = boto3.client("emr-serverless", region_name=region)
    run_id = submit.submit_serverless(client, request)
    submit.wait_for_job_run(client, str(target.serverless_app_id), run_id, poll_seconds=poll_seconds,
                         timeout_seconds=timeout_seconds)
    return JobResult(job, 0, f"EMR Serverless job run {run_id} succeeded")
