"""The manifest build's rate alone (issue 20), at sizes large enough for a steady marginal figure.

    .venv/bin/python -m bench.manifest_build [--sizes 4000,16000] [--repeats 3] [--work DIR] [--out FILE]

``make bench`` measures the same three figures at its own sizes (1,000 and 2,000 instances by default), where the
difference between two runs is a few CPU-seconds and a loaded machine moves it by as much. Here: the benchmark's
deliveries at each size, build_manifest over header and pixel archives (headers parsed) and over the pixel
archives alone, ``--repeats`` times each in turn, the run with the least CPU counting; then ratarmountcore's index
of the same pixel archives in this process. Members per CPU-second of the whole process tree (JVM and Python
workers) and per wall second per core, marginal between the smallest and the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

from bench import manifest as bm
from bench import measure as ms
from bench.delivery import DeliveryParams, build_pixel_pool, read_index, write_delivery


def delivery(work: str, instances: int, seed: int, pool: dict[str, list[bytes]]) -> tuple[str, dict[str, Any]]:
    """The benchmark's delivery of ``instances`` under ``work`` (generated once, reused when it is there)."""
    root = os.path.join(work, f"delivery-{instances}")
    try:
        index = read_index(root)
        if index["totals"]["instances"] == instances:
            return root, index
    except (OSError, ValueError, KeyError):
        pass
    return root, write_delivery(root, DeliveryParams(instances=instances, seed=seed), pool)


def build_runs(deliveries: list[tuple[str, dict[str, Any]]], work: str, cores: int, repeats: int,
               with_headers: bool) -> dict[str, Any]:
    """build_manifest at each size, ``repeats`` times in turn (the run with the least CPU counts): members per
    CPU-second and per wall second per core, marginal between the sizes."""
    empty = os.path.join(work, "empty-text")
    os.makedirs(empty, exist_ok=True)
    env = ms.base_env()
    best: dict[int, dict[str, Any]] = {}
    for rep in range(repeats):
        for root, index in deliveries:
            n = index["totals"]["instances"]
            members = 2 * n if with_headers else n
            manifest = os.path.join(work, "manifest")
            shutil.rmtree(manifest, ignore_errors=True)
            roles = ("text", "images") if with_headers else ("images",)
            ms.prepare_timed_run([os.path.join(root, r, a["name"]) for r in roles for a in index["archives"][r]])
            text = os.path.join(root, "text") if with_headers else empty
            r = ms.run_spark_job("build_manifest.py", ["--text", text, "--images", os.path.join(root, "images"),
                                                       "--manifest", manifest],
                                 cores=cores, env=env, log_dir=os.path.join(work, "logs"), name=f"build-{n}")
            print(f"  {'headers+pixels' if with_headers else 'pixels alone'} {n}: {r['wall_s']:.1f} s wall, "
                  f"{r['cpu_s']:.1f} CPU-s (run {rep + 1})", flush=True)
            if n not in best or r["cpu_s"] < best[n]["cpu_s"]:
                best[n] = {"members": members, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                           "cpu_s_by_role": r["cpu_s_by_role"]}
    points = sorted(best.values(), key=lambda p: p["members"])
    wall = bm._slope([(p["members"], p["wall_s"]) for p in points])
    cpu = bm._slope([(p["members"], p["cpu_s"]) for p in points])
    return {"runs": points, "per_core_wall": None if wall is None else 1 / wall / cores,
            "per_cpu_s": None if cpu is None else 1 / cpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.manifest_build", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4000,16000", help="comma-separated instance counts (default 4000,16000)")
    p.add_argument("--repeats", type=int, default=3, help="runs per size and kind; the least CPU counts")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--work", default=os.path.join(ms.ROOT, "bench", "results", "tmp-manifest-build"))
    p.add_argument("--out", help="write the figures as JSON here too")
    p.add_argument("--seed", type=int, default=20241121)
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    if len(sizes) < 2:
        p.error("--sizes needs two sizes at least")
    os.makedirs(args.work, exist_ok=True)
    pool = build_pixel_pool(args.seed, 8, 512)
    deliveries = [delivery(args.work, n, args.seed, pool) for n in sizes]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = {"started": started, "sizes": sizes, "cores": args.cores, "load_before": os.getloadavg(),
           "with_headers": build_runs(deliveries, args.work, args.cores, args.repeats, True),
           "pixel_archives": build_runs(deliveries, args.work, args.cores, args.repeats, False),
           "ratarmount": bm.ratarmount_rates(deliveries, args.work)}
    for key in ("with_headers", "pixel_archives", "ratarmount"):
        b = out[key]
        print(f"{key}: {b.get('per_cpu_s') or float('nan'):,.0f} members per CPU-second, "
              f"{b.get('per_core_wall') or float('nan'):,.0f} per wall second per core {b.get('skipped', '')}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
