"""Cost model for a full run: restore, retrieval, requests, EMR hours and destination storage.

Every price comes from a prices file (``conf/prices.json``) per region, each with the date and source it was
taken from; nothing here hard-codes a price. The workload comes from a manifest (summarised with pyarrow,
projecting a few columns) or from listing totals plus stated averages. EMR hours derive from the measured
throughput per core in ``bench/results/report.json`` when it exists, else from a default in the prices file
that says where it comes from.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import errors
from .errors import ConfigError, ReassemblyError
from .io import arrow_io, listing, reads, uris, writes

log = logging.getLogger(__name__)

GB = 1024 ** 3
MB = 1000 ** 2  # throughput figures are MB/s (10^6 bytes), as the benchmark reports them
STORAGE_CLASSES = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "GLACIER_IR")
MIN_BILLABLE_BYTES = {"STANDARD_IA": 128 * 1024, "GLACIER_IR": 128 * 1024}  # smaller objects are billed as 128 KB
IT_MONITORED_MIN_BYTES = 128 * 1024  # Intelligent-Tiering monitors (and charges for) objects from 128 KB
TAR_OVERHEAD_PER_MEMBER = 768  # a 512-byte header block plus, on average, half a block of padding
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PRICES = "conf/prices.json"
DEFAULT_BENCH_REPORT = "bench/results/report.json"
# Below this one-time total (in the prices' currency) a table is all rounding: the CLI adds the delivery's price at
# SCALE_PREVIEW_INSTANCES, the order of magnitude this project is built for.
MEANINGFUL_TOTAL = 1.0
SCALE_PREVIEW_INSTANCES = 10**9


# ------------------------------------------------------------------------------------------------ prices


@dataclass(frozen=True)
class Price:
    """One price with its provenance: a flat ``value`` or volume ``tiers`` [(up_to_gb | None, price)]."""

    key: str
    value: float | None
    tiers: tuple[tuple[float | None, float], ...]
    as_of: str
    source: str

    def for_quantity(self, quantity: float) -> float:
        """Cost of ``quantity`` units (tiers: GB in one month, each band at its price)."""
        if not self.tiers:
            return quantity * float(self.value or 0.0)
        cost, floor = 0.0, 0.0
        for upto, price in self.tiers:
            top = quantity if upto is None else min(quantity, upto)
            if top > floor:
                cost += (top - floor) * price
            if upto is None or quantity <= upto:
                break
            floor = upto
        return cost

    def unit_text(self) -> str:
        """The price as shown in a table."""
        if not self.tiers:
            return f"{self.value:g}"
        return " / ".join(f"{p:g}" for _, p in self.tiers) + " (tiered)"


class PriceBook:
    """The prices of one region, read from a prices file."""

    def __init__(self, data: dict[str, Any], region: str, path: str) -> None:
        regions = data.get("regions")
        if not isinstance(regions, dict):
            raise ConfigError("prices_bad_file", "no 'regions' object", uri=path)
        if region not in regions:
            raise ConfigError("price_region_missing", f"no prices for region {region!r}; the file has "
                                                      f"{', '.join(sorted(regions)) or 'none'}", uri=path)
        self.region = region
        self.path = path
        self.currency = str(data.get("currency", "USD"))
        self.data = regions[region]
        self.defaults = data.get("workload_defaults", {})

    def price(self, *path: str) -> Price:
        """The price at ``path`` (e.g. ``("put_per_1000", "STANDARD")``); a clear error when absent."""
        node: Any = self.data
        for p in path:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError("price_missing", f"no price {'.'.join(path)} for region {self.region}", uri=self.path)
            node = node[p]
        return _to_price(".".join(path), node, self.path)

    def instance(self, instance_type: str) -> dict[str, Any]:
        """The instance's vCPU, network and prices."""
        inst = self.data.get("instances", {}).get(instance_type)
        if not isinstance(inst, dict):
            known = ", ".join(sorted(self.data.get("instances", {}))) or "none"
            raise ConfigError("price_missing", f"no instance {instance_type!r} in region {self.region} (known: {known})",
                              uri=self.path)
        return inst

    def default(self, name: str) -> tuple[float, str] | None:
        """A workload default and its provenance, if the file gives one."""
        d = self.defaults.get(name)
        if isinstance(d, dict) and isinstance(d.get("value"), (int, float)):
            return float(d["value"]), f"{self.path}: workload_defaults.{name} ({d.get('source', 'no source')})"
        return None


