"""The manifest's measurements (issue 20): members indexed per second per core, with header members parsed and
for pixel archives alone, beside ratarmount's on the same archives; and what one UID's lookup reads as the
manifest grows (10^4, 10^5, 10^6 instances).

Manifests of those sizes are generated directly as Parquet, in the layout before issue 20 (one file per 16
archives, as build_manifest wrote them), with realistic header JSON: a pool of the benchmark's own headers
(5-20 KB, see ``headers``), each copy given its own SOPInstanceUID. ``jobs/build_manifest.py`` then rewrites them
in the lookup layout (a build with nothing new to index), so the files measured are the job's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from bench import measure as ms

# Archives per file of a generated manifest in the earlier layout: manifest_tasks once made one task per 16 archives.
ARCHIVES_PER_FILE = 16
HEADER_POOL = 400
PER_ARCHIVE = 50


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Seconds per member between the smallest and the largest size (None when not positive)."""
    (n0, t0), (n1, t1) = min(points), max(points)
    return (t1 - t0) / (n1 - n0) if n1 > n0 and t1 > t0 else None


# ---------------------------------------------------------------- members indexed per second per core


def build_rates(pipeline: dict[str, Any], cores: int) -> dict[str, Any]:
    """Members per second per core of the pipeline's build_manifest runs (header and pixel members, two per
    instance), marginal between its two sizes, by wall time over the cores and by CPU time."""
    sizes = pipeline.get("sizes") or []
    if len(sizes) < 2:
        return {}
    out: dict[str, Any] = {"members_per_instance": 2}
    for clock, key in (("wall_s", "per_core_wall"), ("cpu_s", "per_cpu_s")):
        slope = _slope([(2 * s["instances"], s["build_manifest"][clock]) for s in sizes])
        out[key] = None if slope is None else 1 / slope / (cores if clock == "wall_s" else 1)
    return out


