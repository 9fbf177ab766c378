"""Prices and throughput the cost model uses: ``conf/prices.json`` per region (each price with its date and
source), the benchmark's measured throughput per core and its measured S3 client CPU figures.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..errors import ConfigError, ReassemblyError
from ..io import reads, uris

log = logging.getLogger(__name__)
GB = 1024 ** 3
MB = 1000 ** 2  # throughput figures are MB/s (10^6 bytes), as the benchmark reports them
STORAGE_CLASSES = ("STANDARD", "INTELLIGENT_TIERING", "STANDARD_IA", "GLACIER_IR")
MIN_BILLABLE_BYTES = {"STANDARD_IA": 128 * 1024, "GLACIER_IR": 128 * 1024}  # smaller objects are billed as 128 KB
IT_MONITORED_MIN_BYTES = 128 * 1024  # Intelligent-Tiering monitors (and charges for) objects from 128 KB
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_PRICES = "conf/prices.json"
DEFAULT_BENCH_REPORT = "bench/results/report.json"


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


def _read_report(path: str) -> Any:
    """The benchmark report's JSON; None when it is absent or unreadable (the defaults are used then)."""
    if not uris.is_s3(path) and not os.path.exists(path):
        return None
    try:
        return json.loads(reads.read_bytes(path))
    except (ValueError, ReassemblyError):
        log.warning("benchmark report %s is unreadable; using the defaults", path)
        return None


def read_bench_throughput(path: str | None = None) -> tuple[float, str] | None:
    """``per_core_mb_s`` from the benchmark report and where it was found; None when absent.

    The key is searched anywhere in the report; a value under a reassembly section wins.
    """
    path = _existing(path or DEFAULT_BENCH_REPORT)
    report = _read_report(path)
    if report is None:
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


def read_bench_s3_figures(path: str | None = None) -> tuple[dict[str, float], str] | None:
    """The measured S3 client CPU figures (``s3_client_cpu.figures`` in the benchmark report) and where they were
    found; None when the report or the section is absent or incomplete."""
    path = _existing(path or DEFAULT_BENCH_REPORT)
    report = _read_report(path)
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
