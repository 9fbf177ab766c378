"""Cost model for a full run: restore, retrieval, requests, EMR hours and destination storage.

Every price comes from a prices file (``conf/prices.json``) per region, each with the date and source it was
taken from; nothing here hard-codes a price. The workload comes from a manifest (summarised with pyarrow,
projecting a few columns) or from listing totals plus stated averages. EMR hours derive from the measured
throughput per core in ``bench/results/report.json`` when it exists, else from a default in the prices file
that says where it comes from.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from .prices import (
    GB,
    IT_MONITORED_MIN_BYTES,
    MB,
    MIN_BILLABLE_BYTES,
    STORAGE_CLASSES,
    Price,
    PriceBook,
    read_bench_throughput,
)
from .workload import Workload

log = logging.getLogger(__name__)
# Below this one-time total (in the prices' currency) a table is all rounding: the CLI adds the delivery's price at
# SCALE_PREVIEW_INSTANCES, the order of magnitude this project is built for.
MEANINGFUL_TOTAL = 1.0
SCALE_PREVIEW_INSTANCES = 10**9


@dataclass(frozen=True)
class Assumptions:
    """Everything the estimate assumes besides the workload and the prices."""

    tier: str = "Bulk"
    days: int = 7
    selected_fraction: float = 1.0
    pixel_archive_fraction: float | None = None  # pixel archives holding a selected instance; default = selected
    selective_restore: bool = False  # headers name their pixel archive (or it was indexed): restore only those
    destination_class: str = "STANDARD"
    instance_type: str = "m6i.4xlarge"
    primary_instance_type: str = "m6i.xlarge"
    worker_nodes: int = 50
    utilization: float = 0.7
    per_core_mb_s: float | None = None
    index_gets_per_core_s: float | None = None
    read_amplification: float = 1.05
    ranges_per_pixel_archive: float = 1.0
    index_gets_per_pixel_member: float = 1.0
    status_polls: int = 2
    heads_per_instance: float = 0.0  # conditional PUTs: a HEAD only where an object already exists (re-runs)
    header_binary_ratio: float = 0.5
    part10_overhead_bytes: int = 400
    kms_bucket_key: bool = True
    restore_via: str = "auto"  # api | batch | auto
    batch_threshold: int = 100_000
    spot_discount: float = 0.0


@dataclass(frozen=True)
class Line:
    """One cost line: quantity x unit price, with the price's provenance."""

    group: str
    item: str
    quantity: float
    unit: str
    unit_price: str
    cost: float
    price_key: str
    as_of: str
    source: str


@dataclass
class Estimate:
    """A full-run estimate: one-time lines, monthly storage per class, and derived figures."""

    region: str
    currency: str
    prices_file: str
    workload: dict[str, Any]
    assumptions: dict[str, Any]
    lines: list[Line]
    storage: list[dict[str, Any]]
    derived: dict[str, Any]
    one_time_total: float = 0.0
    monthly_total: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["lines"] = [asdict(line) for line in self.lines]
        return out


def _line(group: str, item: str, quantity: float, unit: str, price: Price, per: float = 1.0) -> Line:
    """quantity (in units of ``per``, e.g. 1000 requests) at ``price``."""
    cost = price.for_quantity(quantity / per)
    return Line(group, item, quantity, unit, price.unit_text() + (f" per {per:,.0f}" if per != 1 else ""), cost,
                price.key, price.as_of, price.source)


def _check(a: Assumptions) -> None:
    if a.tier not in ("Bulk", "Standard", "Expedited"):
        raise ConfigError("bad_tier", f"tier must be Bulk, Standard or Expedited, got {a.tier!r}")
    if a.days < 1:
        raise ConfigError("bad_days", "days must be >= 1")
    if not 0 < a.selected_fraction <= 1:
        raise ConfigError("bad_fraction", "the selected fraction must be in (0, 1]")
    if a.pixel_archive_fraction is not None and not 0 < a.pixel_archive_fraction <= 1:
        raise ConfigError("bad_fraction", "the pixel archive fraction must be in (0, 1]")
    if a.destination_class not in STORAGE_CLASSES:
        raise ConfigError("bad_storage_class", f"destination class must be one of {', '.join(STORAGE_CLASSES)}")
    if a.worker_nodes < 1 or not 0 < a.utilization <= 1:
        raise ConfigError("bad_cluster", "worker nodes must be >= 1 and utilization in (0, 1]")
    if a.restore_via not in ("api", "batch", "auto"):
        raise ConfigError("bad_restore_via", "restore_via must be api, batch or auto")


