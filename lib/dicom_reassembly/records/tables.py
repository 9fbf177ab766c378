"""The run tables (ledger, runs, computations): Parquet always, PostgreSQL through Spark's JDBC writer on request.

Database credentials come from the environment only, travel to the JVM as JDBC connection
properties (never Spark configuration), and are hidden from ``repr``/``str``. Spark's default
``spark.redaction.regex`` masks option keys that look like ``password`` in the UI and event log,
which covers those properties; the URL itself is shown there, so it must not carry credentials.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from ..errors import ConfigError, StorageError

log = logging.getLogger(__name__)

JDBC_JAR = "/usr/share/java/postgresql.jar"  # Debian's libpostgresql-jdbc-java
JDBC_DRIVER = "org.postgresql.Driver"
USER_VARS = ("DICOM_REASSEMBLY_JDBC_USER", "PGUSER")
PASSWORD_VARS = ("DICOM_REASSEMBLY_JDBC_PASSWORD", "PGPASSWORD")
MASK = "***"

# A flag or parameter name that carries a secret.
_SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|credential)")
# key=value inside a value (URL query, k=v lists); the key names a secret.
_SECRET_PAIR = re.compile(r"(?i)([\w.-]*(?:password|passwd|secret|token|credential)[\w.-]*=)[^&;,\s]*")
# user:password@ in a URL authority.
_URL_USERINFO = re.compile(r"(://)[^/@\s]+@")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def jdbc_session_settings(jar: str = JDBC_JAR) -> dict[str, str]:
    """Spark settings that put the PostgreSQL JDBC driver (``jar``) on the driver and executor classpath.

    Empty when the jar is not there (Debian's is not installed: then pass ``--jars`` to spark-submit yourself).
    ``spark.jars`` is static: it must be set before the SparkSession starts.
    """
    return {"spark.jars": jar} if os.path.exists(jar) else {}


def _check_jdbc_url(url: str) -> None:
    """A PostgreSQL JDBC URL without credentials; the message never repeats the URL (it may hold them)."""
    if not isinstance(url, str) or not url.startswith("jdbc:postgresql:"):
        raise ConfigError("bad_jdbc_url", "the JDBC URL must start with jdbc:postgresql:")
    rest = url[len("jdbc:postgresql:"):]
    authority = rest[2:].split("/", 1)[0] if rest.startswith("//") else ""
    if "@" in authority:
        raise ConfigError("jdbc_url_credentials", "the JDBC URL carries user info (user:password@); give the user "
                                                  "and password in DICOM_REASSEMBLY_JDBC_USER/_PASSWORD instead")
    query = rest.split("?", 1)[1] if "?" in rest else ""
    for key, _ in parse_qsl(query.replace(";", "&"), keep_blank_values=True):
        if key.lower() == "user" or _SECRET_NAME.search(key):
            raise ConfigError("jdbc_url_credentials", f"the JDBC URL carries the {key!r} parameter; give the user "
                                                      "and password in DICOM_REASSEMBLY_JDBC_USER/_PASSWORD instead")


@dataclass(frozen=True)
class JdbcTarget:
    """Where the tables also go: a credential-free PostgreSQL JDBC URL plus user and password.

    The password is never part of ``repr``/``str``, so a target can be logged.
    """

    url: str
    user: str
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_jdbc_url(self.url)
        if not self.user:
            raise ConfigError("jdbc_user_missing", "set DICOM_REASSEMBLY_JDBC_USER (or PGUSER)")

    def __repr__(self) -> str:
        password = MASK if self.password else None
        return f"JdbcTarget(url={self.url!r}, user={self.user!r}, password={password!r})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, url: str, env: dict[str, str] | None = None) -> JdbcTarget:
        """User and password from DICOM_REASSEMBLY_JDBC_USER/_PASSWORD, else PGUSER/PGPASSWORD.

        A missing password is allowed (trust or peer authentication on the server).
        """
        env = os.environ if env is None else env
        user = next((env[k] for k in USER_VARS if env.get(k)), "")
        password = next((env[k] for k in PASSWORD_VARS if env.get(k)), None)
        return cls(url, user, password)

    def connection_properties(self) -> dict[str, str]:
        """The properties for ``DataFrameWriter.jdbc``. They hold the password: hand them to Spark only."""
        props = {"user": self.user, "driver": JDBC_DRIVER}
        if self.password:
            props["password"] = self.password
        return props


def _check_table_name(name: str) -> None:
    if not _TABLE_NAME.match(name or ""):
        raise ConfigError("bad_table_name", f"{name!r} is not a plain SQL table name (optionally schema.table)")


def write_jdbc(df: Any, name: str, jdbc: JdbcTarget) -> None:
    """Append ``df`` to the PostgreSQL table ``name`` (created by Spark on first write).

    Raises ConfigError when the JDBC driver is not on Spark's classpath and StorageError when the write fails.
    """
    _check_table_name(name)
    try:
        df.write.jdbc(jdbc.url, table=name, mode="append", properties=jdbc.connection_properties())
    except Exception as exc:  # py4j errors carry the Java exception as text
        text = str(exc)
        if f"ClassNotFoundException: {JDBC_DRIVER}" in text:
            raise ConfigError("jdbc_driver_missing", f"{JDBC_DRIVER} is not on Spark's classpath; start the session "
                                                     f"with spark.jars={JDBC_JAR} (tables.jdbc_session_settings())"
                              ) from None
        detail = _java_cause(text)
        if jdbc.password:
            detail = detail.replace(jdbc.password, MASK)
        log.error("JDBC write of table %s to %s failed: %s", name, jdbc.url, detail)
        raise StorageError("jdbc_write_failed", f"table {name}: {detail}") from None


def _java_cause(text: str) -> str:
    """The most specific Java exception line of a py4j error text, shortened to one line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    pick = causes[-1][len("Caused by:"):].strip() if causes else next(
        (ln.lstrip(": ") for ln in lines if "Exception" in ln and not ln.startswith("at ")), lines[0] if lines else "")
    return pick[:500]


def write_table(df: Any, name: str, parquet_uri: str, jdbc: JdbcTarget | None = None,
                partition_by: list[str] | None = None) -> None:
    """Append ``df`` to the Parquet dataset at ``parquet_uri``, and to PostgreSQL table ``name`` when ``jdbc`` is given.

    Parquet is written first (it is the table of record). With two writes the frame is persisted
    for their duration, so that an expensive frame (computations, reassembly) is computed once.
    """
    _check_table_name(name)
    persisted = False
    if jdbc is not None and not df.is_cached:
        from pyspark import StorageLevel

        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        persisted = True
    try:
        writer = df.write.mode("append")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(parquet_uri)
        if jdbc is not None:
            write_jdbc(df, name, jdbc)
    finally:
        if persisted:
            df.unpersist()


def scrub_arguments(argv: list[str]) -> list[str]:
    """Command-line arguments with secret values replaced by ``***``.

    Values of flags named like *password*, *secret*, *token* or *credential* (``--flag value`` and
    ``--flag=value``), ``key=value`` pairs with such keys inside any argument (URL queries), and
    ``user:password@`` in URLs are masked.
    """
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next and not arg.startswith("-"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        if arg.startswith("-"):
            flag, eq, _ = arg.partition("=")
            if _SECRET_NAME.search(flag):
                if eq:
                    out.append(f"{flag}={MASK}")
                else:
                    out.append(arg)
                    mask_next = True
                continue
        out.append(_URL_USERINFO.sub(rf"\1{MASK}@", _SECRET_PAIR.sub(rf"\1{MASK}", arg)))
    return out


RUNS_FIELDS: list[tuple[str, str]] = [
    ("run_id", "string"), ("job", "string"), ("started_at", "timestamp"), ("finished_at", "timestamp"),
    ("arguments", "string"), ("criteria_json", "string"), ("criteria_sha256", "string"),
    ("status_counts", "string"), ("archives_total", "long"), ("archives_skipped", "long"),
    ("bytes_skipped", "long"), ("spark_version", "string"),
]
RUNS_NAMES = [n for n, _ in RUNS_FIELDS]


def runs_schema() -> Any:
    """The runs table's Spark schema."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "long": T.LongType(), "timestamp": T.TimestampType()}
    return T.StructType([T.StructField(n, kinds[t], True) for n, t in RUNS_FIELDS])


def runs_row(run_id: str, job: str, started_at: datetime, finished_at: datetime, arguments: list[str],
             criteria_json: str | None = None, criteria_sha256: str | None = None,
             status_counts: dict[str, int] | None = None, archives_total: int | None = None,
             archives_skipped: int | None = None, bytes_skipped: int | None = None,
             spark_version: str | None = None) -> dict[str, Any]:
    """One runs-table row as a dict; arguments are scrubbed and JSON-encoded, counts JSON-encoded.

    ``criteria_json`` must already be the public (redacted) form of the criteria.
    """
    return {
        "run_id": run_id, "job": job, "started_at": started_at, "finished_at": finished_at,
        "arguments": json.dumps(scrub_arguments(list(arguments))),
        "criteria_json": criteria_json, "criteria_sha256": criteria_sha256,
        "status_counts": json.dumps(status_counts or {}, sort_keys=True),
        "archives_total": archives_total, "archives_skipped": archives_skipped, "bytes_skipped": bytes_skipped,
        "spark_version": spark_version,
    }


def _scrubbed_arguments_json(value: Any) -> str | None:
    """Arguments as a JSON list, scrubbed again whatever the caller did (scrubbing is idempotent)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = [value]
        value = parsed if isinstance(parsed, list) else [str(parsed)]
    return json.dumps(scrub_arguments([str(v) for v in value]))


def build_runs_df(spark: Any, row: dict[str, Any]) -> Any:
    """A one-row runs DataFrame from a ``runs_row``-shaped dict; ``spark_version`` defaults to the session's."""
    unknown = sorted(set(row) - set(RUNS_NAMES))
    if unknown:
        raise ConfigError("bad_runs_row", f"unknown runs columns: {', '.join(unknown)}")
    values = dict(row)
    values["arguments"] = _scrubbed_arguments_json(values.get("arguments"))
    if isinstance(values.get("status_counts"), dict):
        values["status_counts"] = json.dumps(values["status_counts"], sort_keys=True)
    if not values.get("spark_version"):
        values["spark_version"] = spark.version
    return spark.createDataFrame([tuple(values.get(n) for n in RUNS_NAMES)], runs_schema())
