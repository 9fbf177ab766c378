"""Network benchmark: ``listen`` intake (instances/s from a storescu burst) and ``serve`` (QIDO and WADO requests/s).

python bench/network.py [--instances N] [--senders 1,4] [--requests R] [--threads T] [--stow-url URL] [--out DIR]

Everything runs on this machine: the real commands as subprocesses on free loopback ports, dcmtk's storescu as
the sender, plain HTTP (requests) as the client. Timings are reported (stdout and ``<out>/network.json``),
never asserted. The instances are pydicom's MR_small.dcm (64x64, 10 kB) with new UIDs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))

import pydicom  # noqa: E402
import requests  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicom_reassembly.dicomweb.auth import mint_token  # noqa: E402

CLI = [sys.executable, "-m", "dicom_reassembly.cli"]
SECRET = "bench-secret-0123456789-abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_files(folder: str, n: int) -> tuple[list[str], pydicom.Dataset]:
    """``n`` copies of MR_small.dcm with new UIDs, one patient and one study; returns paths and the last one."""
    os.makedirs(folder, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        src.PatientID, src.StudyInstanceUID, src.SeriesInstanceUID = "BENCH", study, series
        src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        src.InstanceNumber = i + 1
        path = os.path.join(folder, f"{i:06d}.dcm")
        src.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, src


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def start(args: list[str], log_path: str, ready: Any, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(log_path) as f:
                raise RuntimeError(f"{args[0]} did not start:\n{f.read()}")
        time.sleep(0.1)
    return proc


def measure_intake(work: str, files: list[str], stow_url: str | None, senders: int) -> dict[str, Any]:
    """One ``listen``; ``senders`` storescu processes, one association each, share the files."""
    port = free_port()
    work = os.path.join(work, f"intake-{senders}")
    os.makedirs(work)
    log_path = os.path.join(work, "listen.log")
    extra = ["--stow-url", stow_url] if stow_url else []
    proc = start(["listen", "--port", str(port), "--spool", os.path.join(work, "spool"), "--out",
                  os.path.join(work, "out"), "--ledger", os.path.join(work, "ledger"), *extra], log_path,
                 lambda: "listening on" in read_text(log_path))
    try:
        t0 = time.perf_counter()
        # dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set: each small PDU would then wait ~40 ms for
        # a delayed ACK. listen turns it off on its side; a sender that cares does the same.
        runs = [subprocess.Popen(["storescu", "-aec", "DCMREASM", "127.0.0.1", str(port), *files[i::senders]],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "TCP_NODELAY": "1"})
                for i in range(senders)]
        errors = [r.communicate(timeout=3600)[1] for r in runs]
        acked = time.perf_counter() - t0
        if any(r.returncode for r in runs):
            raise RuntimeError(f"storescu failed: {''.join(errors)[-2000:]}")
        spool = os.path.join(work, "spool")
        while any(f.endswith(".dcm") for f in os.listdir(spool)):  # forwarded, when a STOW URL is set
            time.sleep(0.05)
        done = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    written = len(os.listdir(os.path.join(work, "out")))
    return {"senders": senders, "instances": len(files), "written": written, "seconds_acknowledged": round(acked, 3),
            "instances_per_s_acknowledged": round(len(files) / acked, 1), "seconds_done": round(done, 3),
            "instances_per_s_done": round(len(files) / done, 1), "forwarded_to": stow_url}


def rate(urls: list[str], headers: dict[str, str], threads: int) -> dict[str, Any]:
    """Requests/s over ``urls`` with ``threads`` clients (one keep-alive session each), and latency quantiles."""
    latencies: list[float] = []

    def worker(chunk: list[str]) -> list[float]:
        out = []
        with requests.Session() as session:
            for url in chunk:
                t = time.perf_counter()
                r = session.get(url, headers=headers, timeout=60)
                _ = r.content
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")
                out.append(time.perf_counter() - t)
        return out

    chunks = [urls[i::threads] for i in range(threads)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for part in pool.map(worker, chunks):
            latencies.extend(part)
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"requests": len(urls), "threads": threads, "requests_per_s": round(len(urls) / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 2)}


def measure_serve(work: str, last: pydicom.Dataset, n_requests: int, threads: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(f"{base}/studies", timeout=1).status_code == 401
        except requests.exceptions.ConnectionError:
            return False

    proc = start(["serve", "--port", str(port), "--out", os.path.join(work, "out"), "--ledger",
                  os.path.join(work, "ledger"), "--spool", os.path.join(work, "serve-spool"), "--read-only"],
                 os.path.join(work, "serve.log"), ready, {"DICOM_REASSEMBLY_JWT_SECRET": SECRET})
    headers = {"Authorization": f"Bearer {mint_token(['BENCH'], 3600, SECRET)}"}
    instance = f"{base}/studies/{last.StudyInstanceUID}/series/{last.SeriesInstanceUID}/instances/{last.SOPInstanceUID}"
    try:
        rate([f"{base}/studies"] * 5, headers, 1)  # warm-up: the view, the page cache
        out = {
            "qido_studies": rate([f"{base}/studies?PatientID=BENCH"] * n_requests, headers, threads),
            "qido_instances_of_series": rate(
                [f"{base}/studies/{last.StudyInstanceUID}/series/{last.SeriesInstanceUID}/instances?limit=100"]
                * n_requests, headers, threads),
            "wado_instance": rate([instance] * n_requests, {**headers, "Accept": "application/dicom"}, threads),
            "wado_metadata": rate([f"{instance}/metadata"] * n_requests, headers, threads),
            "wado_rendered_png": rate([f"{instance}/rendered"] * max(1, n_requests // 4), headers, threads),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/network.py", description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=500, help="instances in the storescu burst (default 500)")
    p.add_argument("--requests", type=int, default=400, help="HTTP requests per measurement (default 400)")
    p.add_argument("--threads", type=int, default=4, help="concurrent HTTP clients (default 4)")
    p.add_argument("--senders", type=lambda t: [int(v) for v in t.split(",")], default=[1, 4],
                   help="storescu processes (associations) in parallel, comma-separated runs (default 1,4)")
    p.add_argument("--stow-url", help="also forward the burst to this DICOMweb root (e.g. a local Orthanc)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="where network.json goes")
    args = p.parse_args(argv)
    if not shutil.which("storescu"):
        print("storescu (dcmtk) is required", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="bench-network-")
    try:
        files, last = make_files(os.path.join(work, "src"), args.instances)
        report = {"intake": [measure_intake(work, files, args.stow_url, n) for n in args.senders],
                  "serve": measure_serve(os.path.join(work, f"intake-{args.senders[0]}"), last, args.requests,
                                         args.threads),
                  "cpus": os.cpu_count(), "note": "one machine; sender, server and clients share its cores"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "network.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
