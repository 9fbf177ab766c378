"""Shared fixtures: one SparkSession and one moto S3 server per test run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from helpers import SPARK_CONF_DIR, free_port

# Every JVM the tests start (the shared session, spark-submit) reads conf/ as its Spark configuration directory
# (helpers.SPARK_CONF_DIR), as `make demo` and a hand run do through the venv's spark-submit.
os.environ["SPARK_CONF_DIR"] = SPARK_CONF_DIR


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto server on 127.0.0.1; sets AWS_ENDPOINT_URL so every client uses it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update({
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3(moto_server: str):  # noqa: ANN201 - boto3 client type is dynamic
    """A boto3 S3 client on the moto server."""
    import boto3

    return boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")


@pytest.fixture(scope="session")
def spark(moto_server: str):  # noqa: ANN201
    """One local[2] SparkSession for the whole run.

    It depends on the moto server so that AWS_ENDPOINT_URL is in the environment
    before the JVM and its Python workers start: executors reach S3 the way they would on EMR.
    """
    from dicom_reassembly.records.tables import jdbc_session_settings
    from dicom_reassembly.session import get_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = get_session("dicom-reassembly-tests", master="local[2]",
                          extra={"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false",
                                 **jdbc_session_settings()})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_delivery(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """The clean sample delivery (root, expected.json) generated from pydicom's test files."""
    from dicom_reassembly.testing.sample_data import write_sample_delivery

    root = str(tmp_path_factory.mktemp("sample"))
    return root, write_sample_delivery(root)


@pytest.fixture(scope="session")
def damaged_delivery(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """The damaged delivery (root, expected.json)."""
    from dicom_reassembly.testing.sample_data import write_sample_delivery

    root = str(tmp_path_factory.mktemp("damaged"))
    return root, write_sample_delivery(root, damaged=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the SparkSession is a Spark test: `make test` runs them again on Spark 3.5."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


