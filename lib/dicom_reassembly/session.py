"""One way to build the SparkSession, the same locally and under spark-submit."""

from __future__ import annotations

import os
import sys
from typing import Any

# Local jobs last seconds to minutes: HotSpot's C2 compiler spends about 25 s of CPU per job compiling code
# that a short job barely reuses, so local runs stop at C1 (measurements: bench/README.md's "The JIT of local
# runs"). Cluster executors live long enough to repay C2 and keep the JVM's default. make, hand runs and the tests
# take it from conf/spark-defaults.conf; the benchmark from here (tests/test_pipeline.py checks they agree).
LOCAL_JIT_OPTIONS = "-XX:TieredStopAtLevel=1"


def local_driver_java_options(log4j_config: str) -> str:
    """``--driver-java-options`` for a ``local[N]`` run: the C1-only JIT and our log4j2 configuration file."""
    return f"{LOCAL_JIT_OPTIONS} -Dlog4j2.configurationFile=file:{log4j_config}"


def get_session(app_name: str, master: str | None = None, extra: dict[str, str] | None = None) -> Any:
    """Build (or reuse) a SparkSession.

    ``master`` is only set when given: under spark-submit and on EMR the launcher
    decides. Settings from ``extra`` are applied on top of spark-defaults.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in (extra or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
