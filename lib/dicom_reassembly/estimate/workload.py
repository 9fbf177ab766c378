"""The workload a cost estimate prices: from a manifest (summarised with pyarrow) or from listing totals."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..io import arrow_io

log = logging.getLogger(__name__)
TAR_OVERHEAD_PER_MEMBER = 768  # a 512-byte header block plus, on average, half a block of padding


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
