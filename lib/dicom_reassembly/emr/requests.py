"""EMR and EMR Serverless requests, built without any AWS call (``build_*``).

Each returns the request dict boto3 takes, so ``--dry-run`` prints exactly what would be sent and tests can
check it against botocore's service model. Arguments stay list items, never one string to split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..io.uris import is_s3
from .config import EmrConfig, _conf_value, _require, _section, _spark_map
from .layout import JOB_NAMES, WorkLayout

log = logging.getLogger(__name__)
COMMAND_RUNNER = "command-runner.jar"
STEP_NAME_PREFIX = "dicom-reassembly"
# Spark conf keys that would carry a secret; such keys must never reach spark-submit (it is logged by YARN).
_SECRET_KEY = re.compile(r"secret|password|passwd|token|access[._-]?key", re.IGNORECASE)


def build_job_args(layout: WorkLayout, *, text: str, images: str, out: str, criteria_uri: str | None = None,
                   job_config_uri: str | None = None) -> dict[str, list[str]]:
    """The command-line arguments of both jobs (the same for EMR steps and EMR Serverless)."""
    for flag, uri in (("--text", text), ("--images", images), ("--out", out)):
        if not is_s3(uri):
            raise ConfigError("bad_argument", f"{flag} must be an s3:// URI on EMR, got {uri!r}")
    if criteria_uri is not None and not is_s3(criteria_uri):
        raise ConfigError("bad_argument", "criteria must be uploaded to S3 first")
    config_args = ["--config", job_config_uri] if job_config_uri else []
    manifest = ["--text", text, "--images", images, "--manifest", layout.manifest, *config_args]
    reassemble = ["--manifest", layout.manifest, "--out", out, "--ledger", layout.ledger, "--runs", layout.runs]
    if criteria_uri:
        reassemble += ["--criteria", criteria_uri]
    reassemble += config_args
    return {"build_manifest": manifest, "reassemble": reassemble}


def build_spark_conf(config: EmrConfig, *, target: str, region: str | None = None,
                     shuffle_partitions: int | None = None) -> dict[str, str]:
    """Spark settings for one job: common ones, the target's own, its Python, and the region.

    ``target`` is ``cluster`` (EMR on EC2, existing or new) or ``serverless``.
    """
    if target not in ("cluster", "serverless"):
        raise ConfigError("bad_target", f"unknown target {target!r}")
    section = config.cluster if target == "cluster" else config.serverless
    conf = dict(config.spark)
    conf.update(_spark_map(section.get("spark", {}), f"{target}.spark", config.source))
    python = str(_require(section, "python", target, config.source))
    if target == "cluster":
        # spark.pyspark.* covers driver and executors; the env copies cover tools that read only the environment.
        python_keys = ("spark.pyspark.python", "spark.pyspark.driver.python", "spark.yarn.appMasterEnv.PYSPARK_PYTHON",
                       "spark.executorEnv.PYSPARK_PYTHON")
        region_keys = ("spark.yarn.appMasterEnv.AWS_DEFAULT_REGION", "spark.executorEnv.AWS_DEFAULT_REGION")
    else:
        venv = section.get("venv_archive")
        if venv:
            conf["spark.archives"] = f"{venv}#environment"
        python_keys = ("spark.emr-serverless.driverEnv.PYSPARK_PYTHON",
                       "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON", "spark.executorEnv.PYSPARK_PYTHON")
        region_keys = ("spark.emr-serverless.driverEnv.AWS_DEFAULT_REGION", "spark.executorEnv.AWS_DEFAULT_REGION")
    conf.update(dict.fromkeys(python_keys, python))
    if region:
        conf.update(dict.fromkeys(region_keys, region))
    if shuffle_partitions is not None:
        conf["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
    return conf


def _check_conf(conf: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for key, value in sorted(conf.items()):
        text = _conf_value(value)
        if _SECRET_KEY.search(key) and text.lower() not in ("true", "false"):
            raise ConfigError("secret_in_spark_conf", f"{key} looks like a secret; use IAM roles, not Spark conf")
        if not key or "=" in key:
            raise ConfigError("bad_spark_conf", f"bad Spark conf key {key!r}")
        pairs.append((key, text))
    return pairs


def _check_args(args: Sequence[str], what: str) -> list[str]:
    if isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args):
        raise ConfigError("bad_step_args", f"{what} must be a list of strings, never one string to split")
    return list(args)


def build_spark_step(name: str, script_uri: str, args: Sequence[str], conf: Mapping[str, Any],
                     py_files: Sequence[str] = (), action_on_failure: str = "CANCEL_AND_WAIT") -> dict[str, Any]:
    """One EMR step: ``command-runner.jar spark-submit --deploy-mode cluster ... script args``.

    Every argument stays its own list item, so URIs with spaces or ``=`` pass intact.
    """
    job_args = _check_args(args, "args")
    files = _check_args(py_files, "py_files")
    cmd = ["spark-submit", "--deploy-mode", "cluster"]
    if files:
        cmd += ["--py-files", ",".join(files)]
    for key, value in _check_conf(conf):
        cmd += ["--conf", f"{key}={value}"]
    cmd += [script_uri, *job_args]
    return {"Name": name, "ActionOnFailure": action_on_failure,
            "HadoopJarStep": {"Jar": COMMAND_RUNNER, "Args": cmd}}


def step_name(job: str) -> str:
    """The step name of a job; unique per pipeline so steps can be found again by name."""
    return f"{STEP_NAME_PREFIX}: {job}"


def build_pipeline_steps(layout: WorkLayout, job_args: Mapping[str, Sequence[str]], conf: Mapping[str, Any],
                         *, reassemble_conf: Mapping[str, Any] | None = None, py_files: Sequence[str] = (),
                         action_on_failure: str = "CANCEL_AND_WAIT") -> list[dict[str, Any]]:
    """Both steps in order: build_manifest, then reassemble.

    ``CANCEL_AND_WAIT`` (the default) cancels reassemble when build_manifest
    fails, so a broken manifest is never reassembled.
    """
    return [
        build_spark_step(step_name(job), layout.script(job), job_args[job],
                         conf if job == "build_manifest" or reassemble_conf is None else reassemble_conf,
                         py_files, action_on_failure)
        for job in JOB_NAMES
    ]


def _fleet(role: str, spec: Mapping[str, Any], source: str) -> dict[str, Any]:
    types = spec.get("instance_types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise ConfigError("bad_config", f"cluster.fleets.{role.lower()}.instance_types must list instance types",
                          uri=source)
    on_demand, spot = int(spec.get("on_demand", 0)), int(spec.get("spot", 0))
    if role in ("MASTER", "CORE") and spot:
        # Losing the master or a core node (HDFS, the YARN application master) loses the job.
        raise ConfigError("bad_config", f"cluster.fleets.{role.lower()} must be on-demand", uri=source)
    if on_demand + spot < 1:
        raise ConfigError("bad_config", f"cluster.fleets.{role.lower()} needs capacity", uri=source)
    type_config: list[dict[str, Any]] = []
    for t in types:
        item: dict[str, Any] = {"InstanceType": t, "WeightedCapacity": 1}
        if spec.get("ebs_gb"):
            item["EbsConfiguration"] = {"EbsBlockDeviceConfigs": [{
                "VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": int(spec["ebs_gb"])},
                "VolumesPerInstance": 1}]}
        type_config.append(item)
    fleet: dict[str, Any] = {"Name": role.lower(), "InstanceFleetType": role, "TargetOnDemandCapacity": on_demand,
                             "TargetSpotCapacity": spot, "InstanceTypeConfigs": type_config}
    if spot:
        fleet["LaunchSpecifications"] = {"SpotSpecification": {
            "TimeoutDurationMinutes": int(spec.get("spot_timeout_minutes", 20)),
            "TimeoutAction": str(spec.get("spot_timeout_action", "SWITCH_TO_ON_DEMAND")),
            "AllocationStrategy": str(spec.get("allocation_strategy", "price-capacity-optimized")),
        }}
    return fleet


def build_cluster_request(config: EmrConfig, layout: WorkLayout, steps: Sequence[Mapping[str, Any]] = ()
                          ) -> dict[str, Any]:
    """The ``run_job_flow`` request for a transient cluster that runs ``steps``.

    Master and core fleets are on-demand and the task fleet is spot. With
    ``idle_timeout_seconds`` the cluster stays up after its steps (logs can be
    read) and the auto-termination policy ends it when idle; without it, it
    ends with its last step.
    """
    c, src = config.cluster, config.source
    fleets = _section(c, "fleets", src)
    for role in ("master", "core"):
        _require(fleets, role, "cluster.fleets", src)
    python = str(_require(c, "python", "cluster", src))
    instances: dict[str, Any] = {
        "InstanceFleets": [_fleet(role.upper(), fleets[role], src) for role in ("master", "core", "task")
                           if role in fleets],
        "TerminationProtected": False,
    }
    idle = c.get("idle_timeout_seconds")
    instances["KeepJobFlowAliveWhenNoSteps"] = bool(idle)
    if c.get("ec2_subnet_ids"):
        instances["Ec2SubnetIds"] = list(c["ec2_subnet_ids"])
    if c.get("ec2_key_name"):
        instances["Ec2KeyName"] = str(c["ec2_key_name"])
    configurations: list[dict[str, Any]] = [{
        "Classification": "spark-env",
        "Properties": {},
        "Configurations": [{"Classification": "export",
                            "Properties": {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}}],
    }]
    configurations += list(c.get("configurations", []))
    request: dict[str, Any] = {
        "Name": str(c.get("name", STEP_NAME_PREFIX)),
        "ReleaseLabel": str(_require(c, "release_label", "cluster", src)),
        "LogUri": str(c.get("log_uri") or layout.logs + "emr/"),
        "Applications": [{"Name": "Spark"}],
        "Instances": instances,
        "BootstrapActions": [{
            "Name": "install python deps from wheelhouse",
            "ScriptBootstrapAction": {"Path": layout.bootstrap, "Args": [layout.wheelhouse, python]},
        }],
        "Configurations": configurations,
        "Steps": [dict(s) for s in steps],
        "ServiceRole": str(_require(c, "service_role", "cluster", src)),
        "JobFlowRole": str(_require(c, "job_flow_role", "cluster", src)),
        "VisibleToAllUsers": True,
        "Tags": [{"Key": str(k), "Value": str(v)} for k, v in sorted(dict(c.get("tags", {})).items())],
    }
    if idle:
        request["AutoTerminationPolicy"] = {"IdleTimeout": int(idle)}
    if c.get("ebs_root_volume_size"):
        request["EbsRootVolumeSize"] = int(c["ebs_root_volume_size"])
    scaling = c.get("managed_scaling")
    if scaling:
        limits = {"UnitType": "InstanceFleetUnits",
                  "MinimumCapacityUnits": int(scaling["minimum_units"]),
                  "MaximumCapacityUnits": int(scaling["maximum_units"])}
        if "maximum_on_demand_units" in scaling:
            limits["MaximumOnDemandCapacityUnits"] = int(scaling["maximum_on_demand_units"])
        if "maximum_core_units" in scaling:
            limits["MaximumCoreCapacityUnits"] = int(scaling["maximum_core_units"])
        request["ManagedScalingPolicy"] = {"ComputeLimits": limits}
    return request


def build_serverless_job_run(application_id: str, execution_role_arn: str, name: str, script_uri: str,
                             args: Sequence[str], conf: Mapping[str, Any], py_files: Sequence[str] = (), *,
                             log_uri: str | None = None, client_token: str,
                             execution_timeout_minutes: int | None = None) -> dict[str, Any]:
    """The ``start_job_run`` request for one job on EMR Serverless.

    The API takes the spark-submit options as one string; values with
    whitespace are refused rather than quoted, because the service's parser is
    not a shell.
    """
    job_args = _check_args(args, "args")
    params = []
    files = _check_args(py_files, "py_files")
    if files:
        params += ["--py-files", ",".join(files)]
    for key, value in _check_conf(conf):
        params += ["--conf", f"{key}={value}"]
    for p in params:
        if re.search(r"\s", p):
            raise ConfigError("bad_spark_conf", f"whitespace in a serverless spark-submit parameter: {p!r}")
    request: dict[str, Any] = {
        "applicationId": application_id,
        "clientToken": client_token,
        "executionRoleArn": execution_role_arn,
        "name": name,
        "jobDriver": {"sparkSubmit": {"entryPoint": script_uri, "entryPointArguments": job_args,
                                      "sparkSubmitParameters": " ".join(params)}},
    }
    if log_uri:
        request["configurationOverrides"] = {
            "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": log_uri}}}
    if execution_timeout_minutes:
        request["executionTimeoutMinutes"] = int(execution_timeout_minutes)
    return request


def build_serverless_runs(config: EmrConfig, layout: WorkLayout, application_id: str,
                          job_args: Mapping[str, Sequence[str]], conf: Mapping[str, Any],
                          reassemble_conf: Mapping[str, Any] | None, py_files: Sequence[str],
                          client_token: str) -> list[dict[str, Any]]:
    """Both ``start_job_run`` requests, in order."""
    s, src = config.serverless, config.source
    role = str(_require(s, "execution_role_arn", "serverless", src))
    return [
        build_serverless_job_run(
            application_id, role, step_name(job), layout.script(job), job_args[job],
            conf if job == "build_manifest" or reassemble_conf is None else reassemble_conf, py_files,
            log_uri=str(s.get("log_uri") or layout.logs + "serverless/"),
            client_token=f"{client_token}-{job}"[:64],
            execution_timeout_minutes=s.get("execution_timeout_minutes"))
        for job in JOB_NAMES
    ]
