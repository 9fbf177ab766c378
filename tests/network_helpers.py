"""Test instances and a ``dicom-reassembly listen`` process, for the network tests (listen, serve).

Instances are pydicom's bundled test files (no download) with new UIDs and patient IDs, saved as Part 10
in the source's transfer syntax. ``ListenProcess`` runs the real command as a subprocess on a free port.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pydicom
from helpers import free_port, require_tool
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "dicom_reassembly.cli"]
# Explicit VR LE, Implicit VR LE, JPEG 2000 lossless and lossy: the syntaxes the project writes.
SOURCES = ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm", "JPEG2000.dcm")


def make_instance(name: str = "CT_small.dcm", patient_id: str | None = None, study: str | None = None,
                  series: str | None = None, **changes: object) -> pydicom.Dataset:
    """A bundled test file with fresh UIDs (and patient, when given); ``changes`` set further attributes."""
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom test file {name} is missing"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if patient_id is not None:
        ds.PatientID = patient_id
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def part10_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def save(ds: pydicom.Dataset, folder: str) -> str:
    """Write ``ds`` as ``<folder>/<SOPInstanceUID>.dcm``; returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{ds.SOPInstanceUID}.dcm")
    with open(path, "wb") as f:
        f.write(part10_bytes(ds))
    return path


def dataset_bytes(path: str) -> bytes:
    """The bytes after a Part 10 file's meta group, read from its group length (independent of pydicom)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[128:132] == b"DICM", path
    assert data[132:136] == b"\x02\x00\x00\x00", "file meta must open with its group length"
    length = int.from_bytes(data[140:144], "little")
    return data[144 + length:]


# storescu proposes a compressed syntax only when told to: the option for each syntax the tests send.
STORESCU_PROPOSE = {"1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.4.90": "-xv",
                    "1.2.840.10008.1.2.4.91": "-xw"}


def storescu(port: int, files: list[str], calling: str = "STORESCU", called: str = "DCMREASM",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu sending ``files``: one association per transfer syntax, each proposed as the files hold it.

    The result is the last call's, with every call's output joined and the worst return code.
    """
    tool = require_tool("storescu")
    groups: dict[str, list[str]] = {}
    for path in files:
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(STORESCU_PROPOSE.get(ts, "-xe"), []).append(path)
    runs = [subprocess.run([tool, flag, "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *paths],
                           capture_output=True, text=True, timeout=600) for flag, paths in groups.items()]
    return subprocess.CompletedProcess(runs[-1].args, max(r.returncode for r in runs),
                                       "".join(r.stdout for r in runs), "".join(r.stderr for r in runs))


def echoscu(port: int, calling: str = "ECHOSCU", called: str = "DCMREASM") -> subprocess.CompletedProcess[str]:
    tool = require_tool("echoscu")
    return subprocess.run([tool, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


class ListenProcess:
    """``dicom-reassembly listen`` as a subprocess; ``stop`` sends SIGTERM (a drain), ``kill`` SIGKILL."""

    def __init__(self, workdir: str, *args: str, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.spool = os.path.join(workdir, "spool")
        self.out = os.path.join(workdir, "out")
        self.ledger = os.path.join(workdir, "ledger")
        self.catalog = self.ledger + "_catalog"
        self.args = ["listen", "--port", str(self.port), "--spool", self.spool, "--out", self.out,
                     "--ledger", self.ledger, *args]
        self.log_path = os.path.join(workdir, "listen.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def start(self) -> ListenProcess:
        self.log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*CLI, *self.args], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env={**os.environ, "DICOM_REASSEMBLY_LOG": "INFO"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"listen exited with {self.proc.returncode}:\n{self.log()}")
            if "listening on" in self.log():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"listen did not start:\n{self.log()}")

    def log(self) -> str:
        """This process's output (a restart in the same folder appends to the same file)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM and wait: the process drains its queue and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: nothing is drained, the spool and state file stay as they are."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def spooled(self) -> list[str]:
        return sorted(f for f in os.listdir(self.spool) if f.endswith(".dcm")) if os.path.isdir(self.spool) else []

    def wait_spool_empty(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.spooled() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.spooled(), f"{len(self.spooled())} instance(s) still in the spool:\n{self.log()[-3000:]}"
