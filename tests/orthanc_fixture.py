"""A real Orthanc with its DICOMweb plugin, for STOW-RS / QIDO-RS / WADO-RS tests.

Register it with ``pytest_plugins = ["orthanc_fixture"]`` in conftest.py or in a test
module (tests/ is on sys.path under pytest's default "prepend" import mode, and there is
no tests/__init__.py). Registering twice is harmless. Importing the fixture functions
directly also works but makes pytest warn that it cannot rewrite asserts here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import requests
from helpers import free_port, require_tool

DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
)
START_TIMEOUT = 30.0


class OrthancServer:
    """One Orthanc process on 127.0.0.1 that can be stopped and started on the same port and storage."""

    def __init__(self, binary: str, plugin: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_root = f"{self.base_url}/dicom-web"
        self.storage_dir = os.path.join(workdir, "storage")
        self.index_dir = os.path.join(workdir, "index")
        self.log_path = os.path.join(workdir, "orthanc.log")
        self.config_path = os.path.join(workdir, "orthanc.json")
        self.proc: subprocess.Popen[bytes] | None = None
        config = {
            "Name": "dicom-reassembly-tests",
            "StorageDirectory": self.storage_dir,
            "IndexDirectory": self.index_dir,
            "StorageCompression": False,  # so stored files are the bytes that were sent
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            # Orthanc 1.10 has no bind-address option and listens on every interface:
            # refuse non-loopback clients and keep the unauthenticated DICOM listener off.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "LimitFindResults": 0,
            "LimitFindInstances": 0,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }
        with open(self.config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)

    def __repr__(self) -> str:
        return f"OrthancServer({self.base_url}, running={self.running})"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start Orthanc (same port, same storage) and wait until /system answers."""
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.proc = subprocess.Popen([self.binary, self.config_path], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base_url}/system", timeout=1).status_code == 200:
                    return
            except requests.exceptions.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 15 s); storage and index are kept."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of Orthanc's log, for failure messages."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def find_dicomweb_plugin() -> str:
    """Path of the DICOMweb plugin shipped by the Debian package orthanc-dicomweb."""
    for path in DICOMWEB_PLUGIN_CANDIDATES:
        if os.path.isfile(path):
            return path
    require_tool("libOrthancDicomWeb.so")  # not on PATH: fails under CI, skips elsewhere
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    """A running Orthanc for the whole session; tests may stop() and start() it, and get it running again."""
    binary = require_tool("Orthanc")
    plugin = find_dicomweb_plugin()
    workdir = tempfile.mkdtemp(prefix="orthanc-test-")
    server = OrthancServer(binary, plugin, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def orthanc_running(orthanc: OrthancServer) -> OrthancServer:
    """The session Orthanc, restarted first if an earlier test left it stopped."""
    orthanc.start()
    return orthanc