def estimate_cost(workload: Workload, prices: PriceBook, assumptions: Assumptions = Assumptions(),
                  bench_report: str | None = None) -> Estimate:
    """Estimate a full run. Totals are the sums of the lines; every line names its price and source."""
    a = assumptions
    _check(a)
    notes: list[str] = []
    sel = a.selected_fraction
    arch_frac = a.pixel_archive_fraction if a.pixel_archive_fraction is not None else sel
    restore_frac = arch_frac if a.selective_restore else 1.0
    if not a.selective_restore and arch_frac < 1:
        notes.append("pixel archives cannot be indexed before they are restored, and headers do not name them: "
                     "every pixel archive is restored (pass selective_restore when they are located)")

    # Throughput: measured, else the prices file default; capped by the instance's network share per vCPU.
    inst = prices.instance(a.instance_type)
    if a.per_core_mb_s:
        per_core, per_core_src = a.per_core_mb_s, "given"
    else:
        found = read_bench_throughput(bench_report) or prices.default("per_core_mb_s")
        if found is None:
            raise ConfigError("no_throughput", "no per_core_mb_s in the benchmark report nor in workload_defaults")
        per_core, per_core_src = found
    if a.index_gets_per_core_s:
        idx_rate, idx_src = a.index_gets_per_core_s, "given"
    else:
        found_idx = prices.default("index_gets_per_core_s")
        if found_idx is None:
            raise ConfigError("no_throughput", "no index_gets_per_core_s in workload_defaults", uri=prices.path)
        idx_rate, idx_src = found_idx
    vcpu = int(inst["vcpu"])
    net_share = float(inst.get("network_gbps_baseline", 0) or 0) * 1e9 / 8 / MB / vcpu
    effective = min(per_core, net_share) if net_share > 0 else per_core
    if effective < per_core:
        notes.append(f"throughput capped by the network: {net_share:.1f} MB/s per vCPU on {a.instance_type}")

    n_head_restore = workload.header_archives
    n_pix_restore = math.ceil(workload.pixel_archives * restore_frac)
    restore_bytes = workload.header_archive_bytes + workload.pixel_archive_bytes * restore_frac
    restored_gb = restore_bytes / GB
    n_restore = n_head_restore + n_pix_restore
    instances_sel = workload.instances * sel
    pixel_archives_read = workload.pixel_archives * arch_frac
    pixel_read_bytes = workload.pixel_member_bytes * sel * a.read_amplification
    index_gets = workload.instances * restore_frac * a.index_gets_per_pixel_member
    reassembly_gets = pixel_archives_read * a.ranges_per_pixel_archive
    puts = instances_sel

    lines: list[Line] = []
    rp = prices.price("restore_request_per_1000", a.tier)
    lines.append(_line("restore", "Restore requests, wave 1 (headers)", n_head_restore, "requests", rp, 1000))
    lines.append(_line("restore", "Restore requests, wave 2 (pixels)", n_pix_restore, "requests", rp, 1000))
    lines.append(_line("restore", f"Retrieval ({a.tier})", restored_gb, "GB", prices.price("retrieval_per_gb", a.tier)))
    std = prices.price("storage_gb_month", "STANDARD")
    temp = _line("restore", f"Restored copies for {a.days} days", restored_gb, "GB", std)
    lines.append(replace(temp, cost=temp.cost * a.days / 30, unit=f"GB x {a.days}/30 month"))
    via = a.restore_via if a.restore_via != "auto" else ("batch" if n_restore >= a.batch_threshold else "api")
    if via == "batch":
        lines.append(_line("restore", "Batch Operations jobs (one per wave)", 2, "jobs",
                           prices.price("batch_operations_per_job")))
        lines.append(_line("restore", "Batch Operations objects", n_restore, "objects",
                           prices.price("batch_operations_per_million_objects"), 1_000_000))
    get = prices.price("get_per_1000")
    lines.append(_line("requests", "GET: manifest, header archives streamed", workload.header_archives, "requests",
                       get, 1000))
    lines.append(_line("requests", "GET: manifest, pixel tar headers (ranged)", index_gets, "requests", get, 1000))
    lines.append(_line("requests", "GET: reassembly passes and coalesced ranges", reassembly_gets, "requests",
                       get, 1000))
    lines.append(_line("requests", "HEAD: restore status polls", n_restore * a.status_polls, "requests", get, 1000))
    lines.append(_line("requests", "HEAD: skip_existing checks (only where a conditional PUT was refused)", instances_sel * a.heads_per_instance, "requests",
                       get, 1000))
    lines.append(_line("requests", "LIST: archive listings (manifest, plan, status)",
                       3 * math.ceil(workload.archives / 1000), "requests", prices.price("list_per_1000"), 1000))
    lines.append(_line("requests", f"PUT: one per written instance ({a.destination_class})", puts, "requests",
                       prices.price("put_per_1000", a.destination_class), 1000))
    if not a.kms_bucket_key:
        lines.append(_line("requests", "KMS: a call per PUT and per GET of an SSE-KMS object (no S3 Bucket Key)",
                           puts + reassembly_gets + index_gets, "requests", prices.price("kms_per_10000_requests"),
                           10_000))

    processed_mb = (workload.header_archive_bytes + pixel_read_bytes) / MB
    core_seconds = processed_mb / effective + index_gets / idx_rate
    node_hours = core_seconds / 3600 / (vcpu * a.utilization)
    wall_hours = node_hours / a.worker_nodes
    ec2 = prices.price("instances", a.instance_type, "ec2_per_hour")
    emr = prices.price("instances", a.instance_type, "emr_per_hour")
    node_rate = Price(f"instances.{a.instance_type}", ec2.for_quantity(1) * (1 - a.spot_discount) + emr.for_quantity(1),
                      (), min(ec2.as_of, emr.as_of), f"{ec2.source}; {emr.source}")
    lines.append(_line("compute", f"EMR worker nodes ({a.instance_type}, EC2 + EMR)", node_hours,
                       "instance-hours", node_rate))
    pec2 = prices.price("instances", a.primary_instance_type, "ec2_per_hour")
    pemr = prices.price("instances", a.primary_instance_type, "emr_per_hour")
    primary_rate = Price(f"instances.{a.primary_instance_type}", pec2.for_quantity(1) + pemr.for_quantity(1), (),
                         min(pec2.as_of, pemr.as_of), f"{pec2.source}; {pemr.source}")
    lines.append(_line("compute", f"EMR primary node ({a.primary_instance_type})", wall_hours, "instance-hours",
                       primary_rate))

    out_bytes = sel * (workload.pixel_member_bytes + workload.header_member_bytes * a.header_binary_ratio
                       + workload.instances * a.part10_overhead_bytes)
    avg_obj = out_bytes / instances_sel if instances_sel else 0.0
    storage_rows = []
    for cls in STORAGE_CLASSES:
        billable = out_bytes
        if cls in MIN_BILLABLE_BYTES and avg_obj < MIN_BILLABLE_BYTES[cls]:
            billable = instances_sel * MIN_BILLABLE_BYTES[cls]
        sp = prices.price("storage_gb_month", cls)
        monthly = sp.for_quantity(billable / GB)
        monitoring = 0.0
        if cls == "INTELLIGENT_TIERING" and avg_obj >= IT_MONITORED_MIN_BYTES:
            monitoring = prices.price("intelligent_tiering_monitoring_per_1000_objects_month").for_quantity(
                instances_sel / 1000)
        put_cost = prices.price("put_per_1000", cls).for_quantity(puts / 1000)
        storage_rows.append({"storage_class": cls, "gb": billable / GB, "storage_per_month": monthly,
                             "monitoring_per_month": monitoring, "monthly_total": monthly + monitoring,
                             "put_cost_one_time": put_cost, "price": sp.unit_text(), "as_of": sp.as_of,
                             "source": sp.source})
    monthly_total = next(r["monthly_total"] for r in storage_rows if r["storage_class"] == a.destination_class)
    peak_puts = puts / (wall_hours * 3600) if wall_hours > 0 else 0.0
    derived = {
        "per_core_mb_s": per_core, "per_core_mb_s_source": per_core_src, "effective_mb_s_per_vcpu": effective,
        "index_gets_per_core_s": idx_rate, "index_gets_per_core_s_source": idx_src,
        "restore_requests": n_restore, "restore_via": via, "restored_gb": restored_gb,
        "selected_instances": instances_sel, "output_gb": out_bytes / GB, "avg_output_object_bytes": avg_obj,
        "processed_mb": processed_mb, "core_seconds": core_seconds, "node_hours": node_hours,
        "wall_clock_hours": wall_hours, "cluster_vcpus": a.worker_nodes * vcpu,
        "mean_put_per_s": peak_puts, "output_prefixes_needed_at_3500_put_s": max(1, math.ceil(peak_puts / 3500)),
    }
    one_time = sum(line.cost for line in lines)
    return Estimate(prices.region, prices.currency, prices.path, asdict(workload), asdict(a), lines, storage_rows,
                    derived, one_time, monthly_total, notes)


