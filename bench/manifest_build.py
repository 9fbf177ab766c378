"""The manifest build's rate alone (issue 20), at sizes large enough for a steady marginal figure.

    .venv/bin/python -m bench.manifest_build [--sizes 16000,64000] [--matrix 64] [--pixel-sizes 16000,64000]
        [--pixel-matrix 64] [--repeats 3] [--work DIR] [--out FILE]

``make bench`` measures the same three figures at its own sizes (1,000 and 2,000 instances by default), where the
difference between two runs is a few CPU-seconds and a loaded machine moves it by as much. Here: the benchmark's
deliveries at each size (64x64 images by default: the indexer never reads a pixel member, so small ones let the
counts grow past the noise on a small disk), build_manifest over header and pixel archives (headers parsed) and
over the pixel archives alone; ``--repeats`` times each in turn, the run with the least CPU counting; then
ratarmountcore's index of the same pixel archives in this process. Members per CPU-second of the whole process
tree (JVM and Python workers) and per wall second per core, marginal between the smallest and the largest size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from typing import Any

from bench import manifest as bm
from bench import measure as ms
from bench.delivery import DeliveryParams, build_pixel_pool, read_index, write_delivery


@functools.cache
def _pool(seed: int, matrix: int) -> dict[str, list[bytes]]:
    return build_pixel_pool(seed, 8, matrix)


def delivery(work: str, instances: int, seed: int, matrix: int = 512) -> tuple[str, dict[str, Any]]:
    """The benchmark's delivery of ``instances`` under ``work`` (generated once, reused when it is there)."""
    root = os.path.join(work, f"delivery-{instances}" + ("" if matrix == 512 else f"-m{matrix}"))
    try:
        index = read_index(root)
        if index["totals"]["instances"] == instances and index["params"]["matrix"] == matrix:
            return root, index
    except (OSError, ValueError, KeyError):
        pass
    return root, write_delivery(root, DeliveryParams(instances=instances, seed=seed, matrix=matrix), _pool(seed, matrix))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.manifest_build", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16000,64000", help="comma-separated instance counts (default 16000,64000)")
    p.add_argument("--matrix", type=int, default=64, help="image size of the --sizes deliveries (default 64: pixel "
                                                           "members are never read, and 64,000 instances fit in 1 GB)")
    p.add_argument("--pixel-sizes", default="16000,64000",
                   help="instance counts for the pixel archives alone (default 16000,64000)")
    p.add_argument("--pixel-matrix", type=int, default=64, help="image size of those deliveries (default 64)")
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
    pixel_sizes = sorted(int(s) for s in args.pixel_sizes.split(",") if s.strip())
    deliveries = [delivery(args.work, n, args.seed, args.matrix) for n in sizes]
    pixel_deliveries = [delivery(args.work, n, args.seed, args.pixel_matrix) for n in pixel_sizes]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = {"started": started, "sizes": sizes, "matrix": args.matrix, "pixel_sizes": pixel_sizes,
           "pixel_matrix": args.pixel_matrix, "cores": args.cores, "load_before": os.getloadavg(),
           "with_headers": bm.build_runs(deliveries, args.work, args.cores, args.repeats, True, print),
           "pixel_archives": bm.build_runs(pixel_deliveries, args.work, args.cores, args.repeats, False, print),
           "ratarmount": bm.ratarmount_rates(pixel_deliveries, args.work)}
    for key in ("with_headers", "pixel_archives", "ratarmount"):
        b = out[key]
        print(f"{key}: {b.get('per_cpu_s') or float('nan'):,.0f} members per CPU-second, "
              f"{b.get('per_core_wall') or float('nan'):,.0f} per wall second per core {b.get('skipped', '')}")
    for name in os.listdir(args.work):
        if name.startswith("manifest-"):
            shutil.rmtree(os.path.join(args.work, name), ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
