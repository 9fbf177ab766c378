"""Turn the raw measurements into ratios, then write report.json, report.md and bench.png.

Every section is optional (``--skip-s3``, a failed step, the smoke test), so each derived figure is computed only
from what was measured, and the Markdown says "not measured" instead of inventing a number.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

from bench import manifest as manifest_bench
from bench.notebook_memory import render_notebook_memory

MB = 1000 ** 2

# Issue 5's targets: (key in derived["ratios"], label, comparison, threshold).
TARGETS = [
    ("reassembly_vs_tar_x_per_core", "reassembly MB/s per core / tar -x MB/s (marginal, wall)", ">=", 0.5),
    ("reassembly_vs_tar_x_cpu", "reassembly MB per CPU-second / tar -x MB per CPU-second (marginal)", ">=", 0.5),
    ("reassembly_vs_tar_x_streams_per_core", "reassembly MB/s per core / tar -x MB/s per core, as many tar streams "
                                             "as cores (marginal, wall)", ">=", 0.5),
    ("reassembly_vs_tar_x_streams_cpu", "reassembly MB per CPU-second / tar -x MB per CPU-second, as many tar "
                                        "streams as cores (marginal)", ">=", 0.5),
    ("amplification_full", "read amplification, full selection", "<=", 1.05),
    ("amplification_selection", "read amplification, 10% selection", "<=", 1.5),
    ("reassembly_gets_per_planned_read_full", "reassembly GETs / planned archive reads, full", "<=", 1.0),
    ("reassembly_gets_per_planned_read_selection", "reassembly GETs / planned archive reads, 10%", "<=", 1.0),
    ("puts_per_written_full", "PUTs per written instance, full", "==", 1.0),
    ("puts_per_written_selection", "PUTs per written instance, 10%", "==", 1.0),
    ("lookup_manifest_max_gets", "archive GETs per single-UID lookup with the manifest (max)", "<=", 2),
    ("notebook_peak_ratio", "notebook kernel peak memory, generated 10^5 instances / the pipeline's outputs (issue 20)",
     "<=", 2.0),
    *manifest_bench.TARGETS,
]


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def _marginal(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(seconds per instance, fixed seconds) by least squares over (instances, wall) points; None if degenerate."""
    if len(points) < 2 or len({n for n, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return slope, my - slope * mx


def _pairing_ratios(sizes: list[dict[str, Any]], bpi: float | None, cores: int, tar_mb_s: float | None
                    ) -> dict[str, float] | None:
    """Reassembly per core / tar -x (wall) from each pair of runs at the two smallest sizes: min, median, max."""
    runs = sorted(((s["instances"], [x["reassemble"]["wall_s"] for x in s.get("repeats", []) if _get(x, "reassemble", "wall_s")])
                   for s in sizes), key=lambda t: t[0])
    if len(runs) < 2 or not bpi or not tar_mb_s or not runs[0][1] or not runs[1][1]:
        return None
    (n0, walls0), (n1, walls1) = runs[0], runs[1]
    slopes = [(b - a) / (n1 - n0) for a in walls0 for b in walls1]
    ratios = [bpi / sl / MB / cores / tar_mb_s if sl > 0 else 0.0 for sl in slopes]
    return {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios), "pairs": len(ratios)}


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Throughputs, marginal costs, ratios and target verdicts from the raw results.

    Two clocks: wall time (what the issue's targets name) and CPU time of the whole process tree (JVM and
    Python workers), which stays meaningful when other work shares the machine.
    """
    cores = _get(results, "parameters", "cores") or 1
    out: dict[str, Any] = {"throughput": [], "marginal": {}, "marginal_cpu": {}, "ratios": {}, "targets": []}
    tar_mb_s = _get(results, "tar_x", "mb_s")
    tar_mb_cpu = _get(results, "tar_x", "mb_per_cpu_s")
    naive_ips = _get(results, "naive", "instances_per_s")
    sizes = _get(results, "pipeline", "sizes") or []
    for s in sizes:
        n, b = s["instances"], s["archive_bytes"]
        row: dict[str, Any] = {"instances": n, "archive_bytes": b}
        wall_total = cpu_total = 0.0
        for stage in ("build_manifest", "reassemble"):
            wall, cpu = _get(s, stage, "wall_s"), _get(s, stage, "cpu_s")
            if wall:
                wall_total += wall
                cpu_total += cpu or 0.0
                row[stage] = {"wall_s": wall, "cpu_s": cpu, "instances_per_s": n / wall, "mb_s": b / wall / MB,
                              "mb_s_per_core": b / wall / MB / cores, "mb_per_cpu_s": _div(b / MB, cpu)}
        if wall_total:
            row["end_to_end"] = {"wall_s": wall_total, "cpu_s": cpu_total, "instances_per_s": n / wall_total,
                                 "mb_s": b / wall_total / MB, "mb_s_per_core": b / wall_total / MB / cores,
                                 "mb_per_cpu_s": _div(b / MB, cpu_total)}
        out["throughput"].append(row)
    largest = max(out["throughput"], key=lambda r: r["instances"]) if out["throughput"] else None
    bpi = largest["archive_bytes"] / largest["instances"] if largest else None
    for clock, key in (("wall_s", "marginal"), ("cpu_s", "marginal_cpu")):
        slopes = {}
        for stage in ("build_manifest", "reassemble"):
            fit = _marginal([(s["instances"], s[stage][clock]) for s in sizes if _get(s, stage, clock)])
            if fit is None or not bpi:
                continue
            slope, fixed = fit
            if slope <= 0:  # the larger run was faster: noise from other work on the machine swamped the difference
                out[key][stage] = {"ms_per_instance": 1000 * slope, "fixed_s": fixed, "mb_s_per_core": None,
                                   "inconclusive": True}
                continue
            slopes[stage] = slope
            # Per core: wall seconds on ``cores`` cores; CPU seconds are already core-seconds.
            per_core = bpi / slope / MB / (cores if clock == "wall_s" else 1)
            out[key][stage] = {"ms_per_instance": 1000 * slope, "fixed_s": fixed, "mb_s_per_core": per_core}
        if len(slopes) == 2 and bpi:
            both = slopes["build_manifest"] + slopes["reassemble"]
            out[key]["end_to_end"] = {"ms_per_instance": 1000 * both,
                                      "mb_s_per_core": bpi / both / MB / (cores if clock == "wall_s" else 1)}
    # The per-instance work runs in the Python workers; the JVM's share is mostly fixed (planning, Parquet, shuffles).
    out["marginal_python_cpu"] = {}
    for stage in ("build_manifest", "reassemble"):
        fit = _marginal([(s["instances"], s[stage]["cpu_s_by_role"].get("python_worker", 0.0)) for s in sizes
                         if _get(s, stage, "cpu_s_by_role")])
        if fit and bpi:
            slope, fixed = fit
            out["marginal_python_cpu"][stage] = {"ms_per_instance": 1000 * slope, "fixed_s": fixed,
                                                 "mb_s_per_core": bpi / slope / MB if slope > 0 else None,
                                                 "inconclusive": slope <= 0}
    r = out["ratios"]
    if largest and "reassemble" in largest:
        r["reassembly_vs_tar_x_per_core_wall"] = _div(largest["reassemble"]["mb_s_per_core"], tar_mb_s)
        r["reassembly_vs_tar_x_cpu_wall"] = _div(largest["reassemble"]["mb_per_cpu_s"], tar_mb_cpu)
    r["reassembly_vs_tar_x_per_core"] = _div(_get(out, "marginal", "reassemble", "mb_s_per_core"), tar_mb_s)
    r["reassembly_vs_tar_x_cpu"] = _div(_get(out, "marginal_cpu", "reassemble", "mb_s_per_core"), tar_mb_cpu)
    # Against tar with as many streams as the pipeline has cores: both then share the machine the same way.
    r["reassembly_vs_tar_x_streams_per_core"] = _div(_get(out, "marginal", "reassemble", "mb_s_per_core"),
                                                     _get(results, "tar_x_streams", "mb_s_per_core"))
    r["reassembly_vs_tar_x_streams_cpu"] = _div(_get(out, "marginal_cpu", "reassemble", "mb_s_per_core"),
                                                _get(results, "tar_x_streams", "mb_per_cpu_s"))
    r["tar_x_streams_vs_one_per_core"] = _div(_get(results, "tar_x_streams", "mb_s_per_core"), tar_mb_s)
    # The executor's code without Spark against tar -x of the same pixel archives, in as many processes as cores:
    # a stricter baseline than the target's (no header archives), so not comparable with the pipeline's ratios.
    r["hot_path_streams_vs_tar_x_per_core"] = _get(results, "hot_path_streams", "ratio_per_core")
    r["hot_path_streams_vs_tar_x_cpu"] = _get(results, "hot_path_streams", "ratio_cpu")
    # How much the fitted ratio rests on which runs were fastest: the same ratio from every pairing of one run
    # at the smaller size with one at the larger.
    pairs = _pairing_ratios(sizes, bpi, cores, tar_mb_s)
    if pairs:
        r["reassembly_vs_tar_x_per_core_pairings"] = pairs
    if largest and "end_to_end" in largest:
        r["pipeline_vs_naive"] = _div(largest["end_to_end"]["instances_per_s"], naive_ips)
        r["pipeline_vs_naive_per_core"] = _div(largest["end_to_end"]["instances_per_s"] / cores, naive_ips)
    r["naive_vs_tar_x"] = _div(_get(results, "naive", "mb_s"), tar_mb_s)
    # The figure the cost model reads: MB of archives processed per core-second by manifest plus reassembly, at
    # the marginal rate in CPU time (steady on a shared machine), else in wall time, else the wall clock rate.
    for basis, value in (("marginal CPU time, manifest + reassemble", _get(out, "marginal_cpu", "end_to_end", "mb_s_per_core")),
                         ("marginal wall time, manifest + reassemble", _get(out, "marginal", "end_to_end", "mb_s_per_core")),
                         ("wall clock at the largest size, manifest + reassemble",
                          _get(largest or {}, "end_to_end", "mb_s_per_core"))):
        if value:
            out["reassembly"] = {"per_core_mb_s": value, "basis": basis}
            break
    else:
        out["reassembly"] = {"per_core_mb_s": None, "basis": "not measured"}
    for key in ("full", "selection"):
        run = _get(results, "s3", key)
        if not run:
            continue
        r[f"amplification_{key}"] = run.get("amplification")
        r[f"reassembly_gets_per_planned_read_{key}"] = _div(run["reassemble"]["archive_gets"], run["planned_reads"])
        r[f"puts_per_written_{key}"] = run["reassemble"].get("puts_per_written")
    lookups = _get(results, "lookup", "by_archives") or []
    if lookups:
        r["lookup_manifest_max_gets"] = max(x["manifest"]["archive_gets"] for x in lookups)
    r["notebook_peak_ratio"] = _get(results, "notebook_memory", "ratio")
    r.update(manifest_bench.ratios(results))
    for key, label, op, threshold in TARGETS:
        value = r.get(key)
        met = None if value is None else {">=": value >= threshold, "<=": value <= threshold,
                                          "==": abs(value - threshold) < 1e-9}[op]
        out["targets"].append({"key": key, "label": label, "value": value, "target": f"{op} {threshold}", "met": met})
    return out


# ---------------------------------------------------------------- writing


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** -digits:
            return f"{v:.2e}"
        return f"{v:,.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c if isinstance(c, str) else _f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _reported_gb(machine: dict[str, Any]) -> tuple[float, float] | None:
    """GB of free memory the kernel reported to the host during the run and in all, if it reports at all."""
    start, end = machine.get("free_page_reporting") or {}, machine.get("free_page_reporting_end") or {}
    if "reported_kib" not in start or "reported_kib" not in end:
        return None
    return (end["reported_kib"] - start["reported_kib"]) / 1024 ** 2, end["reported_kib"] / 1024 ** 2


def render_markdown(results: dict[str, Any]) -> str:
    """The human report: targets first, then each measurement."""
    d = results["derived"]
    p = results.get("parameters", {})
    m = results.get("machine", {})
    t = _get(results, "delivery", "totals") or {}
    lines = ["# Benchmark report", ""]
    lines.append(f"Run {results.get('started_at', '?')} on {m.get('cpu', '?')} ({m.get('cpus', '?')} CPUs, "
                 f"{_f(m.get('memory_gb'), 1)} GB RAM), Spark `local[{p.get('cores', '?')}]`, "
                 f"Python {_get(results, 'versions', 'python')}, pyspark {_get(results, 'versions', 'pyspark')}, "
                 f"pydicom {_get(results, 'versions', 'pydicom')}. Mode: {p.get('mode', '?')}.")
    if p.get("note"):
        lines.append(f"\n**Note:** {p['note']}")
    reported = _reported_gb(m)
    if reported is not None:
        during, total = reported
        lines.append(f"\n**Free page reporting:** this VM hands freed memory back to its host ({total:.2f} GB since it "
                     f"started, {during:.2f} GB during this run). Writes into memory the host took back pay a host fault per "
                     f"page, whenever it was handed back, so tar -x and the pipeline both slow down by however much of it "
                     f"they touch (bench/README.md, \"Why it is not steady\").")
    lines += ["", "## Delivery", ""]
    if t:
        lines.append(f"{_f(t.get('instances'))} instances in {_f(t.get('text_archives'))} header archives and "
                     f"{_f(t.get('image_archives'))} pixel archives ({_f(t.get('archive_bytes', 0) / MB, 1)} MB); "
                     f"headers {_f(t.get('header_size_min'))}-{_f(t.get('header_size_max'))} bytes "
                     f"(median {_f(t.get('header_size_median'))}); {_f(t.get('j2k_instances'))} J2K lossless, the rest "
                     f"native 512x512x16; modalities {t.get('modalities')}.")
    lines += ["", "## Targets (issue 5)", ""]
    lines += _table(["figure", "measured", "target", "met"],
                    [[x["label"], x["value"], x["target"], "not measured" if x["met"] is None else ("yes" if x["met"] else "**no**")]
                     for x in d["targets"]])
    r = d["ratios"]
    lines += ["## Ratios", ""]
    lines += _table(["ratio", "value", "meaning"], [
        ["pipeline / tar -x, per core (marginal, wall)", r.get("reassembly_vs_tar_x_per_core"),
         "reassemble's steady-state MB/s per core over tar -x's MB/s (one process)"],
        ["pipeline / tar -x, per CPU-second (marginal)", r.get("reassembly_vs_tar_x_cpu"),
         "the same in CPU time: MB per CPU-second of the Spark process tree over tar's"],
        [f"pipeline / tar -x in {p.get('cores')} streams, per core (marginal, wall)",
         r.get("reassembly_vs_tar_x_streams_per_core"),
         "the same over tar -x's MB/s per core when as many tar processes as the pipeline's cores run side by side"],
        [f"pipeline / tar -x in {p.get('cores')} streams, per CPU-second (marginal)", r.get("reassembly_vs_tar_x_streams_cpu"),
         "the same in CPU time"],
        [f"tar -x in {p.get('cores')} streams / tar -x in one, per core", r.get("tar_x_streams_vs_one_per_core"),
         "what a core of this machine delivers when every core copies, against one copying alone"],
        [f"hot path in {p.get('cores')} processes, no Spark / tar -x in as many streams, per core (wall)",
         r.get("hot_path_streams_vs_tar_x_per_core"),
         "the executor's partition function outside Spark against tar -x of the same pixel archives, alternating. "
         "A stricter baseline than the target's: without the header archives' many small files, tar -x moves more "
         "MB per second"],
        [f"hot path in {p.get('cores')} processes, no Spark / tar -x in as many streams, per CPU-second",
         r.get("hot_path_streams_vs_tar_x_cpu"), "the same in CPU time"],
        ["pipeline / tar -x, per core, every pairing of runs (min / median / max)",
         "not measured" if not r.get("reassembly_vs_tar_x_per_core_pairings") else " / ".join(
             _f(r["reassembly_vs_tar_x_per_core_pairings"][k], 2) for k in ("min", "median", "max")),
         "the first ratio from each pair of one run at the smaller size and one at the larger, instead of the fastest "
         "of each: how far run-to-run noise moves it"],
        ["pipeline / tar -x, per core (wall, start-up included)", r.get("reassembly_vs_tar_x_per_core_wall"),
         "at the largest size"],
        ["pipeline / naive", r.get("pipeline_vs_naive"), f"instances/s, manifest + reassemble on {p.get('cores')} cores, "
                                                        f"over the naive baseline on one"],
        ["pipeline / naive, per core", r.get("pipeline_vs_naive_per_core"), "the same divided by the cores"],
        ["naive / tar -x", r.get("naive_vs_tar_x"), "the naive baseline's MB/s over tar -x's"],
        ["amplification, full", r.get("amplification_full"), "archive bytes read / bytes of the wanted members"],
        ["amplification, 10%", r.get("amplification_selection"), "the same for the 10% selection"],
    ])
    lines += ["## Baselines", ""]
    lines += _table(["baseline", "MB/s (wall)", "MB per CPU-second", "seconds", "basis"], [
        ["tar -x", _get(results, "tar_x", "mb_s"), _get(results, "tar_x", "mb_per_cpu_s"), _get(results, "tar_x", "seconds"),
         _get(results, "tar_x", "note") or ""],
        [f"tar -x, {_get(results, 'tar_x_streams', 'streams')} streams", _get(results, "tar_x_streams", "mb_s"),
         _get(results, "tar_x_streams", "mb_per_cpu_s"), _get(results, "tar_x_streams", "seconds"),
         _get(results, "tar_x_streams", "note") or ""],
        ["naive", _get(results, "naive", "mb_s"), _get(results, "naive", "mb_per_cpu_s"),
         _get(results, "naive", "extrapolated_total_s"), _get(results, "naive", "note") or ""],
    ])
    hs = results.get("hot_path_streams")
    if hs:
        parts = []
        for key, label in (("tar_x", "tar -x"), ("hot_path", "hot path")):
            h = hs[key]
            runs = ", ".join(f"{_f(w, 2)}/{_f(c, 2)}" for w, c in zip(h["runs_s"], h["cpu_runs_s"]))
            parts.append(f"{label} {_f(h['mb_s_per_core'], 0)} MB/s per core, {_f(h['ms_cpu_per_instance'], 2)} ms CPU "
                         f"per instance (runs: {runs} s wall/CPU)")
        lines += [f"Hot path without Spark ({hs['note']}): " + "; ".join(parts) + ".", ""]
    for key, label in (("tar_x", "tar -x runs"), ("tar_x_streams", "tar -x runs in streams")):
        runs = _get(results, key, "mb_s_runs")
        if runs:
            lines.append(f"{label}: " + ", ".join(f"{_f(x, 0)} MB/s" for x in runs) + ".")
            lines.append("")
    lines += ["## Pipeline throughput by size (Spark start-up included)", ""]
    reps = p.get("repeats") or 1
    if reps > 1:
        lines.append(f"Each size ran {reps} times in turn; the fastest run of each stage is shown and fitted. All runs "
                     "(wall / CPU s): " + "; ".join(
                         f"{s['instances']}: " + ", ".join(f"{_f(r['reassemble']['wall_s'], 1)}/{_f(r['reassemble']['cpu_s'], 1)}"
                                                            for r in s.get("repeats", []))
                         for s in _get(results, "pipeline", "sizes") or []) + " (reassemble).")
        lines.append("")
    rows = []
    for row in d["throughput"]:
        for stage in ("build_manifest", "reassemble", "end_to_end"):
            st = row.get(stage)
            if st:
                rows.append([row["instances"], stage, st["wall_s"], st["cpu_s"], st["instances_per_s"], st["mb_s"],
                             st["mb_s_per_core"], st["mb_per_cpu_s"]])
    lines += _table(["instances", "stage", "wall s", "CPU s", "instances/s", "MB/s", "MB/s per core", "MB per CPU-s"], rows)
    comp = _get(results, "pipeline", "with_computations", "reassemble")
    if comp:
        lines.append(f"With the default per-series computations (conf/local.json as shipped), reassemble of "
                     f"{_get(results, 'pipeline', 'with_computations', 'instances')} instances took {_f(comp['wall_s'])} s wall, "
                     f"{_f(comp.get('cpu_s'))} s CPU; the runs above switch them off.")
        lines.append("")
    lines += ["## Marginal cost per instance (fit over the sizes above)", ""]
    rows = []
    for clock, key in (("wall", "marginal"), ("CPU", "marginal_cpu"), ("CPU, Python workers only", "marginal_python_cpu")):
        for stage, v in d.get(key, {}).items():
            rows.append([stage + (" (inconclusive: negative slope)" if v.get("inconclusive") else ""), clock,
                         v.get("ms_per_instance"), v.get("fixed_s"), v.get("mb_s_per_core")])
    lines += _table(["stage", "clock", "ms per instance", "fixed s (start-up)", "MB/s per core"], rows)
    lines.append(f"`per_core_mb_s` for the cost model: {_f(_get(d, 'reassembly', 'per_core_mb_s'))} "
                 f"({_get(d, 'reassembly', 'basis')}).")
    lines += ["", "## S3 requests (moto on 127.0.0.1, counted at the server)", ""]
    rows = []
    for key in ("full", "selection"):
        run = _get(results, "s3", key)
        if not run:
            continue
        for stage in ("build_manifest", "reassemble"):
            s = run.get(stage)
            if not s:
                continue
            rows.append([f"{key} ({run.get('selected_instances')} instances)", stage, s["archive_gets"], s["ranged_gets"],
                         s["heads"], s["lists"], s["puts"], s["multipart"], s["archive_bytes_read"] / MB,
                         s["gets_per_instance"], s["puts_per_instance"], s["heads_per_instance"], s["wall_s"], s.get("cpu_s")])
    lines += _table(["run", "stage", "GET", "of which ranged", "HEAD", "LIST", "PUT", "multipart", "MB read",
                     "GET/inst", "PUT/inst", "HEAD/inst", "wall s", "CPU s"], rows)
    for key in ("full", "selection"):
        run = _get(results, "s3", key)
        if run:
            lines.append(f"- {key}: wanted {_f(run['wanted_bytes'] / MB, 1)} MB, read {_f(run['read_bytes'] / MB, 1)} MB "
                         f"(amplification {_f(run['amplification'], 3)}); reassembly planned {run['planned_reads']} "
                         f"archive reads and made {run['reassemble']['archive_gets']} GETs; written "
                         f"{run.get('written')} of {run.get('selected_instances')} selected.")
    wp = results.get("s3_write_profile")
    if wp:
        lines += ["", "## S3 writes per instance (client CPU, HEAD + PUT, profiled in process)", ""]
        lines.append(f"{wp['instances']} objects of {_f(wp['mean_object_bytes'] / MB, 2)} MB on average: "
                     f"{_f(wp['cpu_ms_per_instance'])} ms CPU and {_f(wp['wall_ms_per_instance'])} ms wall per instance "
                     f"in the client ({_f(wp['tcp_connects_per_instance'])} TCP connects per instance: moto closes them).")
        lines.append("")
        lines += _table(["step (cumulative, overlapping)", "share of client CPU", "ms CPU per instance"],
                        [[k, v["share"], v["cpu_ms_per_instance_unprofiled"]] for k, v in wp["steps"].items()])
    from bench.s3cpu import render_markdown as s3_client_lines

    lines += s3_client_lines(results.get("s3_client_cpu"))
    lines += ["", "## Single-UID lookup (CLI, archives on S3)", ""]
    lines += _table(["archives per role", "with manifest s", "GETs", "without s", "GETs", "LISTs"],
                    [[x["archives"], x["manifest"]["wall_s"], x["manifest"]["archive_gets"], x["scan"]["wall_s"],
                      x["scan"]["archive_gets"], x["scan"]["lists"]] for x in (_get(results, "lookup", "by_archives") or [])])
    lines += render_notebook_memory(results)
    lines += manifest_bench.markdown(results, _f, _table)
    lines += ["## Peak memory (RSS, sampled every 0.2 s)", ""]
    rows = []
    for name, mem in _memory_rows(results):
        rows.append([name, mem.get("jvm_peak_mb"), mem.get("python_worker_peak_mb"), mem.get("python_workers_peak_sum_mb"),
                     mem.get("python_worker_processes"), mem.get("executor_peak_mb"), mem.get("samples")])
    lines += _table(["run", "JVM MB", "largest Python worker MB", "all workers MB", "worker processes",
                     "executor (JVM + workers) MB", "samples"], rows)
    prof = results.get("profile")
    if prof:
        lines += ["## Hot path profile (one thread, in process)", ""]
        lines.append(f"{prof['instances']} instances in {_f(prof['wall_s'])} s wall, {_f(prof.get('cpu_s'))} s CPU: "
                     f"{_f(prof['ms_per_instance'])} ms per instance ({_f(prof.get('cpu_ms_per_instance'))} ms CPU), "
                     f"{_f(prof['per_core_mb_s_in_process'])} MB/s wall and {_f(prof.get('mb_per_cpu_s_in_process'))} MB per "
                     f"CPU-second on one core without Spark. Split (wall): "
                     + ", ".join(f"{k} {_f(v)} ms" for k, v in prof["split_ms_per_instance"].items()) + ".")
        lines.append("")
        lines += _table(["function (cumulative, cProfile)", "ms per instance", "share"],
                        [[k, v["ms_per_instance"], v["share"]] for k, v in prof["breakdown"].items()])
        lines.append("Full tree: `bench/results/profile.txt`.")
    return "\n".join(lines) + "\n"


def _memory_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for s in _get(results, "pipeline", "sizes") or []:
        for stage in ("build_manifest", "reassemble"):
            mem = _get(s, stage, "memory")
            if mem:
                rows.append((f"local {s['instances']} {stage}", mem))
    mem = _get(results, "pipeline", "with_computations", "reassemble", "memory")
    if mem:
        rows.append(("local reassemble with computations", mem))
    for key in ("full", "selection"):
        for stage in ("build_manifest", "reassemble"):
            mem = _get(results, "s3", key, stage, "memory")
            if mem:
                rows.append((f"S3 {key} {stage}", mem))
    return rows


def render_chart(results: dict[str, Any], path: str) -> None:
    """Throughput against size, the stage breakdown, and lookups against archive count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    d = results["derived"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    rows = d["throughput"]
    for stage, style in (("build_manifest", "o-"), ("reassemble", "s-"), ("end_to_end", "^-")):
        pts = [(r["instances"], r[stage]["mb_s_per_core"]) for r in rows if stage in r]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=f"{stage} (wall)")
    pts = [(r["instances"], r["reassemble"]["mb_per_cpu_s"]) for r in rows if _get(r, "reassemble", "mb_per_cpu_s")]
    if pts:
        ax.plot([x for x, _ in pts], [y for _, y in pts], "s--", color="C1", label="reassemble (per CPU-second)")
    steady = _get(d, "marginal", "reassemble", "mb_s_per_core")
    if steady:
        ax.axhline(steady, color="C1", ls=":", label="reassemble, marginal (wall)")
    if _get(results, "tar_x", "mb_s"):
        ax.axhline(results["tar_x"]["mb_s"], color="k", ls="--", label="tar -x (1 process, wall)")
    if _get(results, "tar_x", "mb_per_cpu_s"):
        ax.axhline(results["tar_x"]["mb_per_cpu_s"], color="k", ls=":", label="tar -x (per CPU-second)")
    if _get(results, "tar_x_streams", "mb_s_per_core"):
        ax.axhline(results["tar_x_streams"]["mb_s_per_core"], color="0.5", ls="-.",
                   label=f"tar -x ({results['tar_x_streams']['streams']} streams, wall, per core)")
    if _get(results, "naive", "mb_s"):
        ax.axhline(results["naive"]["mb_s"], color="r", ls="--", label="naive (1 process)")
    ax.set_yscale("log")
    ax.set_xlabel("instances")
    ax.set_ylabel("MB/s per core (archive bytes)")
    ax.set_title("Throughput against size")
    if ax.get_legend_handles_labels()[0]:  # a report with nothing measured yet has nothing to label
        ax.legend(fontsize=6, loc="best")
    ax = axes[1]
    runs: list[tuple[str, dict[str, Any]]] = []
    for r in _get(results, "pipeline", "sizes") or []:
        for stage in ("build_manifest", "reassemble"):
            if _get(r, stage, "cpu_s_by_role"):
                runs.append((f"{'manifest' if stage == 'build_manifest' else 'reassemble'}\n{r['instances']} local", r[stage]))
    for key in ("full", "selection"):
        job = _get(results, "s3", key, "reassemble")
        if job and job.get("cpu_s_by_role"):
            if key == "full":
                runs.append(("manifest\nS3", _get(results, "s3", key, "build_manifest")))
            runs.append((f"reassemble\nS3 {key}", job))
    if runs:
        xs = range(len(runs))
        bottom = [0.0] * len(runs)
        for role, color in (("jvm", "0.6"), ("python_driver", "C2"), ("python_worker", "C0"), ("other", "0.85")):
            vals = [float((job.get("cpu_s_by_role") or {}).get(role, 0.0)) for _, job in runs]
            ax.bar(xs, vals, bottom=bottom, color=color, label=f"CPU: {role.replace('_', ' ')}")
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.plot(xs, [job["wall_s"] for _, job in runs], "k_", markersize=18, mew=2, label="wall")
        ax.set_xticks(list(xs), [label for label, _ in runs], fontsize=7)
        ax.legend(fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("Stage breakdown: CPU by process, and wall")
    ax = axes[2]
    lk = _get(results, "lookup", "by_archives") or []
    if lk:
        xs = [x["archives"] for x in lk]
        ax.plot(xs, [x["manifest"]["wall_s"] for x in lk], "o-", label="with manifest")
        ax.plot(xs, [x["scan"]["wall_s"] for x in lk], "s-", label="scanning the archives")
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("archives per role")
    ax.set_ylabel("CLI wall seconds")
    ax.set_title("Single-UID lookup")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Derive the ratios, then write report.json, report.md and bench.png under ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    # derived.reassembly.per_core_mb_s is the one key named per_core_mb_s: lib/dicom_reassembly/estimate/prices.py reads it.
    results["derived"] = derive(results)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md"),
             "png": os.path.join(out_dir, "bench.png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=str)
    with open(paths["md"], "w") as f:
        f.write(render_markdown(results))
    render_chart(results, paths["png"])
    return paths