def _qty(q: float) -> str:
    if q >= 1e9:
        return f"{q / 1e9:,.2f} billion"
    if q >= 1e6:
        return f"{q / 1e6:,.2f} million"
    if q >= 100 or q == int(q):
        return f"{q:,.0f}"
    return f"{q:,.2f}" if q >= 1 else f"{q:.2g}"


def _money(amount: float) -> str:
    """Cents, but never a 0.00 for something that costs a little."""
    return "< 0.01" if 0 < amount < 0.005 else f"{amount:,.2f}"


def _rate(value: float) -> str:
    """A throughput to the precision it is known: 98.9885 -> 99, 4.87 -> 4.9."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _hours(hours: float) -> str:
    """Hours as "about 31 h", "about 2.5 h" or "under 0.1 h"."""
    if hours < 0.1:
        return "under 0.1 h"
    return f"about {hours:,.0f} h" if hours >= 10 else f"about {hours:.1f} h"


def format_cost_table(est: Estimate, at_scale: Estimate | None = None) -> str:
    """The estimate as a Markdown table (one-time lines, then monthly storage per class).

    ``at_scale``, the same delivery priced at more instances, is summed up in a note: a small delivery's table
    is all rounding.
    """
    cur = est.currency
    rows = [f"| Item | Quantity | Unit price | Cost ({cur}) |", "|---|---:|---:|---:|"]
    for line in est.lines:
        rows.append(f"| {line.item} | {_qty(line.quantity)} {line.unit} | {line.unit_price} | {_money(line.cost)} |")
    rows.append(f"| **One-time total** | | | **{_money(est.one_time_total)}** |")
    rows.append("")
    rows.append(f"| Destination storage class | GB | Per month ({cur}) | PUTs, one-time ({cur}) |")
    rows.append("|---|---:|---:|---:|")
    for r in est.storage:
        mark = " (chosen)" if r["storage_class"] == est.assumptions["destination_class"] else ""
        rows.append(f"| {r['storage_class']}{mark} | {_qty(r['gb'])} | {_money(r['monthly_total'])} | "
                    f"{_money(r['put_cost_one_time'])} |")
    rows.append("")
    d = est.derived
    rows.append(f"Region {est.region}, prices from {est.prices_file}. Throughput {_rate(d['per_core_mb_s'])} MB/s per "
                f"core ({d['per_core_mb_s_source']}); {_hours(d['node_hours'])} of worker nodes, "
                f"{_hours(d['wall_clock_hours'])} on {est.assumptions['worker_nodes']} worker nodes.")
    rows.extend(f"Note: {n}" for n in est.notes)
    if at_scale is not None:
        n = int(at_scale.workload["instances"])
        rows.append(f"Note: {_qty(est.workload['instances'])} instances are too few to price meaningfully (one-time "
                    f"total {cur} {est.one_time_total:.2g}). The same delivery at {_qty(n)} instances would cost "
                    f"{cur} {_money(at_scale.one_time_total)} once and {cur} {_money(at_scale.monthly_total)} per "
                    f"month in {at_scale.assumptions['destination_class']}, "
                    f"{_hours(at_scale.derived['wall_clock_hours'])} on {at_scale.assumptions['worker_nodes']} "
                    f"worker nodes; --instances N prices it at any size.")
    return "\n".join(rows)
