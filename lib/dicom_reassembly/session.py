"""One way to build the SparkSession, the same locally and under spark-submit."""

from __future__ import annotations

import os
import sys
from typing import Any


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
