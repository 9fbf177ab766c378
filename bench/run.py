"""``make bench``: generate a realistic delivery, measure the baselines and the pipeline side by side, and report.

python bench/run.py [--instances N] [--archives A] [--per-archive K] [--cores N] [--quick] [--skip-s3] [--out DIR]

Everything is measured in one run on the same files: tar -x, the naive baseline, both Spark jobs at two sizes (for
the marginal cost), the same jobs against a counting S3 endpoint (requests, read amplification, a 10% selection),
single-UID lookups as the archive count grows, and a profile of the hot path. Results go to ``--out``
(report.json, report.md, bench.png, profile.txt); bench/README.md explains them. Timings are reported, never
asserted: on a shared machine they move.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import partial
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "lib"))

from bench import delivery as dl  # noqa: E402
from bench import manifest as bm  # noqa: E402
from bench import measure as ms  # noqa: E402
from bench import notebook_memory as nm  # noqa: E402
from bench.report import write_report  # noqa: E402

ARCHIVE_BUCKET = "bench-archives"
OUT_BUCKET = "bench-out"
LOOKUP_BUCKET = "bench-lookup"
SELECTION_FRACTION = 0.10

QUICK = {"instances": 240, "per_archive": 20, "naive_sample": 15, "lookup_archives": (10, 50), "profile": 100,
         "hot_path_streams": 120, "pool": 4, "computations": False, "repeats": 1,
         "manifest_sizes": (2_000, 10_000, 20_000)}
FULL = {"instances": 2000, "per_archive": 50, "naive_sample": 50, "lookup_archives": (10, 100, 1000), "profile": 200,
        "hot_path_streams": 2000, "pool": 8, "computations": True, "repeats": 2,
        "manifest_sizes": (10_000, 100_000, 1_000_000)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, help="instances in the delivery (default 2000; 240 with --quick)")
    p.add_argument("--archives", type=int, help="archives per role (header archives, and as many pixel archives)")
    p.add_argument("--per-archive", type=int, help="instances per archive (default 50; 20 with --quick)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="Spark local[N] (default: the CPU count)")
    p.add_argument("--quick", action="store_true", help="a small run of every measurement (about 2-3 minutes)")
    p.add_argument("--skip-s3", action="store_true", help="skip the S3 runs and the lookups (no moto server)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="where the report goes")
    p.add_argument("--work", help="scratch folder (default: <out>/tmp); removed at the end unless --keep")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (deliveries, manifests, outputs)")
    p.add_argument("--seed", type=int, default=20241121, help="generator seed")
    p.add_argument("--naive-sample", type=int, help="UIDs timed for the naive baseline (default 50; 15 with --quick)")
    p.add_argument("--lookup-archives", help="comma-separated archive counts for the lookups (default 10,100,1000)")
    p.add_argument("--repeats", type=int, help="pipeline runs per size, the fastest counts (default 2; 1 with --quick)")
    p.add_argument("--manifest-sizes", help="comma-separated instance counts of the generated manifests whose lookups "
                                            "are measured (default 10000,100000,1000000)")
    p.add_argument("--note", default="", help="free text recorded in the report (e.g. 'machine shared')")
    p.add_argument("--notebook-instances", type=int, default=100_000,
                   help="instances of the generated manifest the notebook's memory is measured on (0: skip)")
    return p.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> dict[str, Any]:
    """Instances and per-archive from the flags: any two of instances, archives and per-archive decide the third."""
    base = dict(QUICK if args.quick else FULL)
    if args.instances is None and args.archives and args.per_archive:
        n, k = args.archives * args.per_archive, args.per_archive
    else:
        n = args.instances or base["instances"]
        k = math.ceil(n / args.archives) if args.archives else args.per_archive or base["per_archive"]
    if n < 2 or k < 1:
        raise SystemExit("error: --instances must be at least 2 and --per-archive at least 1")
    base.update(instances=n, per_archive=k)
    if args.naive_sample:
        base["naive_sample"] = args.naive_sample
    if args.repeats:
        base["repeats"] = max(1, args.repeats)
    if args.lookup_archives:
        base["lookup_archives"] = tuple(int(x) for x in args.lookup_archives.split(",") if x.strip())
    if args.manifest_sizes:
        base["manifest_sizes"] = tuple(int(x) for x in args.manifest_sizes.split(",") if x.strip())
    return base


class Progress:
    """One line per step on stdout, with the elapsed time and the load average (the machine may be shared)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.loads: list[tuple[str, float]] = []

    def __call__(self, msg: str) -> None:
        load = os.getloadavg()[0]
        self.loads.append((msg, load))
        print(f"[{time.perf_counter() - self.t0:7.1f}s load {load:4.1f}] {msg}", flush=True)


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 1024 ** 3,
            "platform": platform.platform(), "load_average_start": os.getloadavg(),
            "free_page_reporting": read_free_page_reporting()}


