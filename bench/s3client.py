"""The client side of bench/s3cpu.py: one fresh plain Python process per measurement, calling the library's own
functions (``index_archive``, ``read_range``, ``open_read``, ``write_parts``) against the endpoint in
``AWS_ENDPOINT_URL``, and counting only its own CPU (``getrusage(RUSAGE_SELF)``, user + system) after a warm-up.

``python bench/s3client.py SPEC.json`` runs the phase the spec names and prints its result as one JSON line.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if os.path.join(ROOT, "lib") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "lib"))

from bench.s3endpoint import BUCKET  # noqa: E402

MB = 1000 ** 2


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _trim_handlers(client: Any) -> None:
    """Unregister per-request handlers that do nothing for our calls (a candidate, measured)."""
    from botocore import handlers as h

    events = client.meta.events
    for event, fn in (("before-call.s3", h.add_recursion_detection_header),  # Lambda's trace id only
                      ("before-parameter-build.s3", h.generate_idempotent_uuid),  # no S3 call has a token
                      ("before-parameter-build.s3", h.sse_md5),  # no SSE-C
                      ("before-parameter-build.s3.PutObject", h.validate_ascii_metadata)):  # our metadata is ASCII
        events.unregister(event, fn)
    for handler in list(events._emitter._handlers.prefix_search("request-created.s3.PutObject")):
        if getattr(handler, "__name__", "") == "rebuild_and_replace_user_agent_handler":
            events.unregister("request-created", handler)


def _close_each(request: Any, **_: Any) -> None:
    request.headers["Connection"] = "close"


def _prepare_client(spec: dict[str, Any]) -> Any:
    from dicom_reassembly.io import clients

    if spec.get("options") is not None:
        clients.CLIENT_OPTIONS = dict(spec["options"])  # before the first client: s3_client builds with them
    client = clients.s3_client()
    if spec.get("trim"):
        _trim_handlers(client)
    if spec.get("close"):
        client.meta.events.register("before-send.s3", _close_each)
    return client


def _timed(fn: Any, n: int) -> dict[str, float]:
    c0, t0 = _cpu(), time.perf_counter()
    for i in range(n):
        fn(i)
    return {"cpu_ms": 1000 * (_cpu() - c0) / n, "wall_ms": 1000 * (time.perf_counter() - t0) / n, "n": n}


def phase_requests(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-request client CPU: whole GET of a small object, ranged GET of 512 bytes, PUT (checksum + If-None-Match)."""
    from dicom_reassembly.io import reads, writes

    n, run = spec["n"], spec["run"]
    small = f"s3://{BUCKET}/fixtures/small-1k"
    large = spec["large_object"]
    body = os.urandom(1024)
    sha = writes.sha256_hex([body])
    obj = os.urandom(spec["put_bytes"])
    obj_sha = writes.sha256_hex([obj])
    reads.read_range(large, 0, 512)  # warm-up: the client, its connection, the endpoint's rules
    out = {
        "get_small": _timed(lambda i: reads.read_bytes(small), n),
        "get_ranged_512": _timed(lambda i: reads.read_range(large, 4096 * i, 512), n),
        "put_1k": _timed(lambda i: writes.write_parts(f"s3://{BUCKET}/{run}/small/{i}", [body], len(body), sha,
                                                      if_absent=True), n),
        "put_object": _timed(lambda i: writes.write_parts(f"s3://{BUCKET}/{run}/obj/{i}", [obj], len(obj), obj_sha,
                                                          if_absent=True), max(10, n // 2)),
    }
    out["put_object"]["bytes"] = len(obj)
    return out


def phase_instances(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-instance client CPU of indexing (pixel archives by ranged GETs, header archives streamed), of the
    reassembly's pass over a pixel archive (one ranged GET, streamed), and of the writes; on S3 and on local files."""
    import pickle

    from dicom_reassembly.io import reads, writes
    from dicom_reassembly.manifest.index import FIELD_NAMES, index_archive

    with open(spec["objects"], "rb") as f:
        objects = pickle.load(f)
    run = spec["run"]
    now = datetime.datetime.now(datetime.timezone.utc)
    kind = FIELD_NAMES.index("kind")
    out: dict[str, Any] = {}
    for where in spec["where"]:
        archives = spec["archives"][where]
        for role in ("images", "text"):
            todo = archives[role]
            list(index_archive(todo[0], "warm", now))  # warm-up
            reads.io_counter.reset()
            c0 = _cpu()
            members = sum(1 for a in todo for row in index_archive(a, "bench", now) if row[kind] != "archive")
            out[f"index_{role}_{where}"] = {"cpu_ms_per_member": 1000 * (_cpu() - c0) / max(1, members),
                                            "members": members, "gets": reads.io_counter.gets,
                                            "bytes_read": reads.io_counter.bytes_read}
        c0 = _cpu()
        nbytes = 0
        for a in archives["images"]:
            with reads.open_read(a["uri"], 0, a["size"]) as stream:  # a ranged GET, as reassembly's pass
                while chunk := stream.read(1 << 20):
                    nbytes += len(chunk)
        out[f"read_pass_{where}"] = {"cpu_ms_per_mb": 1000 * (_cpu() - c0) / (nbytes / MB), "bytes": nbytes}
        target = spec["out"][where] + f"/{run}"
        writes.write_parts(f"{target}/warm.dcm", [b"x" * 1024], 1024, writes.sha256_hex([b"x" * 1024]), if_absent=True)
        c0 = _cpu()
        for uid, parts, size, sha in objects:
            writes.write_parts(f"{target}/{uid}.dcm", parts, size, sha, if_absent=True)
        total = sum(o[2] for o in objects)
        out[f"write_{where}"] = {"cpu_ms_per_instance": 1000 * (_cpu() - c0) / len(objects),
                                 "instances": len(objects), "mean_bytes": total / len(objects)}
    return out


def phase_criteria(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-header CPU of evaluating criteria on a header's JSON (what a wave-2 plan does per header)."""
    from dicom_reassembly.selection.criteria import first_failure_json
    from dicom_reassembly.selection.spec import parse_criteria

    crit = parse_criteria(spec["criteria"])
    with open(spec["headers"]) as f:
        headers = json.load(f)
    for h in headers[:50]:
        first_failure_json(crit, h)
    c0 = _cpu()
    rounds = max(1, 4000 // len(headers))
    for _ in range(rounds):
        for h in headers:
            first_failure_json(crit, h)
    n = rounds * len(headers)
    return {"us_per_header": 1e6 * (_cpu() - c0) / n, "headers": n,
            "mean_header_bytes": sum(len(h) for h in headers) / len(headers)}


def client_main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    phase = spec["phase"]
    if phase != "criteria":
        _prepare_client(spec)
    result = {"requests": phase_requests, "instances": phase_instances, "criteria": phase_criteria}[phase](spec)
    print(json.dumps(result))


if __name__ == "__main__":
    client_main(sys.argv[1])
