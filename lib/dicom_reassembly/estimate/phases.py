"""The two phases of a run, indexing and reassembly: core-seconds, wall hours, request rates, S3 prefixes, and what
binds each (CPU, network or the latency of a ranged GET), with the benchmark's measured S3 client CPU added to the
local-disk throughput when the report has it.
"""

from __future__ import annotations

import math
from typing import Any

from .prices import MB

S3_PUT_PREFIX_RATE = 3500  # PUT/COPY/POST/DELETE per second per partitioned prefix (S3's documented floor)
S3_GET_PREFIX_RATE = 5500  # GET/HEAD per second per partitioned prefix


def s3_extra_cpu_s(figures: dict[str, float], *, puts: float, avg_object_mb: float, pixel_read_mb: float,
                   reads: float, headers: float) -> dict[str, float]:
    """Client CPU-seconds the S3 path adds to the local-disk throughput, per kind of work.

    A PUT costs a fixed part (a 1 KiB PUT) plus a part per MB (the slope to the measured object size), less what a
    local write of the same bytes costs (the local throughput already counts it). The reassembly's passes cost the
    per-MB difference of an S3 read over a local one, plus a ranged GET each. Header archives cost the per-header
    difference of indexing them on S3 over locally. Never negative.
    """
    f = figures
    put_mb = f["put_object_bytes"] / MB
    slope = max(0.0, (f["put_object_cpu_ms"] - f["put_cpu_ms"]) / put_mb) if put_mb > 0 else 0.0
    local_write_per_mb = f["write_local_cpu_ms_per_instance"] / (f["write_mean_object_bytes"] / MB)
    per_put = f["put_cpu_ms"] + max(0.0, slope - local_write_per_mb) * avg_object_mb
    read_per_mb = max(0.0, f["read_pass_cpu_ms_per_mb"] - f["read_pass_local_cpu_ms_per_mb"])
    header = max(0.0, f["index_header_cpu_ms_per_instance"] - f["index_header_local_cpu_ms_per_instance"])
    return {"puts": puts * per_put / 1000, "reads": (pixel_read_mb * read_per_mb + reads * f["ranged_get_cpu_ms"]) / 1000,
            "headers": headers * header / 1000, "per_put_ms": per_put}