PAGE_REPORTING = "/sys/module/page_reporting/parameters"


def read_free_page_reporting(folder: str = PAGE_REPORTING) -> dict[str, int] | None:
    """The kernel's free page reporting counters, or None where the kernel has none.

    A VM that reports free pages hands memory back to its host, and the next write into that memory takes a host
    fault: tar -x and the pipeline both slow down by how much of it they touch. The report prints how much was
    handed back during the run, so a reader can tell a run that paid for it.
    """
    values: dict[str, int] = {}
    for name in ("page_reporting_order", "reported_kib"):
        try:
            with open(os.path.join(folder, name)) as f:
                values[name] = int(f.read().strip())
        except (OSError, ValueError):
            continue
    return values or None


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("pyspark", "pydicom", "numpy", "pyarrow", "boto3", "moto", "pylibjpeg-openjpeg", "pyinstrument", "psutil"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        r = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        out["java"] = (r.stderr or r.stdout).splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        out["java"] = None
    return out


def all_archives(root: str, index: dict[str, Any]) -> list[str]:
    """Header archives, then pixel archives."""
    return [os.path.join(root, role, a["name"]) for role in ("text", "images") for a in index["archives"][role]]


# ---------------------------------------------------------------- local pipeline at two sizes


def measure_local(deliveries: list[tuple[str, dict[str, Any]]], work: str, cores: int, log: Progress,
                  computations: bool, repeats: int = 1) -> dict[str, Any]:
    """The pipeline on local files at each size, ``repeats`` times in turn; the fastest run of each stage counts.

    Every run writes to a fresh folder and nothing is deleted until the benchmark
    ends (see ms.measure_tar_x: a clean-up would slow the next run's file creation).
    """
    env = ms.base_env()
    config = ms.bench_config(work)
    runs: dict[int, list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for root, index in deliveries:
            n = index["totals"]["instances"]
            log(f"pipeline, local files, {n} instances (run {rep + 1} of {repeats}): build_manifest + reassemble")
            out = os.path.join(work, f"out-local-{n}-{rep}")
            stages = ms.run_pipeline(os.path.join(root, "text"), os.path.join(root, "images"), work, out,
                                     cores=cores, env=env, tag=f"local-{n}-{rep}", config=config,
                                     before_job=partial(ms.prepare_timed_run, all_archives(root, index)))
            written = stages["reassemble"]["status_counts"].get("written", 0)
            if written != n or not stages["reassemble"]["conservation_ok"]:
                raise ms.BenchError(f"local run of {n} instances wrote {written}; "
                                    f"counts {stages['reassemble']['status_counts']}")
            for s in ("build_manifest", "reassemble"):
                stages[s].pop("stdout", None)
            runs.setdefault(n, []).append(stages)
            log(f"  manifest {stages['build_manifest']['wall_s']:.1f}s, reassemble {stages['reassemble']['wall_s']:.1f}s")
    sizes = []
    for _root, index in deliveries:
        n = index["totals"]["instances"]
        best = {s: min((r[s] for r in runs[n]), key=lambda job: job["wall_s"]) for s in ("build_manifest", "reassemble")}
        sizes.append({"instances": n, "archive_bytes": index["totals"]["archive_bytes"], **best,
                      "manifest_uri": runs[n][0]["manifest_uri"], "ledger_uri": runs[n][0]["ledger_uri"],
                      "repeats": [{s: {"wall_s": r[s]["wall_s"], "cpu_s": r[s]["cpu_s"]} for s in ("build_manifest", "reassemble")}
                                  for r in runs[n]]})
    if not computations:
        return {"cores": cores, "sizes": sizes}
    # The job's default config also runs the per-series computations: measured once, on the largest delivery.
    root, index = deliveries[-1]
    n = index["totals"]["instances"]
    log(f"pipeline, local files, {n} instances: reassemble again with the default per-series computations")
    out = os.path.join(work, f"out-local-{n}-computations")
    with_comp = ms.run_pipeline("", "", work, out, cores=cores, env=env, tag=f"local-{n}-computations",
                                config=ms.bench_config(work, computations=True), manifest=sizes[-1]["manifest_uri"],
                                before_job=partial(ms.prepare_timed_run, all_archives(root, index)))
    with_comp["reassemble"].pop("stdout", None)
    log(f"  reassemble with computations {with_comp['reassemble']['wall_s']:.1f}s")
    return {"cores": cores, "sizes": sizes, "with_computations": {"instances": n, **with_comp}}


# ---------------------------------------------------------------- S3: requests, amplification, selection


def upload(srv: Any, root: str, index: dict[str, Any], bucket: str, prefix: str) -> None:
    client = srv.client()
    jobs = [(os.path.join(root, role, a["name"]), f"{prefix}/{role}/{a['name']}")
            for role in ("text", "images") for a in index["archives"][role]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda j: client.upload_file(j[0], bucket, j[1]), jobs))


def stage_figures(c: Any, job: dict[str, Any], instances: int) -> dict[str, Any]:
    """Requests and bytes of one stage on the archive bucket and the output bucket."""
    gets = c.total(ARCHIVE_BUCKET, "GET", "GET_RANGE")
    puts = c.total(OUT_BUCKET, "PUT")
    multipart = c.total(OUT_BUCKET, "CREATE_MULTIPART")
    heads = c.total(ARCHIVE_BUCKET, "HEAD") + c.total(OUT_BUCKET, "HEAD")
    n = max(1, instances)
    return {"wall_s": job["wall_s"], "cpu_s": job["cpu_s"], "cpu_s_by_role": job["cpu_s_by_role"], "memory": job["memory"],
            "archive_gets": gets, "ranged_gets": c.total(ARCHIVE_BUCKET, "GET_RANGE"),
            "heads": heads, "lists": c.total(ARCHIVE_BUCKET, "LIST") + c.total(OUT_BUCKET, "LIST"),
            "puts": puts, "multipart": multipart, "upload_parts": c.total(OUT_BUCKET, "UPLOAD_PART"),
            "archive_bytes_read": c.total(ARCHIVE_BUCKET, "GET", "GET_RANGE", what="bytes_out"),
            "output_bytes_put": c.total(OUT_BUCKET, "PUT", "UPLOAD_PART", what="bytes_in"),
            "gets_per_instance": gets / n, "puts_per_instance": (puts + multipart) / n, "heads_per_instance": heads / n,
            "requests": c.as_dict()}


def planned_reads(index: dict[str, Any], wanted: set[str], sizes: dict[str, int]) -> int:
    """How many archive reads reassemble should make for ``wanted`` UIDs, by its own read plan and config."""
    from dicom_reassembly.config import load_config
    from dicom_reassembly.reassembly.reads import plan_reads

    cfg = load_config(os.path.join(ROOT, "conf", "local.json"))
    by_archive: dict[str, list[dict[str, Any]]] = {}
    for i in index["instances"]:
        if i["uid"] in wanted:
            by_archive.setdefault(i["pixel_archive"], []).append({"pixel_offset": i["pixel_offset"],
                                                                  "pixel_size": i["pixel_size"]})
    return sum(len(list(plan_reads(sorted(items, key=lambda x: x["pixel_offset"]), sizes[a], cfg.stream_fraction,
                                   cfg.coalesce_gap))) for a, items in by_archive.items())


def measure_s3(srv: Any, root: str, index: dict[str, Any], work: str, cores: int, log: Progress) -> dict[str, Any]:
    client = srv.client()
    for b in (ARCHIVE_BUCKET, OUT_BUCKET):
        client.create_bucket(Bucket=b)
    log(f"S3: uploading {index['totals']['archive_bytes'] / 1e6:.0f} MB of archives to moto")
    upload(srv, root, index, ARCHIVE_BUCKET, "delivery")
    env = ms.base_env(srv.env())
    logs = os.path.join(work, "logs")
    text, images = f"s3://{ARCHIVE_BUCKET}/delivery/text", f"s3://{ARCHIVE_BUCKET}/delivery/images"
    manifest = os.path.join(work, "manifest-s3")
    shutil.rmtree(manifest, ignore_errors=True)
    n = index["totals"]["instances"]
    log("S3: build_manifest")
    before = srv.snapshot()
    m = ms.run_spark_job("build_manifest.py", ["--text", text, "--images", images, "--manifest", manifest],
                         cores=cores, env=env, log_dir=logs, name="build_manifest-s3")
    manifest_stage = stage_figures(srv.snapshot().minus(before), m, n)
    date, fraction = dl.date_threshold(index, SELECTION_FRACTION)
    criteria = os.path.join(work, "criteria-10pct.json")
    with open(criteria, "w") as f:
        json.dump([{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": date}], f)
    cutoff = date.replace("-", "")
    sizes = {f"images/{a['name']}": a["size"] for a in index["archives"]["images"]}
    runs: dict[str, Any] = {"manifest_wall_s": m["wall_s"]}
    for key, crit in (("full", None), ("selection", criteria)):
        wanted = {i["uid"] for i in index["instances"] if crit is None or i["study_date"] > cutoff}
        log(f"S3: reassemble, {key} ({len(wanted)} instances)")
        ledger = os.path.join(work, f"ledger-s3-{key}")
        for d in (ledger, ledger + "_runs", ledger + "_computations"):
            shutil.rmtree(d, ignore_errors=True)
        args = ["--manifest", manifest, "--out", f"s3://{OUT_BUCKET}/{key}", "--ledger", ledger,
                "--config", ms.bench_config(work)]
        if crit:
            args += ["--criteria", crit]
        before = srv.snapshot()
        r = ms.run_spark_job("reassemble.py", args, cores=cores, env=env, log_dir=logs, name=f"reassemble-s3-{key}")
        parsed = ms.parse_reassemble_stdout(r["stdout"])
        written = parsed["status_counts"].get("written", 0)
        stage = stage_figures(srv.snapshot().minus(before), r, written)
        stage["puts_per_written"] = (stage["puts"] + stage["multipart"]) / written if written else None
        stage.update(parsed)
        wanted_bytes = sum(i["header_size"] + i["pixel_size"] for i in index["instances"] if i["uid"] in wanted)
        read = manifest_stage["archive_bytes_read"] + stage["archive_bytes_read"]
        runs[key] = {
            "selected_instances": len(wanted), "written": written, "criteria": None if crit is None else
            {"StudyDate GREATER": date, "fraction": fraction},
            "build_manifest": manifest_stage, "reassemble": stage,
            "wanted_bytes": wanted_bytes, "read_bytes": read, "amplification": read / wanted_bytes if wanted_bytes else None,
            "planned_reads": planned_reads(index, wanted, sizes),
        }
        if written != len(wanted) or not parsed["conservation_ok"]:
            raise ms.BenchError(f"S3 {key}: wrote {written} of {len(wanted)}; counts {parsed['status_counts']}")
        log(f"  {written} written, {stage['archive_gets']} GETs, {stage['puts']} PUTs, amplification "
            f"{runs[key]['amplification']:.3f}")
    return runs


def measure_lookups(srv: Any, work: str, counts: tuple[int, ...], cores: int, seed: int, log: Progress) -> dict[str, Any]:
    client = srv.client()
    client.create_bucket(Bucket=LOOKUP_BUCKET)
    env = ms.base_env(srv.env())
    out = []
    for a in counts:
        root = os.path.join(work, f"lookup-{a}")
        log(f"lookup: {a} archives per role (2 instances each, 64x64 pixels)")
        index = dl.write_delivery(root, dl.DeliveryParams(instances=2 * a, per_archive=2, seed=seed + a, pool=2, matrix=64))
        upload(srv, root, index, LOOKUP_BUCKET, f"a{a}")
        text, images = f"s3://{LOOKUP_BUCKET}/a{a}/text", f"s3://{LOOKUP_BUCKET}/a{a}/images"
        manifest = os.path.join(work, f"manifest-lookup-{a}")
        shutil.rmtree(manifest, ignore_errors=True)
        m = ms.run_spark_job("build_manifest.py", ["--text", text, "--images", images, "--manifest", manifest],
                             cores=cores, env=env, log_dir=os.path.join(work, "logs"), name=f"build_manifest-lookup-{a}")
        # The pixels of the last member of the last pixel archive: the worst case for a scan of the images.
        last = f"images/{index['archives']['images'][-1]['name']}"
        uid = max((i for i in index["instances"] if i["pixel_archive"] == last), key=lambda i: i["pixel_offset"])["uid"]
        res = ms.measure_lookup(uid, text, images, manifest, os.path.join(work, "lookup-out"), env, LOOKUP_BUCKET,
                                srv.snapshot, repeats=3, scan_repeats=3 if a <= 100 else 1)
        out.append({"archives": a, "uid": uid, "manifest_build_wall_s": m["wall_s"], **res})
        log(f"  with manifest {res['manifest']['wall_s']:.2f}s / {res['manifest']['archive_gets']} GETs; "
            f"scan {res['scan']['wall_s']:.2f}s / {res['scan']['archive_gets']} GETs")
        shutil.rmtree(root, ignore_errors=True)
    return {"by_archives": out, "note": "CLI wall time includes Python start-up; the target UID's pixels are the "
                                        "last member of the last pixel archive listed (worst case for a scan)"}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = resolve_sizes(args)
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work or os.path.join(out, "tmp"))
    os.makedirs(work, exist_ok=True)
    log = Progress()
    n, k = sizes["instances"], sizes["per_archive"]
    half = max(1, n // 2)
    results: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": {"mode": "quick" if args.quick else "full", "instances": n, "per_archive": k,
                       "archives_per_role": math.ceil(n / k), "cores": args.cores, "seed": args.seed,
                       "sizes": [half, n], "repeats": sizes["repeats"], "naive_sample": sizes["naive_sample"],
                       "lookup_archives": list(sizes["lookup_archives"]), "profile_instances": sizes["profile"],
                       "manifest_sizes": list(sizes["manifest_sizes"]),
                       "selection_fraction": SELECTION_FRACTION, "skip_s3": args.skip_s3, "note": args.note,
                       "spark": f"spark-submit --master local[{args.cores}] --conf spark.ui.enabled=false, conf/local.json"},
        "machine": machine_info(), "versions": versions(),
    }
    try:
        log(f"generating deliveries: {n} and {half} instances, {k} per archive")
        pool = dl.build_pixel_pool(args.seed, sizes["pool"])
        main_root = os.path.join(work, f"delivery-{n}")
        index = dl.write_delivery(main_root, dl.DeliveryParams(instances=n, per_archive=k, seed=args.seed,
                                                               pool=sizes["pool"]), pool)
        half_root = os.path.join(work, f"delivery-{half}")
        half_index = dl.write_delivery(half_root, dl.DeliveryParams(instances=half, per_archive=k, seed=args.seed,
                                                                    pool=sizes["pool"]), pool)
        results["delivery"] = {"totals": index["totals"], "params": index["params"], "half_totals": half_index["totals"]}
        log("tar -x of every archive (three times into fresh folders; the median counts)")
        results["tar_x"] = ms.measure_tar_x(all_archives(main_root, index), os.path.join(work, "tar-x"))
        log(f"  {results['tar_x']['mb_s']:.0f} MB/s")
        if args.cores > 1:
            log(f"tar -x in {args.cores} streams side by side, as many as the pipeline's cores (three times; the median counts)")
            results["tar_x_streams"] = ms.measure_tar_x(all_archives(main_root, index), os.path.join(work, "tar-x"),
                                                        streams=args.cores)
            log(f"  {results['tar_x_streams']['mb_s']:.0f} MB/s, {results['tar_x_streams']['mb_s_per_core']:.0f} MB/s per core")
        log(f"naive baseline on {sizes['naive_sample']} random UIDs")
        results["naive"] = ms.measure_naive(main_root, index, sizes["naive_sample"], os.path.join(work, "naive-out"), args.seed)
        log(f"  {results['naive']['per_instance_s'] * 1000:.0f} ms per instance")
        log(f"profiling the hot path on {sizes['profile']} instances")
        results["profile"] = ms.profile_hot_path(main_root, index, sizes["profile"], work, os.path.join(out, "profile.txt"))
        log(f"  {results['profile']['ms_per_instance']:.1f} ms per instance in process")
        if args.cores > 1:
            log(f"the hot path in {args.cores} processes without Spark, alternating with tar -x in {args.cores} streams "
                f"over the same pixel archives (three times each; the median counts)")
            results["hot_path_streams"] = ms.measure_hot_path_streams(main_root, index, sizes["hot_path_streams"],
                                                                      args.cores, work)
            hs = results["hot_path_streams"]
            log(f"  ratio per core {hs['ratio_per_core']:.2f}, per CPU-second {hs['ratio_cpu'] or float('nan'):.2f}")
        results["pipeline"] = measure_local([(half_root, half_index), (main_root, index)], work, args.cores, log,
                                            sizes["computations"], sizes["repeats"])
        if args.notebook_instances:
            results["notebook_memory"] = nm.measure_notebook_memory(results["pipeline"]["sizes"][-1], work,
                                                                    args.notebook_instances, log)
        results["manifest_build"] = bm.measure_build([(half_root, half_index), (main_root, index)], work,
                                                     args.cores, sizes["repeats"], results["pipeline"], log)
        results["manifest_lookup"] = bm.measure_lookup_layout(work, sizes["manifest_sizes"], args.cores, args.seed, log)
        if not args.skip_s3:
            from bench.s3count import CountingS3Server

            log("profiling the S3 writes (HEAD + PUT per instance) against a separate moto process")
            results["s3_write_profile"] = ms.profile_s3_writes(main_root, index, min(100, sizes["profile"]),
                                                               os.path.join(out, "profile.txt"))
            log(f"  {results['s3_write_profile']['cpu_ms_per_instance']:.1f} ms CPU per instance in the client")
            with CountingS3Server() as srv:
                results["s3"] = measure_s3(srv, main_root, index, work, args.cores, log)
                results["lookup"] = measure_lookups(srv, work, sizes["lookup_archives"], args.cores, args.seed, log)
            from bench.s3cpu import measure_s3_client_cpu

            log("S3 client CPU per request and per instance (plain processes, moto over HTTPS in another process), "
                "and the botocore options A/B")
            results["s3_client_cpu"] = measure_s3_client_cpu(main_root, index, work, log)
    except ms.BenchError as exc:
        results["error"] = str(exc)
        print(f"error: {exc}", file=sys.stderr)
    finally:
        results["machine"]["load_average_end"] = os.getloadavg()
        results["machine"]["free_page_reporting_end"] = read_free_page_reporting()
        results["load_by_step"] = log.loads
        results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        paths = write_report(results, out)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    with open(paths["md"]) as f:
        print(f.read())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