def _to_price(key: str, node: Any, path: str) -> Price:
    if not isinstance(node, dict) or ("value" not in node and "tiers" not in node):
        raise ConfigError("price_bad_entry", f"{key} must be an object with 'value' or 'tiers'", uri=path)
    if not node.get("as_of") or not node.get("source"):
        raise ConfigError("price_no_provenance", f"{key} must say 'as_of' and 'source'", uri=path)
    tiers: tuple[tuple[float | None, float], ...] = ()
    if "tiers" in node:
        try:
            tiers = tuple((None if t[0] is None else float(t[0]), float(t[1])) for t in node["tiers"])
        except (TypeError, ValueError, IndexError):
            raise ConfigError("price_bad_entry", f"{key}: tiers must be [[up_to_gb or null, price], ...]",
                              uri=path) from None
    value = node.get("value")
    if value is not None and not isinstance(value, (int, float)):
        raise ConfigError("price_bad_entry", f"{key}: value must be a number", uri=path)
    return Price(key, None if value is None else float(value), tiers, str(node["as_of"]), str(node["source"]))


def _existing(path: str) -> str:
    """``path`` as given if it exists, else relative to the repository (for the shipped defaults)."""
    if os.path.exists(path) or uris.is_s3(path) or os.path.isabs(path):
        return path
    alt = os.path.join(_REPO_ROOT, path)
    return alt if os.path.exists(alt) else path


def read_prices(path: str | None = None, region: str = "us-east-1") -> PriceBook:
    """Read a prices file (local or s3://) for one region."""
    path = _existing(path or DEFAULT_PRICES)
    try:
        data = json.loads(reads.read_bytes(path))
    except ValueError as exc:
        raise ConfigError("prices_bad_file", f"not JSON ({exc})", uri=path) from None
    except errors.NotFoundError:
        raise ConfigError("prices_not_found", "no such prices file", uri=path) from None
    if not isinstance(data, dict):
        raise ConfigError("prices_bad_file", "the prices file must hold a JSON object", uri=path)
    return PriceBook(data, region, path)


