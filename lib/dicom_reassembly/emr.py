"""EMR and EMR Serverless: pure request builders, and thin submit/wait functions.

Every ``build_*`` function returns the request dict that boto3 takes, with no AWS
call, so ``--dry-run`` prints exactly what would be sent and tests can check it
against botocore's service model. Every ``submit_*``/``wait_*`` function takes
the boto3 client as an argument. Deployment choices (release label, fleets,
Spark settings) come from ``conf/emr.json`` through :class:`EmrConfig`; none is
written into the logic.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, CriteriaError, EmrError, StorageError
from .io.clients import translate_client_error
from .io.uris import is_s3, join_uri, split_s3
from .reassembly.tasks import PartitionPolicy, shuffle_partitions_for

log = logging.getLogger(__name__)

COMMAND_RUNNER = "command-runner.jar"
JOB_NAMES = ("build_manifest", "reassemble")
STEP_NAME_PREFIX = "dicom-reassembly"
MIB = 1024 * 1024
# Step and job-run states after which waiting is pointless.
STEP_FAILURE_STATES = {"FAILED": "step_failed", "CANCELLED": "step_cancelled", "INTERRUPTED": "step_interrupted"}
JOB_RUN_FAILURE_STATES = {"FAILED": "job_failed", "CANCELLED": "job_cancelled"}
# Spark conf keys that would carry a secret; such keys must never reach spark-submit (it is logged by YARN).
_SECRET_KEY = re.compile(r"secret|password|passwd|token|access[._-]?key", re.IGNORECASE)


@dataclass(frozen=True)
class EmrConfig:
    """``conf/emr.json`` after validation. Sections stay mappings where they mirror AWS shapes."""

    source: str
    region: str | None
    artifacts: Mapping[str, str]
    job_config: str | None
    action_on_failure: str
    spark: Mapping[str, str]
    partitions: PartitionPolicy
    cluster: Mapping[str, Any]
    serverless: Mapping[str, Any]
    poll_seconds: float
    timeout_hours: float
    kms_key_id: str | None = None  # security.kms_key_id: encrypts the uploaded criteria (else SSE-S3)


_TOP_KEYS = {"region", "artifacts", "job_config", "step", "spark", "partitions", "cluster", "serverless", "wait",
             "security", "_comment"}
_SECURITY_KEYS = {"kms_key_id", "_comment"}


def _section(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("bad_config", f"{key!r} must be an object", uri=source)
    return value


def _spark_map(value: Any, where: str, source: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError("bad_config", f"{where} must be an object of Spark settings", uri=source)
    return {str(k): _conf_value(v) for k, v in value.items() if not str(k).startswith("_")}


def _conf_value(value: Any) -> str:
    """Spark conf values are strings; JSON booleans become ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def emr_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> EmrConfig:
    """Validate a parsed ``conf/emr.json``."""
    if not isinstance(data, Mapping):
        raise ConfigError("bad_config", "top level must be an object", uri=source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError("bad_config", f"unknown keys {unknown}", uri=source)
    step = _section(data, "step", source)
    wait = _section(data, "wait", source)
    parts = _section(data, "partitions", source)
    try:
        policy = PartitionPolicy(**{k: int(v) for k, v in parts.items() if not k.startswith("_")})
        poll = float(wait.get("poll_seconds", 30))
        timeout = float(wait.get("timeout_hours", 168))
    except (TypeError, ValueError) as exc:
        raise ConfigError("bad_config", f"partitions/wait: {exc}", uri=source) from exc
    if policy.minimum < 1 or policy.maximum < policy.minimum or policy.bytes_per_partition < 1 \
            or policy.rows_per_partition < 1:
        raise ConfigError("bad_config", "partitions: need 1 <= minimum <= maximum and positive sizes", uri=source)
    artifacts = {"dist_dir": "dist", "jobs_dir": "jobs", "bootstrap": "emr/bootstrap.sh",
                 "wheelhouse_dir": "dist/wheelhouse", "py_files": "dicom_reassembly.zip"}
    artifacts.update({k: str(v) for k, v in _section(data, "artifacts", source).items() if not k.startswith("_")})
    cluster = _section(data, "cluster", source)
    serverless = _section(data, "serverless", source)
    security = _section(data, "security", source)
    unknown = sorted(set(security) - _SECURITY_KEYS)
    if unknown:  # a misspelt key would silently weaken encryption
        raise ConfigError("bad_config", f"unknown keys in security: {unknown}", uri=source)
    kms_key_id = security.get("kms_key_id")
    if kms_key_id is not None and (not isinstance(kms_key_id, str) or not kms_key_id.strip()):
        raise ConfigError("bad_config", "security.kms_key_id must be a KMS key id, ARN or alias, or null",
                          uri=source)
    return EmrConfig(
        source=source,
        region=data.get("region") or None,
        artifacts=artifacts,
        job_config=data.get("job_config") or None,
        action_on_failure=str(step.get("action_on_failure", "CANCEL_AND_WAIT")),
        spark=_spark_map(data.get("spark", {}), "spark", source),
        partitions=policy,
        cluster=cluster,
        serverless=serverless,
        poll_seconds=poll,
        timeout_hours=timeout,
        kms_key_id=kms_key_id,
    )


def read_emr_config(path: str) -> EmrConfig:
    """Load and validate an EMR config file (JSON)."""
    from .config import MAX_CONFIG_BYTES
    from .io.json_document import DocumentTooDeep, loads_document

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError("config_too_large", f"larger than {MAX_CONFIG_BYTES} characters", uri=path)
        data = loads_document(text)
    except DocumentTooDeep as exc:
        raise ConfigError("config_too_deep", str(exc), uri=path) from None
    except FileNotFoundError as exc:
        raise ConfigError("missing_config", "no such file", uri=path) from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError("bad_config", f"cannot be read: {exc.strerror or type(exc).__name__}", uri=path) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError("bad_config", f"not valid JSON at line {exc.lineno}", uri=path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("bad_config", f"not UTF-8 text (byte {exc.start})", uri=path) from exc
    return emr_config_from_dict(data, path)


def _require(section: Mapping[str, Any], key: str, where: str, source: str) -> Any:
    value = section.get(key)
    if value in (None, "", [], {}):
        raise ConfigError("missing_config_key", f"{where}.{key} is required", uri=source)
    return value


@dataclass(frozen=True)
class WorkLayout:
    """Where a run keeps its state and code under ``--work``."""

    work: str

    @property
    def manifest(self) -> str:
        return join_uri(self.work, "manifest")

    @property
    def ledger(self) -> str:
        return join_uri(self.work, "ledger")

    @property
    def runs(self) -> str:
        return join_uri(self.work, "runs")

    @property
    def code(self) -> str:
        return join_uri(self.work, "code")

    @property
    def wheelhouse(self) -> str:
        return join_uri(self.code, "wheelhouse") + "/"

    @property
    def bootstrap(self) -> str:
        return join_uri(self.code, "bootstrap.sh")

    @property
    def criteria(self) -> str:
        return join_uri(self.code, "criteria.json")

    @property
    def job_config(self) -> str:
        return join_uri(self.code, "job-config.json")

    @property
    def logs(self) -> str:
        return join_uri(self.work, "logs") + "/"

    def script(self, job: str) -> str:
        return join_uri(self.code, f"{job}.py")

    def code_file(self, name: str) -> str:
        return join_uri(self.code, name)


def work_layout(work: str) -> WorkLayout:
    """Validate ``--work`` (an S3 prefix: the cluster cannot see local paths)."""
    if not is_s3(work):
        raise ConfigError("bad_argument", f"--work must be an s3:// prefix, got {work!r}")
    split_s3(work)
    return WorkLayout(work.rstrip("/"))


@dataclass(frozen=True)
class Upload:
    """One local file to copy to S3 before submission."""

    source: str
    uri: str
    kind: str  # code | dependency | bootstrap | criteria | job_config
    extra_args: Mapping[str, str] = field(default_factory=dict)  # boto3 ExtraArgs, e.g. server-side encryption

    def describe(self) -> dict[str, Any]:
        """JSON-safe view for --dry-run: criteria are shown by URI only (they may hold credentials)."""
        shown: dict[str, Any] = {"kind": self.kind, "uri": self.uri}
        if self.kind != "criteria":
            shown["source"] = self.source
        if self.extra_args:
            shown["extra_args"] = dict(self.extra_args)
        return shown


def build_upload_encryption(kms_key_id: str | None) -> dict[str, str]:
    """ExtraArgs that encrypt an upload at rest: SSE-KMS with ``kms_key_id``, else SSE-S3 (AES256).

    Used for the criteria file, which may hold ``input_s3_parameters`` credentials. With a customer key, access
    to the object also needs ``kms:Decrypt`` on the key, so only the roles granted it can read the credentials.
    """
    if kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    return {"ServerSideEncryption": "AES256"}


@dataclass(frozen=True)
class Artifacts:
    """Local build outputs of ``make dist`` / ``make wheelhouse``; ``missing`` lists what is absent."""

    wheel: str
    py_files: str
    scripts: Mapping[str, str]
    bootstrap: str
    dependencies: tuple[str, ...]
    missing: tuple[str, ...] = field(default=())


def find_artifacts(config: EmrConfig, root: str, version: str) -> Artifacts:
    """Locate the wheel, the ``--py-files`` zip, the job scripts, the bootstrap and the wheelhouse.

    Relative paths in the config are relative to ``root`` (the repository).
    """
    def path(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(root, p)

    dist = path(config.artifacts["dist_dir"])
    missing: list[str] = []
    wanted = os.path.join(dist, f"dicom_reassembly-{version}-py3-none-any.whl")
    wheels = sorted(glob.glob(os.path.join(dist, "dicom_reassembly-*-py3-none-any.whl")))
    wheel = wanted if os.path.isfile(wanted) else (wheels[-1] if wheels else wanted)
    if not os.path.isfile(wheel):
        missing.append(wheel)
    py_files = os.path.join(dist, config.artifacts["py_files"])
    scripts = {job: os.path.join(path(config.artifacts["jobs_dir"]), f"{job}.py") for job in JOB_NAMES}
    bootstrap = path(config.artifacts["bootstrap"])
    missing += [p for p in (py_files, *scripts.values(), bootstrap) if not os.path.isfile(p)]
    wheelhouse = path(config.artifacts["wheelhouse_dir"])
    deps = tuple(sorted(p for p in glob.glob(os.path.join(wheelhouse, "*.whl"))
                        if os.path.basename(p) != os.path.basename(wheel)))
    if not deps:
        missing.append(os.path.join(wheelhouse, "*.whl"))
    return Artifacts(wheel, py_files, scripts, bootstrap, deps, tuple(missing))


def build_uploads(layout: WorkLayout, artifacts: Artifacts, *, with_cluster_bootstrap: bool,
                  criteria_path: str | None = None, job_config_path: str | None = None,
                  kms_key_id: str | None = None) -> list[Upload]:
    """The files a submission copies to ``{work}/code/``.

    The wheelhouse and bootstrap are only needed when a cluster is created here:
    an existing cluster was bootstrapped when it started. The criteria file is
    encrypted at rest (``build_upload_encryption``).
    """
    uploads = [Upload(artifacts.py_files, layout.code_file(os.path.basename(artifacts.py_files)), "code")]
    uploads += [Upload(artifacts.scripts[job], layout.script(job), "code") for job in JOB_NAMES]
    if with_cluster_bootstrap:
        uploads.append(Upload(artifacts.bootstrap, layout.bootstrap, "bootstrap"))
        uploads.append(Upload(artifacts.wheel, layout.wheelhouse + os.path.basename(artifacts.wheel), "code"))
        uploads += [Upload(p, layout.wheelhouse + os.path.basename(p), "dependency") for p in artifacts.dependencies]
    if criteria_path:
        uploads.append(Upload(criteria_path, layout.criteria, "criteria", build_upload_encryption(kms_key_id)))
    if job_config_path:
        uploads.append(Upload(job_config_path, layout.job_config, "job_config"))
    return uploads


def write_uploads(s3: Any, uploads: Iterable[Upload]) -> int:
    """Copy the files to S3; returns how many were sent.

    Dependency wheels are immutable by file name, so one of the same size is not
    re-sent. Project code is always sent, because its version may not change.
    """
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    sent = 0
    for up in uploads:
        bucket, key = split_s3(up.uri)
        try:
            if up.kind == "dependency" and _same_size(s3, bucket, key, os.path.getsize(up.source)):
                continue
            s3.upload_file(up.source, bucket, key, ExtraArgs=dict(up.extra_args) or None)
        except FileNotFoundError as exc:
            raise ConfigError("missing_artifact", "file not found (run `make dist`)", uri=up.source) from exc
        except ClientError as exc:
            log.error("upload of %s to %s failed: %s", up.kind, up.uri, exc)
            raise translate_client_error(exc, up.uri) from exc
        except S3UploadFailedError as exc:
            # boto3's transfer manager flattens the ClientError into text; the code is not recoverable.
            log.error("upload of %s to %s failed: %s", up.kind, up.uri, exc)
            raise StorageError("upload_failed", str(exc).split(":")[-1].strip(), uri=up.uri) from exc
        except BotoCoreError as exc:
            raise StorageError("s3_unreachable", type(exc).__name__, uri=up.uri) from exc
        sent += 1
    return sent


def _same_size(s3: Any, bucket: str, key: str, size: int) -> bool:
    from botocore.exceptions import ClientError

    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"]) == size
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


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
        conf.update({
            "spark.pyspark.python": python,
            "spark.pyspark.driver.python": python,
            "spark.yarn.appMasterEnv.PYSPARK_PYTHON": python,
            "spark.executorEnv.PYSPARK_PYTHON": python,
        })
        if region:
            conf["spark.yarn.appMasterEnv.AWS_DEFAULT_REGION"] = region
            conf["spark.executorEnv.AWS_DEFAULT_REGION"] = region
    else:
        venv = section.get("venv_archive")
        if venv:
            conf["spark.archives"] = f"{venv}#environment"
        conf.update({
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON": python,
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON": python,
            "spark.executorEnv.PYSPARK_PYTHON": python,
        })
        if region:
            conf["spark.emr-serverless.driverEnv.AWS_DEFAULT_REGION"] = region
            conf["spark.executorEnv.AWS_DEFAULT_REGION"] = region
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
    from .selection.spec import load_criteria

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