def model_phases(*, header_mb: float, headers: float, index_gets: float, pixel_read_mb: float, output_mb: float,
                 puts: float, reassembly_gets: float, per_core_mb_s: float, net_mb_s_per_vcpu: float,
                 index_gets_per_task_s: float, s3: dict[str, float] | None, cluster_vcpus: float,
                 utilization: float) -> dict[str, dict[str, Any]]:
    """Core-seconds, wall hours, request rates and what binds, for the two phases of a run.

    Indexing: header archives streamed (at the local throughput, capped by the network, plus the S3 client's
    extra per header) and one ranged GET per pixel member, one at a time per task, so each costs the larger of
    the GET's latency (1 / ``index_gets_per_task_s``) and its measured client CPU. Reassembly: the pixel passes and
    one PUT per instance, CPU (local throughput plus the S3 client's extra) or network (reads and writes each
    within the vCPU's share, full duplex), whichever takes longer. Without S3 figures the extras are zero and this
    is the older model: MB / min(throughput, network) + index GETs / GET rate.
    """
    def capped(mb: float, cpu_s: float) -> tuple[float, str]:
        net_s = mb / net_mb_s_per_vcpu if net_mb_s_per_vcpu > 0 else 0.0
        return (net_s, "network") if net_s > cpu_s else (cpu_s, "CPU")

    avg_obj = output_mb / puts if puts else 0.0
    extra = s3_extra_cpu_s(s3, puts=puts, avg_object_mb=avg_obj, pixel_read_mb=pixel_read_mb, reads=reassembly_gets,
                           headers=headers) if s3 else {"puts": 0.0, "reads": 0.0, "headers": 0.0, "per_put_ms": 0.0}
    get_cpu_s = (s3["index_pixel_cpu_ms_per_instance"] / max(s3["index_pixel_gets_per_instance"], 1e-9) / 1000
                 if s3 else 0.0)
    per_get_s = max(1 / index_gets_per_task_s, get_cpu_s)
    head_s, head_bound = capped(header_mb, header_mb / per_core_mb_s + extra["headers"])
    idx_s = head_s + index_gets * per_get_s
    reas_cpu_s = pixel_read_mb / per_core_mb_s + extra["puts"] + extra["reads"]
    reas_s, reas_bound = capped(max(pixel_read_mb, output_mb), reas_cpu_s)
    rate = cluster_vcpus * utilization  # core-seconds per wall second

    def wall_h(core_s: float) -> float:
        return core_s / rate / 3600 if rate > 0 else 0.0

    idx_wall, reas_wall = wall_h(idx_s) * 3600, wall_h(reas_s) * 3600
    get_rate = index_gets / idx_wall if idx_wall > 0 else 0.0
    put_rate = puts / reas_wall if reas_wall > 0 else 0.0
    return {
        "indexing": {"core_seconds": idx_s, "wall_clock_hours": wall_h(idx_s), "ranged_gets": index_gets,
                     "get_per_s": get_rate, "input_prefixes_needed_at_5500_get_s": max(1, math.ceil(get_rate / S3_GET_PREFIX_RATE)),
                     "bound": ("latency of one ranged GET at a time per task" if 1 / index_gets_per_task_s >= get_cpu_s
                               else "client CPU per ranged GET"),
                     "header_archives_bound": head_bound, "client_cpu_ms_per_ranged_get": 1000 * get_cpu_s},
        "reassembly": {"core_seconds": reas_s, "wall_clock_hours": wall_h(reas_s), "puts": puts, "put_per_s": put_rate,
                       "get_per_s": reassembly_gets / reas_wall if reas_wall > 0 else 0.0,
                       "output_prefixes_needed_at_3500_put_s": max(1, math.ceil(put_rate / S3_PUT_PREFIX_RATE)),
                       "bound": reas_bound, "cpu_seconds": reas_cpu_s,
                       "cpu_mb_s_per_vcpu": pixel_read_mb / reas_cpu_s if reas_cpu_s > 0 else 0.0,
                       "s3_client_cpu_seconds": extra["puts"] + extra["reads"],
                       "client_cpu_ms_per_put": extra["per_put_ms"]},
    }


def phase_notes(phases: dict[str, dict[str, Any]], s3_found: tuple[dict[str, float], str] | None, net_share: float,
                instance_type: str) -> list[str]:
    """What binds each phase, in words."""
    idx, reas = phases["indexing"], phases["reassembly"]
    notes = []
    if reas["bound"] == "network":
        notes.append(f"reassembly is bound by the network: {net_share:.1f} MB/s per vCPU on {instance_type}, against "
                     f"{reas['cpu_mb_s_per_vcpu']:.0f} MB per CPU-second"
                     + (" on S3 (measured client CPU included)" if s3_found else " (local-disk throughput)"))
    else:
        notes.append(f"reassembly is bound by the CPU: {reas['cpu_mb_s_per_vcpu']:.0f} MB per CPU-second"
                     + (" on S3 (measured client CPU included)" if s3_found else "")
                     + (f", under the network's {net_share:.1f} MB/s per vCPU on {instance_type}" if net_share else ""))
    notes.append(f"indexing is bound by the {idx['bound']} ({idx['client_cpu_ms_per_ranged_get']:.1f} ms of client "
                 f"CPU per ranged GET{' measured' if s3_found else ', not measured'}): {idx['get_per_s']:,.0f} GET/s "
                 f"over the cluster, {idx['input_prefixes_needed_at_5500_get_s']} input prefixes at 5,500 GET/s each; "
                 f"the PUT phase needs {reas['put_per_s']:,.0f} PUT/s, "
                 f"{reas['output_prefixes_needed_at_3500_put_s']} output prefixes at 3,500")
    return notes