def build_runs(deliveries: list[tuple[str, dict[str, Any]]], work: str, cores: int, repeats: int,
               with_headers: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """build_manifest at each delivery's size, over header and pixel archives or (an empty text prefix) the pixel
    archives alone, ``repeats`` times in turn, the run with the least CPU counting: members per CPU-second and per
    wall second per core, marginal between the sizes."""
    env = ms.base_env()
    empty = os.path.join(work, "empty-text")
    os.makedirs(empty, exist_ok=True)
    kind = "header and pixel archives" if with_headers else "pixel archives only"
    best: dict[int, dict[str, Any]] = {}
    for rep in range(repeats):
        for root, index in deliveries:
            n = index["totals"]["instances"]
            # A fresh folder per run, nothing deleted until the end: files created soon after thousands were
            # deleted cost this file system far more (bench/README.md), and the runs would not be alike.
            manifest = os.path.join(work, f"manifest-{'h' if with_headers else 'p'}-{n}-{rep}")
            roles = ("text", "images") if with_headers else ("images",)
            ms.prepare_timed_run([os.path.join(root, r, a["name"]) for r in roles for a in index["archives"][r]])
            log(f"build_manifest, {kind}, {n} instances (run {rep + 1} of {repeats})")
            text = os.path.join(root, "text") if with_headers else empty
            r = ms.run_spark_job("build_manifest.py", ["--text", text, "--images", os.path.join(root, "images"),
                                                       "--manifest", manifest],
                                 cores=cores, env=env, log_dir=os.path.join(work, "logs"), name=f"build_manifest-{n}")
            log(f"  {r['wall_s']:.1f}s wall, {r['cpu_s']:.1f}s CPU")
            if n not in best or r["cpu_s"] < best[n]["cpu_s"]:
                best[n] = {"members": 2 * n if with_headers else n, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                           "cpu_s_by_role": r["cpu_s_by_role"]}
    points = sorted(best.values(), key=lambda p: p["members"])
    wall, cpu = _slope([(p["members"], p["wall_s"]) for p in points]), _slope([(p["members"], p["cpu_s"]) for p in points])
    return {"runs": points, "per_core_wall": None if wall is None else 1 / wall / cores,
            "per_cpu_s": None if cpu is None else 1 / cpu}


def ratarmount_rates(deliveries: list[tuple[str, dict[str, Any]]], work: str, repeats: int = 3) -> dict[str, Any]:
    """ratarmountcore's SQLite index of the same pixel archives, one archive after another in this process
    (one core): members per second, marginal between the two sizes, the fastest of ``repeats`` runs each."""
    try:
        from ratarmountcore.mountsource.formats.tar import SQLiteIndexedTar
    except ImportError:
        return {"skipped": "ratarmountcore is not installed (pip install -r requirements-test.txt)"}
    points = []
    for root, index in deliveries:
        paths = [os.path.join(root, "images", a["name"]) for a in index["archives"]["images"]]
        best: dict[str, float] | None = None
        for rep in range(repeats):
            folder = os.path.join(work, f"ratarmount-{index['totals']['instances']}-{rep}")
            os.makedirs(folder, exist_ok=True)
            ms.prepare_timed_run(paths)
            members = 0
            w0, c0 = time.perf_counter(), _cpu()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                for path in paths:
                    with SQLiteIndexedTar(path, indexFilePath=os.path.join(folder, os.path.basename(path) + ".sqlite"),
                                          writeIndex=True, clearIndexCache=True, indexMinimumFileCount=0) as tar:
                        members += len(tar.list("/") or {})
            run = {"members": members, "wall_s": time.perf_counter() - w0, "cpu_s": _cpu() - c0}
            if best is None or run["wall_s"] < best["wall_s"]:
                best = run
        points.append(best)
    wall, cpu = _slope([(p["members"], p["wall_s"]) for p in points]), _slope([(p["members"], p["cpu_s"]) for p in points])
    from importlib.metadata import version

    return {"version": version("ratarmountcore"), "runs": points,
            "per_core_wall": None if wall is None else 1 / wall, "per_cpu_s": None if cpu is None else 1 / cpu}


def measure_build(deliveries: list[tuple[str, dict[str, Any]]], work: str, cores: int, repeats: int,
                  pipeline: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Members indexed per second per core: the pipeline's build_manifest (headers parsed), build_manifest over the
    pixel archives alone, and ratarmountcore indexing the same pixel archives, each marginal between the sizes."""
    out = {"with_headers": build_rates(pipeline, cores),
           "pixel_archives": build_runs(deliveries, work, cores, repeats, False, log)}
    log("ratarmountcore indexing the same pixel archives, one process (three runs per size, the fastest counts)")
    out["ratarmount"] = ratarmount_rates(deliveries, work)
    for key in ("with_headers", "pixel_archives", "ratarmount"):
        b = out[key]
        log(f"  {key}: {b.get('per_core_wall') or float('nan'):,.0f} members/s per core, "
            f"{b.get('per_cpu_s') or float('nan'):,.0f} per CPU-second")
    return out


# ---------------------------------------------------------------- manifests of 10^4 to 10^6 instances


def header_pool(seed: int, size: int = HEADER_POOL) -> list[dict[str, Any]]:
    """Distinct benchmark headers with their key tags, and the UID each one's copies replace."""
    from bench.headers import HeaderFactory, plan_instances
    from dicom_reassembly.dicom.dicom_json import key_tags, parse_header

    factory = HeaderFactory(seed)
    pool = []
    for spec in plan_instances(size, seed, 0.5, {"native": 1, "j2k": 1}):
        text = factory.header(spec).decode("utf-8")
        tags = key_tags(parse_header(text))
        tags.pop("header_sop_instance_uid", None)
        pool.append({"text": text, "uid": spec.uid, "tags": tags})
    return pool


def write_unclustered_manifest(folder: str, instances: int, seed: int, pool: list[dict[str, Any]]) -> list[str]:
    """A manifest of ``instances`` (a header and a pixel member each, in archives of ``PER_ARCHIVE``) in the
    layout before issue 20; returns the instances' UIDs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dicom_reassembly.manifest import index

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(f"manifest:{seed}:{instances}")
    uids = [f"2.25.{rng.getrandbits(126)}" for _ in range(instances)]
    # Headers are dealt to archives at random, as deliveries shuffle them: neighbours are not of one series.
    chosen = [rng.randrange(len(pool)) for _ in range(instances)]
    run = "20261201T000000000000Z"
    at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    archives = -(-instances // PER_ARCHIVE)
    schema = index.arrow_schema()
    names = index.FIELD_NAMES
    for role in ("text", "images"):
        for first in range(0, archives, ARCHIVES_PER_FILE):
            rows = []
            for a in range(first, min(first + ARCHIVES_PER_FILE, archives)):
                uri = f"s3://partner-delivery/{role}/{role}-{a:07d}.tar"
                members = range(a * PER_ARCHIVE, min((a + 1) * PER_ARCHIVE, instances))
                base = {"archive_uri": uri, "archive_role": role, "archive_etag": f"{a:032x}", "archive_mtime": at,
                        "index_run": run, "indexed_at": at, "member_type": "file"}
                offset = 0
                for i in members:
                    uid = uids[i]
                    if role == "text":
                        p = pool[chosen[i]]
                        text = p["text"].replace(p["uid"], uid)
                        row = {**base, **p["tags"], "member_name": f"{uid}.json", "kind": "header",
                               "size": len(text), "header_json": text,
                               "header_sha256": hashlib.sha256(text.encode()).hexdigest()}
                    else:
                        row = {**base, "member_name": f"{uid}.j2c", "kind": "pixels", "size": 210_000 + i % 4096}
                    row.update(sop_instance_uid=uid, header_offset=offset, data_offset=offset + 512)
                    offset += 512 + -(-row["size"] // 512) * 512
                    rows.append(tuple(row.get(n) for n in names))
                rows.append(tuple({**base, "kind": "archive", "member_type": "archive", "size": offset + 1024,
                                   "archive_size": offset + 1024, "error_detail": f"{len(members)} members"}.get(n)
                                  for n in names))
            table = pa.Table.from_batches([index.rows_to_batch(rows, schema)])
            pq.write_table(table, os.path.join(folder, f"part-{role}-{first:07d}.snappy.parquet"), compression="snappy")
    return uids


def _dataset_bytes(folder: str) -> tuple[int, int]:
    files = [f for f in os.listdir(folder) if f.endswith(".parquet")]
    return len(files), sum(os.path.getsize(os.path.join(folder, f)) for f in files)


def lookup_figures(manifest: str, uids: list[str], *, stats_only: bool = False) -> dict[str, Any]:
    """Bytes and files one lookup reads (through a counting filesystem) and its time (without one), per UID.

    ``stats_only`` measures the alternative without file pruning: every clustered member file in one dataset,
    filtered on the bucket and the UID, so only row-group statistics prune (every footer is read).
    """
    from bench.arrowcount import counting_filesystem
    from dicom_reassembly.io import arrow_io
    from dicom_reassembly.manifest import layout
    from dicom_reassembly.manifest.lookup import MEMBER_COLUMNS, manifest_members

    def stats_only_lookup(uid: str) -> int:
        import pyarrow.dataset as pads

        files = [f for f in layout.clustered_files(manifest) if f.role == layout.MEMBERS]
        filesystem, _ = arrow_io.arrow_filesystem(manifest)
        ds = pads.dataset([f.uri for f in files], filesystem=filesystem, format="parquet")
        buckets = {f.buckets for f in files}
        flt = None
        for n in buckets:
            one = (pads.field("bucket") == layout.bucket_of(uid, n)) & (pads.field("sop_instance_uid") == uid)
            flt = one if flt is None else flt | one
        return ds.to_table(columns=MEMBER_COLUMNS, filter=flt).num_rows

    def lookup(uid: str) -> int:
        if stats_only:
            return stats_only_lookup(uid)
        m = manifest_members(uid, manifest)
        return len(m.headers) + len(m.pixels)

    real = arrow_io.arrow_filesystem
    fs, counter = counting_filesystem()
    per: list[dict[str, Any]] = []
    try:
        for uid in uids:
            counter.reset()
            arrow_io.arrow_filesystem = lambda uri: (fs, uri)
            found = lookup(uid)
            arrow_io.arrow_filesystem = real
            t0 = time.perf_counter()
            lookup(uid)
            per.append({"uid": uid, "members": found, "bytes": counter.bytes, "files": len(counter.opens),
                        "reads": counter.reads, "wall_s": time.perf_counter() - t0})
    finally:
        arrow_io.arrow_filesystem = real
    if any(p["members"] != 2 for p in per):
        raise ms.BenchError(f"a lookup in {manifest} did not find its header and pixel member: {per}")
    return {"lookups": len(per), "bytes_median": statistics.median(p["bytes"] for p in per),
            "bytes_max": max(p["bytes"] for p in per), "files_median": statistics.median(p["files"] for p in per),
            "wall_s_median": statistics.median(p["wall_s"] for p in per), "per_lookup": per}


def measure_lookup_layout(work: str, sizes: tuple[int, ...], cores: int, seed: int, log: Callable[[str], None],
                          sample: int = 20, old_sample: int = 2) -> dict[str, Any]:
    """For each size: a generated manifest in the earlier layout, lookups on it, the job's rewrite into the lookup
    layout (timed), then lookups on that, with and without file pruning."""
    from dicom_reassembly.manifest import layout

    env = ms.base_env()
    text, images = os.path.join(work, "empty-text"), os.path.join(work, "empty-images")
    for folder in (text, images):
        os.makedirs(folder, exist_ok=True)
    log(f"manifest lookups: a pool of {HEADER_POOL} benchmark headers")
    pool = header_pool(seed)
    out = []
    for n in sizes:
        folder = os.path.join(work, f"manifest-synthetic-{n}")
        shutil.rmtree(folder, ignore_errors=True)
        log(f"manifest lookups, {n} instances: generating the manifest in the earlier layout")
        t0 = time.perf_counter()
        uids = write_unclustered_manifest(folder, n, seed, pool)
        generated_s = time.perf_counter() - t0
        files, size = _dataset_bytes(folder)
        pick = random.Random(seed + n).sample(uids, min(sample, n))
        old = lookup_figures(folder, pick[:old_sample])
        log(f"  {files} files, {size / 1e6:.0f} MB; earlier layout: {old['bytes_median'] / 1e6:.1f} MB and "
            f"{old['wall_s_median']:.2f} s per lookup; rewriting with build_manifest")
        job = ms.run_spark_job("build_manifest.py", ["--text", text, "--images", images, "--manifest", folder],
                               cores=cores, env=env, log_dir=os.path.join(work, "logs"), name=f"build_manifest-layout-{n}")
        if layout.unclustered_files(folder):
            raise ms.BenchError(f"build_manifest left unclustered files in {folder}")
        new_files, new_size = _dataset_bytes(folder)
        groups = layout.clustered_files(folder)
        new = lookup_figures(folder, pick)
        stats = lookup_figures(folder, pick[:5], stats_only=True)
        out.append({"instances": n, "generated_s": generated_s, "rewrite_wall_s": job["wall_s"],
                    "rewrite_cpu_s": job["cpu_s"], "before": {"files": files, "bytes": size, **old},
                    "after": {"files": new_files, "bytes": new_size,
                              "member_buckets": max((f.buckets for f in groups if f.role == "m"), default=0), **new},
                    "stats_only": stats})
        log(f"  lookup layout: {new_files} files, {new_size / 1e6:.0f} MB; {new['bytes_median'] / 1e3:.0f} KB "
            f"({new['bytes_median'] / new_size:.2%}) and {new['wall_s_median'] * 1000:.0f} ms per lookup; "
            f"without file pruning {stats['bytes_median'] / 1e3:.0f} KB, {stats['wall_s_median'] * 1000:.0f} ms")
        shutil.rmtree(folder, ignore_errors=True)
    return {"sizes": out, "per_archive": PER_ARCHIVE, "header_pool": HEADER_POOL,
            "note": "lookup time through the Python API on local files (no CLI start-up); bytes through a "
                    "counting filesystem"}


# ---------------------------------------------------------------- report


# Issue 20's targets: (key in derived["ratios"], label, comparison, threshold), evaluated with issue 5's.
TARGETS = [
    ("manifest_members_per_core", "build_manifest members/s per core, header members parsed (marginal, wall)",
     ">=", 3500),
    ("manifest_pixel_members_per_core", "build_manifest members/s per core, pixel archives alone (marginal, wall)",
     ">=", 7000),
    ("lookup_bytes_growth", "lookup bytes, largest manifest / smallest (median per lookup)", "<=", 2),
    ("lookup_bytes_share_1e5", "lookup bytes / manifest bytes at 10^5 instances (median per lookup)", "<=", 0.05),
]


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The figures TARGETS reads, from what was measured."""
    build = results.get("manifest_build") or {}
    out = {"manifest_members_per_core": (build.get("with_headers") or {}).get("per_core_wall"),
           "manifest_pixel_members_per_core": (build.get("pixel_archives") or {}).get("per_core_wall")}
    sizes = (results.get("manifest_lookup") or {}).get("sizes") or []
    if len(sizes) >= 2:
        first, last = sizes[0]["after"]["bytes_median"], sizes[-1]["after"]["bytes_median"]
        out["lookup_bytes_growth"] = last / first if first else None
    at = next((s for s in sizes if s["instances"] == 100_000), None)
    if at:
        out["lookup_bytes_share_1e5"] = at["after"]["bytes_median"] / at["after"]["bytes"]
    return out


def markdown(results: dict[str, Any], fmt: Callable[[Any], str], table: Callable[..., list[str]]) -> list[str]:
    """The report's section on the manifest: build rates beside ratarmount's, lookups by manifest size."""
    build = results.get("manifest_build") or {}
    lookups = (results.get("manifest_lookup") or {}).get("sizes") or []
    if not build and not lookups:
        return []
    lines = ["## Manifest build and lookups (issue 20)", ""]
    rows = []
    for key, label in (("with_headers", "build_manifest, header and pixel archives (headers parsed)"),
                       ("pixel_archives", "build_manifest, pixel archives alone (members never read)"),
                       ("ratarmount", "ratarmountcore SQLite index, same pixel archives, one process")):
        b = build.get(key) or {}
        rows.append([label, b.get("per_core_wall"), b.get("per_cpu_s"), b.get("skipped") or b.get("version") or ""])
    lines += table(["indexer", "members/s per core (marginal, wall)", "members per CPU-second (marginal)", "note"], rows)
    if lookups:
        lines.append("One UID's lookup (`manifest_members`, local files): bytes and files it reads, counted through a "
                     "wrapped filesystem, and its time; before and after build_manifest rewrote the generated manifest "
                     "in the lookup layout, and the same layout without file pruning (every bucket file in one dataset, "
                     "filtered on bucket and UID: only row-group statistics prune).")
        lines.append("")
        rows = []
        for s in lookups:
            a, b, st = s["after"], s["before"], s["stats_only"]
            rows.append([s["instances"], a["bytes"] / 1e6, a["files"], a["member_buckets"], a["bytes_median"] / 1e3,
                         a["bytes_max"] / 1e3, a["bytes_median"] / a["bytes"], a["wall_s_median"] * 1000,
                         st["bytes_median"] / 1e3, st["wall_s_median"] * 1000, b["bytes_median"] / 1e6,
                         b["wall_s_median"], s["rewrite_wall_s"]])
        lines += table(["instances", "manifest MB", "files", "member buckets", "lookup KB (median)", "KB (max)",
                        "share of manifest", "ms", "without file pruning KB", "ms", "earlier layout MB", "s",
                        "rewrite s"], rows)
    return lines