def read_bench_throughput(path: str | None = None) -> tuple[float, str] | None:
    """``per_core_mb_s`` from the benchmark report and where it was found; None when absent.

    The key is searched anywhere in the report; a value under a reassembly section wins.
    """
    path = _existing(path or DEFAULT_BENCH_REPORT)
    if not uris.is_s3(path) and not os.path.exists(path):
        return None
    try:
        report = json.loads(reads.read_bytes(path))
    except (ValueError, ReassemblyError):
        log.warning("benchmark report %s is unreadable; using the default throughput", path)
        return None
    found: list[tuple[str, float]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                here = f"{where}.{k}" if where else str(k)
                if k == "per_core_mb_s" and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                    found.append((here, float(v)))
                else:
                    walk(v, here)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(report, "")
    if not found:
        return None
    found.sort(key=lambda f: ("reassembl" not in f[0], len(f[0])))
    where, value = found[0]
    return value, f"measured: {path} {where}"


S3_FIGURES_SECTION = "s3_client_cpu"  # bench/s3cpu.py's section of the benchmark report
S3_PUT_PREFIX_RATE = 3500  # PUT/COPY/POST/DELETE per second per partitioned prefix (S3's documented floor)
S3_GET_PREFIX_RATE = 5500  # GET/HEAD per second per partitioned prefix


def read_bench_s3_figures(path: str | None = None) -> tuple[dict[str, float], str] | None:
    """The measured S3 client CPU figures (``s3_client_cpu.figures`` in the benchmark report) and where they were
    found; None when the report or the section is absent or incomplete."""
    path = _existing(path or DEFAULT_BENCH_REPORT)
    if not uris.is_s3(path) and not os.path.exists(path):
        return None
    try:
        report = json.loads(reads.read_bytes(path))
    except (ValueError, ReassemblyError):
        return None
    section = report.get(S3_FIGURES_SECTION) if isinstance(report, dict) else None
    figures = section.get("figures") if isinstance(section, dict) else None
    needed = ("put_cpu_ms", "put_object_cpu_ms", "put_object_bytes", "ranged_get_cpu_ms", "read_pass_cpu_ms_per_mb",
              "read_pass_local_cpu_ms_per_mb", "write_local_cpu_ms_per_instance", "write_mean_object_bytes",
              "index_pixel_cpu_ms_per_instance", "index_pixel_gets_per_instance", "index_header_cpu_ms_per_instance",
              "index_header_local_cpu_ms_per_instance")
    if not isinstance(figures, dict) or not all(isinstance(figures.get(k), (int, float)) for k in needed):
        return None
    when = (section.get("measured") or {}).get("started_at") or report.get("started_at") or "undated"
    return {k: float(figures[k]) for k in needed}, f"measured: {path} {S3_FIGURES_SECTION}.figures ({when})"


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


# ---------------------------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """What the delivery holds."""

    header_archives: int
    pixel_archives: int
    header_archive_bytes: int
    pixel_archive_bytes: int
    instances: int
    header_member_bytes: int
    pixel_member_bytes: int
    source: str = ""

    @property
    def archives(self) -> int:
        """All archives."""
        return self.header_archives + self.pixel_archives

    @property
    def archive_bytes(self) -> int:
        """All archive bytes."""
        return self.header_archive_bytes + self.pixel_archive_bytes


def workload_from_totals(archives: int, total_bytes: int, instances: int, avg_header_bytes: int = 12 * 1024,
                         header_archives: int | None = None) -> Workload:
    """A workload from listing totals and an assumed average header (JSON) size.

    Header archives hold ``instances x (avg_header + tar overhead)`` bytes; the rest are pixel archives.
    Archives are split between the two in proportion to bytes unless ``header_archives`` is given.
    """
    if archives < 1 or total_bytes < 1 or instances < 1:
        raise ConfigError("bad_workload", "archives, bytes and instances must all be positive")
    header_member = instances * avg_header_bytes
    header_arch = min(total_bytes, header_member + instances * TAR_OVERHEAD_PER_MEMBER)
    pixel_arch = total_bytes - header_arch
    if pixel_arch <= 0:
        raise ConfigError("bad_workload", "the headers alone exceed --bytes: check --instances and --avg-header-bytes")
    if header_archives is None:
        header_archives = max(1, round(archives * header_arch / total_bytes))
    header_archives = min(header_archives, archives - 1) if archives > 1 else 1
    pixel_member = max(0, pixel_arch - instances * TAR_OVERHEAD_PER_MEMBER)
    return Workload(header_archives, max(0, archives - header_archives), header_arch, pixel_arch, instances,
                    header_member, pixel_member, source="listing totals with assumed averages")


def read_manifest_workload(uri: str) -> Workload:
    """Summarise a manifest (newest index per archive) with pyarrow, projecting only a few columns."""
    dataset = arrow_io.open_manifest(uri, ("archive_role", "archive_size", "size"))
    with arrow_io.manifest_errors(uri):
        return _summarise_manifest(dataset, uri)


def _summarise_manifest(dataset: Any, uri: str) -> Workload:
    import pyarrow as pa
    import pyarrow.dataset as pads

    archives = arrow_io.newest_archive_rows(dataset, ["archive_role", "archive_size"])
    runs = dict(zip(archives.column("archive_uri").to_pylist(), archives.column("index_run").to_pylist()))
    header_archives = pixel_archives = header_bytes = pixel_bytes = 0
    for role, size in zip(archives.column("archive_role").to_pylist(), archives.column("archive_size").to_pylist()):
        if role == "text":
            header_archives += 1
            header_bytes += int(size or 0)
        else:
            pixel_archives += 1
            pixel_bytes += int(size or 0)
    sums = {"header": [0, 0], "pixels": [0, 0]}
    members = pads.field("kind").isin(["header", "pixels"])
    for batch in arrow_io.iter_newest_batches(dataset, runs, ["kind", "size"], members):
        grouped = pa.Table.from_batches([batch]).group_by("kind").aggregate([("size", "sum"), ("size", "count")])
        for kind, total, count in zip(*(grouped.column(c).to_pylist() for c in ("kind", "size_sum", "size_count"))):
            sums[kind][0] += int(total or 0)
            sums[kind][1] += int(count or 0)
    return Workload(header_archives, pixel_archives, header_bytes, pixel_bytes, sums["header"][1], sums["header"][0],
                    sums["pixels"][0], source=f"manifest {uri}")


def scale_workload(workload: Workload, instances: int) -> Workload:
    """The same delivery at ``instances`` instances: archive counts and byte totals scaled in proportion."""
    if instances < 1 or workload.instances < 1:
        raise ConfigError("bad_workload", "scaling needs a positive instance count on both sides")
    f = instances / workload.instances
    return Workload(max(1, math.ceil(workload.header_archives * f)), max(1, math.ceil(workload.pixel_archives * f)),
                    round(workload.header_archive_bytes * f), round(workload.pixel_archive_bytes * f), int(instances),
                    round(workload.header_member_bytes * f), round(workload.pixel_member_bytes * f),
                    source=f"{workload.source}, scaled to {instances:,} instances")


def merge_listing(workload: Workload, header_archives: int, header_bytes: int, pixel_archives: int,
                  pixel_bytes: int) -> Workload:
    """Archive counts and bytes from a listing on top of a manifest summary.

    Pixel archives still in Glacier are not indexed, so the manifest does not know their members; their member
    bytes are then estimated from the archive bytes minus tar overhead.
    """
    pixel_members = workload.pixel_member_bytes
    if pixel_bytes > workload.pixel_archive_bytes:
        pixel_members = max(pixel_members, pixel_bytes - workload.instances * TAR_OVERHEAD_PER_MEMBER)
    return replace(workload, header_archives=header_archives, header_archive_bytes=header_bytes,
                   pixel_archives=pixel_archives, pixel_archive_bytes=pixel_bytes, pixel_member_bytes=pixel_members,
                   source=f"{workload.source} + listing")


# ---------------------------------------------------------------------------------------------- estimate


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
    s3_client_cpu: bool = True  # add the measured S3 client CPU (bench report's s3_client_cpu) to the local throughput


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

    out_bytes = sel * (workload.pixel_member_bytes + workload.header_member_bytes * a.header_binary_ratio
                       + workload.instances * a.part10_overhead_bytes)
    processed_mb = (workload.header_archive_bytes + pixel_read_bytes) / MB
    s3_found = read_bench_s3_figures(bench_report) if a.s3_client_cpu else None
    phases = model_phases(header_mb=workload.header_archive_bytes / MB, headers=workload.instances,
                          index_gets=index_gets, pixel_read_mb=pixel_read_bytes / MB, output_mb=out_bytes / MB,
                          puts=puts, reassembly_gets=reassembly_gets, per_core_mb_s=per_core,
                          net_mb_s_per_vcpu=net_share, index_gets_per_task_s=idx_rate,
                          s3=s3_found[0] if s3_found else None, cluster_vcpus=a.worker_nodes * vcpu,
                          utilization=a.utilization)
    core_seconds = phases["indexing"]["core_seconds"] + phases["reassembly"]["core_seconds"]
    notes.extend(phase_notes(phases, s3_found, net_share, a.instance_type))
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
        "mean_put_per_s": peak_puts,
        # The PUTs happen in the reassembly phase only: its rate, not the run's mean, sizes the output prefixes.
        "output_prefixes_needed_at_3500_put_s": phases["reassembly"]["output_prefixes_needed_at_3500_put_s"],
        "phases": phases, "s3_client_cpu_source": s3_found[1] if s3_found else "not measured (local throughput only)",
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
    ph = d.get("phases")
    if ph:
        rows.append(f"Phases: indexing {_hours(ph['indexing']['wall_clock_hours'])} "
                    f"({_rate(ph['indexing']['get_per_s'])} GET/s), reassembly "
                    f"{_hours(ph['reassembly']['wall_clock_hours'])} ({_rate(ph['reassembly']['put_per_s'])} PUT/s).")
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


# ---------------------------------------------------------------------------------------------------- CLI


def add_cost_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``cost``; the handler is ``args.func`` (returns an exit code)."""
    p = subparsers.add_parser("cost", help="estimate the cost of a full run")
    src = p.add_argument_group("workload (a manifest, a listing, or totals)")
    src.add_argument("--manifest", help="manifest dataset (Parquet)")
    src.add_argument("--text", help="text archive prefix to list (archive counts and bytes)")
    src.add_argument("--images", help="image archive prefix to list (archive counts and bytes)")
    src.add_argument("--listing", action="store_true", help="use the totals below (--archives, --bytes, --instances)")
    src.add_argument("--archives", type=int, help="number of archives (text + image)")
    src.add_argument("--bytes", type=float, help="bytes of all archives")
    src.add_argument("--instances", type=float,
                     help="number of instances (with --listing); with --manifest, the same delivery scaled to N")
    src.add_argument("--avg-header-bytes", type=int, default=12 * 1024, help="average header JSON size (12 KiB)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--prices", default=DEFAULT_PRICES, help="prices file (default conf/prices.json)")
    p.add_argument("--bench-report", default=DEFAULT_BENCH_REPORT, help="benchmark report with per_core_mb_s")
    p.add_argument("--tier", choices=("Bulk", "Standard", "Expedited"), default="Bulk")
    p.add_argument("--days", type=int, default=7, help="days restored copies stay")
    p.add_argument("--selected-fraction", type=float, default=1.0, help="share of instances selected")
    p.add_argument("--pixel-archive-fraction", type=float, help="share of pixel archives holding a selected instance")
    p.add_argument("--selective-restore", action="store_true",
                   help="restore only pixel archives with selected instances (headers name their archive)")
    p.add_argument("--storage-class", choices=STORAGE_CLASSES, default="STANDARD", help="destination class")
    p.add_argument("--instance-type", default="m6i.4xlarge")
    p.add_argument("--nodes", type=int, default=50, help="EMR worker nodes (core + task fleets)")
    p.add_argument("--utilization", type=float, default=0.7, help="share of vCPU time at measured throughput")
    p.add_argument("--per-core-mb-s", type=float, help="override the measured throughput per core")
    p.add_argument("--spot-discount", type=float, default=0.0, help="EC2 discount on worker nodes (0.6 = 60%% off)")
    p.add_argument("--no-bucket-key", action="store_true", help="SSE-KMS without S3 Bucket Keys (KMS per request)")
    p.add_argument("--restore-via", choices=("api", "batch", "auto"), default="auto")
    p.add_argument("--json-out", help="write the estimate as JSON here")
    p.set_defaults(func=handle_cost)
    return p


def handle_cost(args: argparse.Namespace) -> int:
    """Run ``cost``: print the table, write JSON. Errors reach the CLI, which prints one line."""
    est = _run(args)
    at_scale = None
    if est.one_time_total < MEANINGFUL_TOTAL and est.workload["instances"] < SCALE_PREVIEW_INSTANCES:
        args = argparse.Namespace(**{**vars(args), "instances": float(SCALE_PREVIEW_INSTANCES)})
        at_scale = _run(args)
    print(format_cost_table(est, at_scale))
    if args.json_out:
        writes.write_bytes(args.json_out, json.dumps(est.to_dict(), indent=2, default=str).encode("utf-8"),
                            writes.WriteOptions(content_type="application/json"))
    return 0


def _run(args: argparse.Namespace) -> Estimate:
    prices = read_prices(args.prices, args.region)
    if args.listing or (args.manifest is None and args.archives is not None):
        if args.archives is None or args.bytes is None or args.instances is None:
            raise ConfigError("bad_workload", "--listing needs --archives, --bytes and --instances")
        workload = workload_from_totals(int(args.archives), int(args.bytes), int(args.instances),
                                        args.avg_header_bytes)
    elif args.manifest:
        workload = read_manifest_workload(args.manifest)
        if args.text and args.images:
            ha, hb = listing.count_objects(args.text)
            pa_, pb = listing.count_objects(args.images)
            workload = merge_listing(workload, ha, hb, pa_, pb)
        if workload.instances == 0:
            raise ConfigError("bad_workload", "the manifest has no header rows: nothing to estimate", uri=args.manifest)
        if args.instances is not None:
            workload = scale_workload(workload, int(args.instances))
    else:
        raise ConfigError("bad_workload", "give --manifest M, or --listing --archives N --bytes B --instances N")
    a = Assumptions(tier=args.tier, days=args.days, selected_fraction=args.selected_fraction,
                    pixel_archive_fraction=args.pixel_archive_fraction, selective_restore=args.selective_restore,
                    destination_class=args.storage_class, instance_type=args.instance_type,
                    worker_nodes=args.nodes, utilization=args.utilization, per_core_mb_s=args.per_core_mb_s,
                    spot_discount=args.spot_discount, kms_bucket_key=not args.no_bucket_key,
                    restore_via=args.restore_via)
    return estimate_cost(workload, prices, a, args.bench_report)
