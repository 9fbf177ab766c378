"""The measurements: tar -x, the naive baseline, the Spark jobs (timed, memory-sampled), lookups and the profile.

Each function measures one thing on files it is given and returns plain dicts of figures; ``run.py`` decides what
runs on which files and ``report.py`` derives the ratios. Nothing here asserts on time.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from dicom_reassembly.session import local_driver_java_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
SPARK_SUBMIT = os.path.join(VENV_BIN, "spark-submit")
CLI = os.path.join(VENV_BIN, "dicom-reassembly")
JAVA_OPTIONS = local_driver_java_options(os.path.join(ROOT, "conf", "log4j2.properties"))
MB = 1000 ** 2  # MB/s figures are 10^6 bytes per second, as the cost model reads them


class BenchError(RuntimeError):
    """A measurement could not be taken (a job failed, a tool is missing)."""


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for subprocesses: the venv's python for Spark, no stray S3 endpoint unless asked for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.update(extra or {})
    return env


# ---------------------------------------------------------------- a. tar -x


def settle() -> None:
    """Flush earlier steps' dirty pages, so their writeback does not land on the next timed run.

    The page cache is not dropped: here a drop is not a neutral reset. Measured with 2,000 and 8,000 instances,
    alternating: a drop before each reassemble added 1 s at 2,000 and 3-4 s at 8,000 (about 0.5 ms per
    instance), while tar -x ran faster after one (396 against 270 MB/s). The cause is free page reporting: this
    VM hands freed memory back to its host, and writers pay a host fault per page to take it back.
    """
    os.sync()


def read_through(paths: list[str]) -> None:
    """Read files once, so that the timed run that follows finds them in the page cache.

    Every timed run gets this, tar -x and the jobs alike: this machine's kernel
    (DAMON reclaim) pages out file pages idle for about 30 s, so without it a job
    that starts a minute after the archives were last read would read from disk
    while tar -x, right after its warm-up, would not.
    """
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def prepare_timed_run(paths: list[str]) -> None:
    """What every timed run starts from: earlier writes flushed, the archives in the page cache."""
    settle()
    read_through(paths)


def timed_children_run(fn: Callable[[], None], paths: list[str]) -> tuple[float, float]:
    """Prepare as every timed run is prepared (see prepare_timed_run), then run ``fn``.

    Returns (wall seconds, CPU seconds of the child processes it waited for).
    """
    prepare_timed_run(paths)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def tar_x_streams(tar: str, paths: list[str], streams: int, dest: str) -> None:
    """``tar -xf`` each archive into ``dest``, one process per archive, in ``streams`` streams side by side."""

    def one_stream(share: list[str]) -> None:
        for p in share:
            subprocess.run([tar, "-xf", p, "-C", dest], check=True)

    with ThreadPoolExecutor(streams) as pool:
        for f in [pool.submit(one_stream, paths[k::streams]) for k in range(streams)]:
            f.result()


def measure_tar_x(paths: list[str], scratch: str, repeats: int = 3, streams: int = 1) -> dict[str, Any]:
    """``tar -xf`` every archive into a fresh folder under ``scratch``, ``repeats`` times; the median counts.

    ``streams`` tar processes run side by side, each over every ``streams``-th
    archive: with as many streams as the pipeline has cores, tar meets the same
    contention for memory, page cache and file system as the Spark job does, so
    its MB/s per core is the like-for-like baseline (``mb_s_per_core``).
    The archives are read just before each run (warm cache, as for the jobs: see
    read_through), and nothing is deleted between runs: on ext4, creating files soon after deleting thousands
    costs several times more (inode allocation skips recently freed inodes), and
    that would charge one run for the previous run's clean-up. The caller removes
    ``scratch`` at the end of the benchmark.
    """
    tar = shutil.which("tar")
    if tar is None:
        raise BenchError("tar is not installed")
    if streams < 1:
        raise BenchError("tar -x needs at least one stream")
    total = sum(os.path.getsize(p) for p in paths)

    runs, cpus = [], []
    for k in range(repeats):
        dest = os.path.join(scratch, f"streams-{streams}-run-{k}")
        os.makedirs(dest)
        wall, cpu_s = timed_children_run(partial(tar_x_streams, tar, paths, streams, dest), paths)
        runs.append(wall)
        cpus.append(cpu_s)
    seconds, cpu = statistics.median(runs), statistics.median(cpus)
    how = "one tar process per archive" + (", single core" if streams == 1 else f", {streams} streams side by side")
    return {"archives": len(paths), "bytes": total, "streams": streams, "runs_s": runs, "cpu_runs_s": cpus,
            "seconds": seconds, "cpu_s": cpu, "bytes_per_s": total / seconds, "mb_s": total / seconds / MB,
            "mb_s_per_core": total / seconds / MB / streams, "mb_per_cpu_s": total / cpu / MB if cpu else None,
            "mb_s_runs": [total / r / MB for r in runs],
            "note": f"{how}; median of {repeats} runs into fresh folders"}


# ---------------------------------------------------------------- b. naive baseline


def _naive_find(paths: list[str], name: str) -> bytes | None:
    """The obvious search: open each archive with tarfile and walk its members until the name turns up."""
    for p in paths:
        with tarfile.open(p) as tf:
            for m in tf:
                if m.name == name:
                    f = tf.extractfile(m)
                    return f.read() if f is not None else None
    return None


def naive_reassemble(uid: str, text_paths: list[str], image_paths: list[str], out_dir: str) -> int:
    """Reassemble one instance the obvious way; return the bytes written."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    header = _naive_find(text_paths, f"{uid}.json")
    pixels = _naive_find(image_paths, f"{uid}.j2c")
    if header is None or pixels is None:
        raise BenchError(f"naive baseline: {uid} not found")
    ds = Dataset.from_json(header.decode("utf-8"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if pixels[:4] == b"\xff\x4f\xff\x51":
        meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([pixels])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
    ds.file_meta = meta
    path = os.path.join(out_dir, f"{uid}.dcm")
    dcmwrite(path, ds, enforce_file_format=True)
    return os.path.getsize(path)


def measure_naive(root: str, index: dict[str, Any], sample: int, out_dir: str, seed: int) -> dict[str, Any]:
    """Time the naive baseline on ``sample`` random UIDs; its cost per instance grows with the archive count."""
    text = sorted(os.path.join(root, "text", a["name"]) for a in index["archives"]["text"])
    images = sorted(os.path.join(root, "images", a["name"]) for a in index["archives"]["images"])
    uids = [i["uid"] for i in index["instances"]]
    chosen = random.Random(f"naive:{seed}").sample(uids, min(sample, len(uids)))
    os.makedirs(out_dir, exist_ok=True)
    times, written = [], 0
    c0 = time.process_time()
    for uid in chosen:
        t0 = time.perf_counter()
        written += naive_reassemble(uid, text, images, out_dir)
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / len(chosen)
    shutil.rmtree(out_dir, ignore_errors=True)
    per = statistics.mean(times)
    n = len(uids)
    archive_bytes = index["totals"]["archive_bytes"]
    return {"sampled": len(chosen), "per_instance_s": per, "cpu_per_instance_s": cpu, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "extrapolated_total_s": per * n,
            "instances_per_s": 1 / per, "bytes_per_s": archive_bytes / n / per, "mb_s": archive_bytes / n / per / MB,
            "mb_per_cpu_s": archive_bytes / n / cpu / MB if cpu else None,
            "written_bytes_sampled": written,
            "note": f"tarfile scan of {len(text)}+{len(images)} archives per UID, pydicom from_json + dcmwrite; "
                    f"mean over {len(chosen)} random UIDs extrapolated to {n} instances (single core)"}


# ---------------------------------------------------------------- g. memory sampling


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if cmdline and os.path.basename(cmdline[0]).startswith("java"):
        return "jvm"
    if "pyspark.daemon" in text or "pyspark/daemon" in text or "pyspark.worker" in text or "pyspark/worker" in text:
        return "python_worker"
    if cmdline and os.path.basename(cmdline[0]).startswith("python") and "/jobs/" in text:
        return "python_driver"
    return "other"


class ProcessSampler(threading.Thread):
    """Samples a spark-submit process tree every ``interval`` seconds: RSS and CPU time, by role.

    Roles: the JVM (driver and, in local mode, the executor), the Python driver, and the Python workers (the
    ``pyspark.daemon`` and the workers it forks, one per running task). RSS counts pages shared with the daemon
    in every fork, so the sum over workers overstates their footprint a little. CPU time is the last value seen
    for each process (user + system), so a process that ends between two samples loses at most one interval;
    on a shared machine it is the steadier measure of work done.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(name="process-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.halt = threading.Event()
        self.peak_by_pid: dict[int, tuple[str, int]] = {}
        self.cpu_by_pid: dict[int, tuple[str, float]] = {}
        self.cmd_by_pid: dict[int, str] = {}
        self.peak_sum: dict[str, int] = {}
        self.samples = 0

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.halt.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            sums: dict[str, int] = {}
            for p in procs:
                try:
                    # Not cached: spark-submit is a shell script that execs the JVM under the same pid.
                    cmdline = p.cmdline()
                    role = _role(cmdline)
                    if role == "other" and p.pid in self.cpu_by_pid:
                        # An exiting process shows an empty command line; it keeps the role it had.
                        role = self.cpu_by_pid[p.pid][0]
                        cmdline = self.cmd_by_pid.get(p.pid, "").split(" ")
                    with p.oneshot():
                        rss = p.memory_info().rss
                        cpu = p.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                sums[role] = sums.get(role, 0) + rss
                if rss > self.peak_by_pid.get(p.pid, (role, 0))[1]:
                    self.peak_by_pid[p.pid] = (role, rss)
                self.cpu_by_pid[p.pid] = (role, cpu.user + cpu.system)
                self.cmd_by_pid[p.pid] = " ".join(cmdline)[:160]
            for role, total in sums.items():
                self.peak_sum[role] = max(self.peak_sum.get(role, 0), total)
            self.samples += 1
            self.halt.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join(timeout=5)
        by_role: dict[str, list[int]] = {}
        for role, rss in self.peak_by_pid.values():
            by_role.setdefault(role, []).append(rss)
        cpu: dict[str, float] = {}
        for role, seconds in self.cpu_by_pid.values():
            cpu[role] = cpu.get(role, 0.0) + seconds
        workers = by_role.get("python_worker", [])
        jvm = max(by_role.get("jvm", [0]))
        return {
            "samples": self.samples, "interval_s": self.interval,
            "jvm_peak_mb": jvm / MB,
            "python_driver_peak_mb": max(by_role.get("python_driver", [0])) / MB,
            "python_worker_processes": len(workers),
            "python_worker_peak_mb": max(workers, default=0) / MB,
            "python_workers_peak_sum_mb": self.peak_sum.get("python_worker", 0) / MB,
            # Local mode: the executor is the JVM plus its Python workers.
            "executor_peak_mb": (jvm + self.peak_sum.get("python_worker", 0)) / MB,
            "cpu_s": sum(cpu.values()), "cpu_s_by_role": cpu,
            "processes": [{"pid": pid, "role": role, "cpu_s": seconds, "peak_mb": self.peak_by_pid.get(pid, (role, 0))[1] / MB,
                           "cmdline": self.cmd_by_pid.get(pid, "")} for pid, (role, seconds) in sorted(self.cpu_by_pid.items())],
        }


# ---------------------------------------------------------------- c. the Spark jobs


def run_spark_job(job: str, args: list[str], *, cores: int, env: dict[str, str], log_dir: str, name: str) -> dict[str, Any]:
    """Run ``jobs/<job>`` under ``spark-submit --master local[cores]``; wall time, peak memory, stdout."""
    import psutil

    os.makedirs(log_dir, exist_ok=True)
    cmd = [SPARK_SUBMIT, "--master", f"local[{cores}]", "--driver-java-options", JAVA_OPTIONS,
           "--conf", "spark.ui.enabled=false", os.path.join(ROOT, "jobs", job), *args]
    out_path, err_path = os.path.join(log_dir, f"{name}.out"), os.path.join(log_dir, f"{name}.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        sampler = ProcessSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampled = sampler.stop()
    # Every process of the tree is reaped by its parent, so the children's rusage is the tree's exact CPU time;
    # the sampler's split by role misses what a process spent after its last sample.
    tree_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    with open(out_path) as f:
        stdout = f.read()
    if rc != 0:
        with open(err_path) as f:
            tail = f.read()[-2000:]
        raise BenchError(f"{name}: {job} exited {rc}; see {err_path}\n{tail}")
    sampled_cpu = sampled.pop("cpu_s")
    # Both are lower bounds (the sampler misses each process's last interval, rusage misses unreaped processes).
    return {"job": job, "wall_s": wall, "cpu_s": max(tree_cpu, sampled_cpu), "cpu_s_sampled": sampled_cpu,
            "cpu_s_rusage": tree_cpu,
            "cpu_s_by_role": sampled.pop("cpu_s_by_role"),
            "processes": sampled.pop("processes"), "memory": sampled,
            "stdout": stdout[-4000:], "log": err_path}


def parse_reassemble_stdout(stdout: str) -> dict[str, Any]:
    """Status counts and the conservation verdict from reassemble's summary."""
    counts: dict[str, int] = {}
    for line in stdout.splitlines():
        if line.startswith('{"run_id"'):
            counts = json.loads(line)["status_counts"]
    return {"status_counts": counts,
            "conservation_ok": "every manifest member is accounted for" in stdout}


def bench_config(work: str, computations: bool = False) -> str:
    """conf/local.json, with the per-series computations switched off unless asked for; returns its path.

    The computations re-read every written object and decode its pixels: a separate cost, measured on its own.
    """
    with open(os.path.join(ROOT, "conf", "local.json")) as f:
        cfg = json.load(f)
    job = cfg.setdefault("job", {})
    if not computations:
        job["computations"] = []
    path = os.path.join(work, f"bench-conf{'-computations' if computations else ''}.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    return path


def run_pipeline(text: str, images: str, work: str, out: str, *, cores: int, env: dict[str, str], tag: str,
                 config: str, criteria: str | None = None, manifest: str | None = None,
                 before_job: Any = None) -> dict[str, Any]:
    """build_manifest (unless ``manifest`` is given) then reassemble with ``config``; one dict per stage.

    ``before_job`` (no arguments) runs before each job, outside its timing.
    """
    logs = os.path.join(work, "logs")
    stages: dict[str, Any] = {}
    if manifest is None:
        manifest = os.path.join(work, f"manifest-{tag}")
        shutil.rmtree(manifest, ignore_errors=True)
        if before_job:
            before_job()
        stages["build_manifest"] = run_spark_job("build_manifest.py", ["--text", text, "--images", images,
                                                                       "--manifest", manifest],
                                                 cores=cores, env=env, log_dir=logs, name=f"build_manifest-{tag}")
    ledger = os.path.join(work, f"ledger-{tag}")
    shutil.rmtree(ledger, ignore_errors=True)
    for extra in (ledger + "_runs", ledger + "_computations"):
        shutil.rmtree(extra, ignore_errors=True)
    args = ["--manifest", manifest, "--out", out, "--ledger", ledger, "--config", config]
    if criteria:
        args += ["--criteria", criteria]
    if before_job:
        before_job()
    r = run_spark_job("reassemble.py", args, cores=cores, env=env, log_dir=logs, name=f"reassemble-{tag}")
    r.update(parse_reassemble_stdout(r["stdout"]))
    stages["reassemble"] = r
    stages["manifest_uri"] = manifest
    return stages


# ---------------------------------------------------------------- d. single-UID lookups


def run_cli(args: list[str], env: dict[str, str]) -> float:
    """Run the ``dicom-reassembly`` CLI; its wall time (Python start-up included)."""
    t0 = time.perf_counter()
    r = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"dicom-reassembly {' '.join(args[:2])} failed: {r.stderr[-1500:]}")
    return wall


def measure_lookup(uid: str, text: str, images: str, manifest: str, out: str, env: dict[str, str], bucket: str,
                   snapshot: Callable[[], Any], repeats: int, scan_repeats: int) -> dict[str, Any]:
    """The single-UID CLI with and without the manifest: wall time and archive requests per lookup."""
    results: dict[str, Any] = {}
    for mode, extra, n in (("manifest", ["--manifest", manifest], repeats), ("scan", [], scan_repeats)):
        walls, counts = [], []
        for _ in range(n):
            before = snapshot()
            walls.append(run_cli(["uid", uid, "--text", text, "--images", images, "--out", out, *extra], env))
            counts.append(snapshot().minus(before))
        c = counts[-1]
        results[mode] = {
            "runs": n, "wall_s": statistics.median(walls), "walls_s": walls,
            "archive_gets": c.total(bucket, "GET", "GET_RANGE"), "ranged_gets": c.total(bucket, "GET_RANGE"),
            "lists": c.total(bucket, "LIST"), "heads": c.total(bucket, "HEAD"),
            "archive_bytes_read": c.total(bucket, "GET", "GET_RANGE", what="bytes_out"),
        }
    return results


# ---------------------------------------------------------------- profile of the hot path


def hot_path_items(root: str, index: dict[str, Any], want: int) -> list[dict[str, Any]]:
    """Work items like reassemble's, for whole pixel archives until ``want`` instances; header JSON preloaded."""
    by_archive: dict[str, list[dict[str, Any]]] = {}
    for inst in index["instances"]:
        by_archive.setdefault(inst["pixel_archive"], []).append(inst)
    chosen: list[dict[str, Any]] = []
    for archive in sorted(by_archive):
        chosen.extend(sorted(by_archive[archive], key=lambda i: i["pixel_offset"]))
        if len(chosen) >= want:
            break
    headers: dict[str, bytes] = {}
    for archive in sorted({i["header_archive"] for i in chosen}):
        with tarfile.open(os.path.join(root, archive)) as tf:
            for m in tf:
                f = tf.extractfile(m)
                if f is not None:
                    headers[m.name] = f.read()
    sizes = {f"images/{a['name']}": a["size"] for a in index["archives"]["images"]}
    return [{"sop_instance_uid": i["uid"], "header_json": headers[i["header_member"]].decode("utf-8"),
             "pixel_archive": os.path.join(root, i["pixel_archive"]), "pixel_archive_size": sizes[i["pixel_archive"]],
             "pixel_member": i["pixel_member"], "pixel_offset": i["pixel_offset"], "pixel_size": i["pixel_size"]}
            for i in chosen]


def reassemble_sequentially(items: list[dict[str, Any]], out_dir: str) -> tuple[int, int, dict[str, float]]:
    """The executor's hot path on one thread: read each archive in one pass, assemble, write locally.

    Returns (instances, archive bytes read, seconds spent reading / assembling / writing).
    """
    from itertools import groupby

    from dicom_reassembly.dicom.part10 import assemble
    from dicom_reassembly.io import reads, writes
    from dicom_reassembly.reassembly.reads import ReadTuning, read_archive_members

    tuning = ReadTuning()
    split = {"read": 0.0, "assemble": 0.0, "write": 0.0}
    n = 0
    reads.io_counter.reset()
    for archive, group in groupby(items, key=lambda i: i["pixel_archive"]):
        members = list(group)
        reader = read_archive_members(archive, members, members[0]["pixel_archive_size"], tuning)
        while True:
            t0 = time.perf_counter()
            try:
                item, payload, err = next(reader)
            except StopIteration:
                break
            t1 = time.perf_counter()
            if err is not None:
                raise BenchError(f"profile: {item['sop_instance_uid']}: {err}")
            obj = assemble(item["header_json"], payload.data, item["sop_instance_uid"], item["pixel_member"])
            t2 = time.perf_counter()
            writes.write_parts(os.path.join(out_dir, f"{item['sop_instance_uid']}.dcm"), obj.parts, obj.size, obj.sha256)
            payload.close()
            t3 = time.perf_counter()
            split["read"] += t1 - t0
            split["assemble"] += t2 - t1
            split["write"] += t3 - t2
            n += 1
    return n, reads.io_counter.bytes_read, split


def _partition_in_process(items: list[dict[str, Any]], out_dir: str) -> None:
    """Child process body: the executor's own partition function over ``items``; exit 1 unless all were written."""
    from dicom_reassembly.reassembly.executor import TaskSettings, reassemble_partition
    from dicom_reassembly.reassembly.writes import WritePolicy
    from dicom_reassembly.records.ledger import LEDGER_NAMES

    status = LEDGER_NAMES.index("status")
    rows = list(reassemble_partition(items, TaskSettings("bench", WritePolicy(out=out_dir))))
    os._exit(0 if len(rows) == len(items) and all(r[status] == "written" for r in rows) else 1)


def measure_hot_path_streams(root: str, index: dict[str, Any], want: int, streams: int, work: str,
                             repeats: int = 3) -> dict[str, Any]:
    """The executor's partition function in ``streams`` processes without Spark, against tar -x in as many streams.

    Both read the same whole pixel archives (about ``want`` instances) and alternate, ``repeats`` times each, every
    run into a fresh folder after the same preparation as the jobs' (see prepare_timed_run). The ratio is the hot
    path's own cost against extracting the same members. Its baseline leaves out the header archives, whose small
    files make tar -x of every archive (the target's baseline) slower per byte, so it is not comparable with the
    pipeline's ratio.
    """
    import multiprocessing

    items = hot_path_items(root, index, want)
    archives = sorted({i["pixel_archive"] for i in items})
    total = sum(os.path.getsize(a) for a in archives)
    # The same share of archives per process as tar_x_streams gives each tar stream.
    stream_of = {a: k % streams for k, a in enumerate(archives)}
    shares = [[i for i in items if stream_of[i["pixel_archive"]] == k] for k in range(streams)]
    tar = shutil.which("tar")
    if tar is None:
        raise BenchError("tar is not installed")
    fork = multiprocessing.get_context("fork")  # the children share the parent's items instead of pickling them
    runs = itertools.count()

    def fresh(kind: str) -> str:
        path = os.path.join(work, f"hot-path-streams-{kind}-{next(runs)}")  # none deleted before the end
        os.makedirs(path)
        return path

    def extract(dest: str) -> None:
        tar_x_streams(tar, archives, streams, dest)

    def reassemble(dest: str) -> None:
        procs = [fork.Process(target=_partition_in_process, args=(share, dest)) for share in shares]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise BenchError("hot path in processes: not every instance was written")

    timed: dict[str, list[tuple[float, float]]] = {"tar_x": [], "hot_path": []}
    for _ in range(repeats):
        for kind, fn in (("tar_x", extract), ("hot_path", reassemble)):
            timed[kind].append(timed_children_run(partial(fn, fresh(kind)), archives))
    out: dict[str, Any] = {"instances": len(items), "archives": len(archives), "bytes": total, "streams": streams,
                           "repeats": repeats}
    for kind, figures in timed.items():
        wall, cpu = statistics.median(w for w, _ in figures), statistics.median(c for _, c in figures)
        out[kind] = {"runs_s": [w for w, _ in figures], "cpu_runs_s": [c for _, c in figures], "seconds": wall,
                     "cpu_s": cpu, "mb_s_per_core": total / wall / MB / streams, "mb_per_cpu_s": total / cpu / MB if cpu else None,
                     "ms_cpu_per_instance": cpu / len(items) * 1000}
    out["ratio_per_core"] = out["hot_path"]["mb_s_per_core"] / out["tar_x"]["mb_s_per_core"]
    out["ratio_cpu"] = (out["hot_path"]["mb_per_cpu_s"] / out["tar_x"]["mb_per_cpu_s"]
                        if out["hot_path"]["mb_per_cpu_s"] and out["tar_x"]["mb_per_cpu_s"] else None)
    out["note"] = (f"reassemble_partition, with its default write threads, in {streams} processes against tar -x "
                   f"in {streams} streams, over the same {len(archives)} pixel archives; alternating, median of "
                   f"{repeats} runs each")
    return out


LIB_MARKER = f"{os.sep}dicom_reassembly{os.sep}"


def profile_hot_path(root: str, index: dict[str, Any], want: int, work: str, profile_txt: str) -> dict[str, Any]:
    """Time, cProfile and pyinstrument the hot path on about ``want`` instances; write pyinstrument's text."""
    import cProfile
    import pstats

    items = hot_path_items(root, index, want)
    runs = itertools.count()

    def fresh() -> str:
        # A new folder per pass, none deleted before the end (see measure_tar_x).
        path = os.path.join(work, f"profile-out-{next(runs)}")
        os.makedirs(path)
        return path

    reassemble_sequentially(items[:20], fresh())  # warm imports
    out_dir = fresh()
    prepare_timed_run(sorted({i["pixel_archive"] for i in items}))
    t0, c0 = time.perf_counter(), time.process_time()
    n, read, split = reassemble_sequentially(items, out_dir)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out_dir = fresh()
    prof = cProfile.Profile()
    prof.enable()
    reassemble_sequentially(items, out_dir)
    prof.disable()
    stats = pstats.Stats(prof)
    raw = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
    profiled_total = sum(v[2] for v in raw.values())
    # Our own functions by cumulative time (the library changes; the list follows it), then pydicom's entry points.
    breakdown = {}
    ours = sorted(((f"{os.path.basename(f)}:{fn}", v[3]) for (f, _, fn), v in raw.items() if LIB_MARKER in f),
                  key=lambda kv: kv[1], reverse=True)
    for label, ct in ours:
        if ct >= 0.01 * profiled_total:
            breakdown[label] = {"ms_per_instance": 1000 * ct / n, "share": ct / profiled_total}
    for label, suffix, func in (("pydicom Dataset.from_json", "dataset.py", "from_json"),
                                ("pydicom dcmwrite", "filewriter.py", "dcmwrite")):
        ct = sum(v[3] for (f, _, fn), v in raw.items() if fn == func and f.endswith(suffix) and "pydicom" in f)
        if ct:
            breakdown[label] = {"ms_per_instance": 1000 * ct / n, "share": ct / profiled_total}
    hashing = sum(v[2] for (_, _, fn), v in raw.items() if "_hashlib.HASH" in fn)
    breakdown["sha256 (all callers)"] = {"ms_per_instance": 1000 * hashing / n,
                                         "share": hashing / profiled_total if profiled_total else 0}
    # How often the header took pydicom's general path (build_dataset) rather than a faster encoder.
    pydicom_path = sum(v[1] for (f, _, fn), v in raw.items() if fn == "build_dataset" and LIB_MARKER in f)
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    top_functions = [{"function": f"{os.path.basename(f)}:{line}({fn})", "tottime_ms_per_instance": 1000 * v[2] / n,
                      "cumtime_ms_per_instance": 1000 * v[3] / n, "calls_per_instance": v[1] / n,
                      "share": v[2] / profiled_total if profiled_total else 0}
                     for (f, line, fn), v in top]
    out_dir = fresh()
    try:
        from pyinstrument import Profiler
    except ImportError:
        text = "pyinstrument is not installed; see the cProfile figures in report.json\n"
    else:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        reassemble_sequentially(items, out_dir)
        profiler.stop()
        # Library frames stay visible for pydicom and our own modules: that is where the time goes.
        shown = {"show_regex": r".*(pydicom|dicom_reassembly|tempfile|hashlib|json).*", "filter_threshold": 0.012}
        text = (profiler.output_text(unicode=False, color=False, processor_options=shown)
                + "\n# flat: time spent in each function itself\n"
                + "\n".join(profiler.output_text(unicode=False, color=False, flat=True).splitlines()[:60]) + "\n")
    with open(profile_txt, "w") as f:
        f.write(f"# hot path: read_archive_members + part10.assemble + writes.write_parts, one thread, {n} instances\n")
        f.write(text)
    return {"instances": n, "archive_bytes_read": read, "wall_s": wall, "cpu_s": cpu, "ms_per_instance": 1000 * wall / n,
            "cpu_ms_per_instance": 1000 * cpu / n, "mb_per_cpu_s_in_process": read / cpu / MB if cpu else None,
            "split_ms_per_instance": {k: 1000 * v / n for k, v in split.items()},
            "per_core_mb_s_in_process": read / wall / MB, "instances_per_s": n / wall,
            "breakdown": breakdown, "top_functions": top_functions, "pydicom_dataset_path_per_instance": pydicom_path / n,
            "profile_txt": profile_txt}


# ---------------------------------------------------------------- profile of the S3 writes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _area(path: str, func: str) -> str:
    """Which part of the client stack a profiled function belongs to."""
    if "_hashlib" in func or path.endswith("hashlib.py"):
        return "hashing (hashlib)"
    if path.endswith(os.path.join("botocore", "auth.py")):
        return "SigV4 signing (botocore/auth.py)"
    if path.endswith(os.path.join("botocore", "httpchecksum.py")):
        return "checksums (botocore/httpchecksum.py)"
    if any(k in path for k in ("urllib3", os.path.join("http", "client.py"), "socket.py", "ssl.py")) or "_socket" in func:
        return "HTTP (urllib3, http.client, sockets)"
    if "botocore" in path:
        return "botocore, other"
    if "boto3" in path:
        return "boto3"
    if LIB_MARKER in path:
        return "dicom_reassembly"
    return "other"


# Steps of one instance's S3 writes, by cumulative time: (label, file suffix, function).
_S3_STEPS = [
    ("HEAD (listing.head, skip_existing)", os.path.join("io", "listing.py"), "head"),
    ("PUT (writes.write_parts)", os.path.join("io", "writes.py"), "write_parts"),
    ("HTTP round trips (botocore endpoint _send)", os.path.join("botocore", "endpoint.py"), "_send"),
    ("SigV4 signing (add_auth)", os.path.join("botocore", "auth.py"), "add_auth"),
    ("request checksums (httpchecksum)", os.path.join("botocore", "httpchecksum.py"), "apply_request_checksum"),
    ("user agent strings (useragent to_string)", os.path.join("botocore", "useragent.py"), "to_string"),
    ("event hooks (hooks _emit)", os.path.join("botocore", "hooks.py"), "_emit"),
    ("parameter validation", os.path.join("botocore", "validate.py"), "validate"),
    ("request serialisation", os.path.join("botocore", "serialize.py"), "serialize_to_request"),
    ("response parsing", os.path.join("botocore", "parsers.py"), "parse"),
]


def profile_s3_writes(root: str, index: dict[str, Any], want: int, profile_txt: str) -> dict[str, Any]:
    """CPU profile of what an executor does per instance on S3 (HEAD for skip-existing, then the PUT).

    moto runs in a separate process here, so the profile (on ``time.process_time``) holds the client's CPU only.
    """
    import cProfile
    import io
    import pstats

    from dicom_reassembly.dicom.part10 import assemble
    from dicom_reassembly.io import clients, listing, writes

    items = hot_path_items(root, index, want)
    objs = []
    for it in items:
        with open(it["pixel_archive"], "rb") as f:
            f.seek(it["pixel_offset"])
            payload = f.read(it["pixel_size"])
        objs.append(assemble(it["header_json"], payload, it["sop_instance_uid"], it["pixel_member"]))
    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY")}
    server = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        # The default AWS chain reads these when this process's first S3 client is made (the client is cached).
        os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench"})
        client = clients.s3_client()
        deadline = time.time() + 30
        while True:
            try:
                client.create_bucket(Bucket="bench-profile")
                break
            except Exception:  # the server is still starting
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        writes.write_parts(f"s3://bench-profile/warm-{objs[0].sop_instance_uid}.dcm", objs[0].parts, objs[0].size,
                            objs[0].sha256)
        def put_all(tag: str) -> None:
            for obj in objs:
                uri = f"s3://bench-profile/{tag}/{obj.sop_instance_uid}.dcm"
                listing.head(uri)  # what skip_existing costs per instance
                writes.write_parts(uri, obj.parts, obj.size, obj.sha256)

        t0, c0 = time.perf_counter(), time.process_time()
        put_all("timed")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        prof = cProfile.Profile(time.process_time)  # ~10,000 calls per instance: the profiler inflates the total
        prof.enable()
        put_all("profiled")
        prof.disable()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=30)
    n = len(objs)
    raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    for (path, _, func), v in raw.items():
        areas[_area(path, func)] = areas.get(_area(path, func), 0.0) + v[2]
    total = sum(areas.values()) or 1.0
    steps = {}
    for label, suffix, func in _S3_STEPS:
        ct = sum(v[3] for (path, _, fn), v in raw.items() if fn == func and path.endswith(suffix))
        steps[label] = {"share": ct / total, "cpu_ms_per_instance_unprofiled": 1000 * cpu / n * ct / total}
    hashing = areas.get("hashing (hashlib)", 0.0)
    steps["hashlib (self time, all callers)"] = {"share": hashing / total,
                                                 "cpu_ms_per_instance_unprofiled": 1000 * cpu / n * hashing / total}
    connects = sum(v[1] for (_, _, fn), v in raw.items() if "connect' of '_socket.socket" in fn)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    with open(profile_txt, "a") as f:
        f.write(f"\n\n# S3 writes: head + write_parts per instance, {n} instances, client CPU only "
                f"(cProfile on process time; moto in another process)\n")
        f.write(text.getvalue())
    return {"instances": n, "wall_ms_per_instance": 1000 * wall / n, "cpu_ms_per_instance": 1000 * cpu / n,
            "mean_object_bytes": sum(o.size for o in objs) / n, "tcp_connects_per_instance": connects / n,
            "steps": steps,
            "self_time_by_area": {k: {"share": v / total}
                                  for k, v in sorted(areas.items(), key=lambda kv: kv[1], reverse=True)},
            "note": "cumulative shares from cProfile (on process time), scaled to the unprofiled CPU per instance; "
                    "moto's werkzeug server closes connections, so each request opens a TCP connection here, "
                    "unlike S3"}
