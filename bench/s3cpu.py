"""Client CPU of the S3 path: per request (GET, ranged GET, PUT) and per instance (indexing, writes), with A/B runs.

moto's S3 runs in a process of its own, served over HTTPS with keep-alive (bench/s3endpoint.py), the way S3
serves: so TLS and connection reuse are in the client's bill as they would be on AWS, and moto's own CPU is not.
Every measurement runs in a fresh plain Python process (no Spark, bench/s3client.py) calling the library's own
functions, and counts only that process's CPU. This module drives them and reports the medians.

A/B: a botocore client option (``dicom_reassembly.io.clients.CLIENT_OPTIONS``), a handler trim, awscrt or a new
connection per request is measured against its baseline in the same run, alternating, in fresh processes, and
the medians compared. ``python bench/s3cpu.py`` runs the step alone; ``bench/run.py`` runs it after the S3 step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if os.path.join(ROOT, "lib") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "lib"))

from bench.s3endpoint import BUCKET, Endpoint  # noqa: E402

MB = 1000 ** 2
CLIENT = os.path.join(ROOT, "bench", "s3client.py")  # one fresh process per measurement
# Botocore's defaults, as the library's clients were before the A/B runs (clients.CLIENT_OPTIONS empty).
BASELINE: dict[str, Any] = {"options": {}}
# Candidates, each against BASELINE. "options" are botocore Config arguments; the other keys are bench-side.
CANDIDATES: dict[str, dict[str, Any]] = {
    "unsigned payload (s3.payload_signing_enabled=False; S3 still verifies our SHA-256)":
        {"options": {"s3": {"payload_signing_enabled": False}}},
    "parameter_validation=False": {"options": {"parameter_validation": False}},
    "checksums when_required (request_checksum_calculation, response_checksum_validation)":
        {"options": {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}},
    "handlers trimmed (user agent rebuild, recursion header, idempotency token, SSE-C MD5, metadata check)":
        {"options": {}, "trim": True},
    "awscrt installed (CRT SigV4 signer and checksums)": {"options": {}, "crt": True},
    "a new connection per request (no reuse: what moto's own server forces)": {"options": {}, "close": True},
}
# A metric is clearly better when the paired runs cut its CPU by at least this share (the median of the ratios)
# and all pairs but at most one agree: a shared 2-core machine moves single runs by 10-30 %.
KEEP_GAIN = 0.05
# The metrics that decide whether a candidate is kept: the executors' per-instance S3 work.
DECIDING = ("get_ranged_512", "put_object", "index_images_s3", "read_pass_s3", "write_s3")


def _crt_available() -> bool:
    try:
        import awscrt  # noqa: F401
    except ImportError:
        return False
    return True


def run_client(spec: dict[str, Any], env: dict[str, str], work: str) -> dict[str, Any]:
    """One fresh process for one measurement; awscrt is kept out unless the spec asks for it."""
    path = os.path.join(work, f"spec-{spec['run']}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "lib")])}
    if spec.get("crt"):
        child_env.pop("BOTO_DISABLE_CRT", None)
    else:
        child_env["BOTO_DISABLE_CRT"] = "true"  # botocore uses awscrt whenever it is importable
    r = subprocess.run([sys.executable, CLIENT, path], env=child_env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        from bench.measure import BenchError

        raise BenchError(f"S3 client run {spec['run']} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _build_objects(root: str, index: dict[str, Any], want: int, path: str) -> None:
    """Assembled objects (uid, parts, size, sha256) of the first ``want`` instances, pickled for the clients."""
    import pickle

    from bench import measure as ms
    from dicom_reassembly.dicom.part10 import assemble

    objs = []
    for it in ms.hot_path_items(root, index, want)[:want]:
        with open(it["pixel_archive"], "rb") as f:
            f.seek(it["pixel_offset"])
            payload = f.read(it["pixel_size"])
        o = assemble(it["header_json"], payload, it["sop_instance_uid"], it["pixel_member"])
        objs.append((o.sop_instance_uid, [bytes(p) for p in o.parts], o.size, o.sha256))
    with open(path, "wb") as f:
        pickle.dump(objs, f)


def _headers(root: str, index: dict[str, Any], limit: int, path: str) -> None:
    out: list[str] = []
    for a in index["archives"]["text"]:
        with tarfile.open(os.path.join(root, "text", a["name"])) as tf:
            for m in tf:
                f = tf.extractfile(m)
                if f is not None:
                    out.append(f.read().decode("utf-8"))
        if len(out) >= limit:
            break
    with open(path, "w") as f:
        json.dump(out[:limit], f)


def _archives(root: str, index: dict[str, Any], count: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    chosen = {role: index["archives"][role][:count] for role in ("images", "text")}
    return {where: {role: [{"uri": (f"s3://{BUCKET}/delivery/{role}/{a['name']}" if where == "s3"
                                    else os.path.join(root, role, a["name"])),
                            "role": role, "size": a["size"], "etag": None, "mtime": None} for a in chosen[role]]
                    for role in chosen}
            for where in ("s3", "local")}


def _get(r: Any, path: tuple[str, ...]) -> float:
    for p in path:
        r = r[p]
    return float(r)


def _median(runs: list[dict[str, Any]], *path: str) -> float:
    return statistics.median(_get(r, path) for r in runs)


def _ab(name: str, cand: dict[str, Any], base_runs: list[dict[str, Any]], cand_runs: list[dict[str, Any]],
        metrics: list[tuple[str, ...]]) -> dict[str, Any]:
    """Paired comparison: run i of the candidate against run i of the baseline, which ran just before it.

    gain = 1 - median(candidate_i / baseline_i). A metric is clearly better (or worse) when the gain is at least
    KEEP_GAIN (at most -KEEP_GAIN) and all pairs but at most one agree on the direction. The candidate is kept
    when one of the hot path's metrics (DECIDING) is clearly better and none is clearly worse.
    """
    rows = {}
    for m in metrics:
        a = [_get(r, m) for r in base_runs]
        b = [_get(r, m) for r in cand_runs]
        ratios = [y / x for x, y in zip(a, b) if x > 0]
        gain = 1 - statistics.median(ratios) if ratios else 0.0
        better = sum(1 for r in ratios if r < 1)
        slack = 1 if len(ratios) >= 4 else 0
        verdict = ("better" if gain >= KEEP_GAIN and better >= len(ratios) - slack else
                   "worse" if gain <= -KEEP_GAIN and len(ratios) - better >= len(ratios) - slack else "unclear")
        rows[".".join(m[1:])] = {"baseline_ms": a, "candidate_ms": b, "baseline_median": statistics.median(a),
                                 "candidate_median": statistics.median(b), "gain": gain, "verdict": verdict}
    deciding = [v for k, v in rows.items() if k.split(".")[0] in DECIDING]
    kept = any(v["verdict"] == "better" for v in deciding) and not any(v["verdict"] == "worse" for v in deciding)
    return {"candidate": name, "spec": dict(cand), "metrics": rows, "kept": kept}


def measure_s3_client_cpu(root: str, index: dict[str, Any], work: str, log: Any = print, *, repeats: int = 3,
                          n: int = 300, archives: int = 4, objects: int = 120, ab: bool = True) -> dict[str, Any]:
    """The step: figures of the current library client, then every candidate A/B against botocore's defaults."""
    from dicom_reassembly.io import clients

    work = os.path.join(work, "s3cpu")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    objects_path = os.path.join(work, "objects.pkl")
    _build_objects(root, index, objects, objects_path)
    headers_path = os.path.join(work, "headers.json")
    _headers(root, index, 400, headers_path)
    result: dict[str, Any] = {"endpoint": "moto 5 S3 app in its own process, uvicorn (HTTP/1.1 keep-alive) over TLS "
                                          "with a self-signed certificate; client CPU only (getrusage of the client "
                                          "process)",
                              "library_options": clients.CLIENT_OPTIONS, "repeats": repeats, "requests_per_run": n,
                              "awscrt_available": _crt_available()}
    with Endpoint(work, "https") as ep:
        log(f"S3 client CPU: uploading {archives} archives per role to moto over HTTPS")
        for role in ("images", "text"):
            for a in index["archives"][role][:archives]:
                ep.put_file(os.path.join(root, role, a["name"]), f"delivery/{role}/{a['name']}")
        ep.put_bytes(os.urandom(1024), "fixtures/small-1k")
        large = f"s3://{BUCKET}/delivery/images/{index['archives']['images'][0]['name']}"
        put_bytes = int(index["totals"]["archive_bytes"] / max(1, index["totals"]["instances"]))
        base_req = {"phase": "requests", "n": n, "large_object": large, "put_bytes": put_bytes}
        inst = {"phase": "instances", "objects": objects_path, "archives": _archives(root, index, archives),
                "out": {"s3": f"s3://{BUCKET}/out", "local": os.path.join(work, "out")}}
        env = ep.env()
        # 1. The library as it is (CLIENT_OPTIONS as committed): per request and per instance, on S3 and locally.
        lib_req, lib_inst = [], []
        for i in range(repeats):
            lib_req.append(run_client({**base_req, "run": f"lib-req-{i}"}, env, work))
            lib_inst.append(run_client({**inst, "run": f"lib-inst-{i}", "where": ["s3", "local"]}, env, work))
        result["library"] = {"requests": lib_req, "instances": lib_inst}
        log("  library client: " + ", ".join(f"{k} {_median(lib_req, k, 'cpu_ms'):.2f} ms" for k in lib_req[0]))
        # 2. Candidates against botocore's defaults, alternating in fresh processes.
        result["ab"] = []
        for name, cand in (CANDIDATES if ab else {}).items():
            if cand.get("crt") and not result["awscrt_available"]:
                result["ab"].append({"candidate": name, "skipped": "awscrt is not installed"})
                continue
            base_runs, cand_runs = [], []
            for i in range(repeats):
                for spec, runs, tag in ((BASELINE, base_runs, "a"), (cand, cand_runs, "b")):
                    tag_run = f"ab{len(result['ab'])}-{tag}-{i}"
                    req = run_client({**base_req, **spec, "run": tag_run, "n": max(100, n // 2)}, env, work)
                    ins = run_client({**inst, **spec, "run": tag_run + "-i", "where": ["s3"]}, env, work)
                    runs.append({"requests": req, "instances": ins})
            metrics = [("requests", k, "cpu_ms") for k in ("get_small", "get_ranged_512", "put_1k", "put_object")]
            metrics += [("instances", "index_images_s3", "cpu_ms_per_member"),
                        ("instances", "index_text_s3", "cpu_ms_per_member"),
                        ("instances", "read_pass_s3", "cpu_ms_per_mb"),
                        ("instances", "write_s3", "cpu_ms_per_instance")]
            result["ab"].append(_ab(name, cand, base_runs, cand_runs, metrics))
            last = result["ab"][-1]
            log(f"  A/B {name[:60]}: " + ", ".join(f"{k.split('.')[0]} {100 * v['gain']:+.0f} %"
                                                    for k, v in last["metrics"].items())
                + (" (kept)" if last["kept"] else ""))
    # 3. Plain HTTP, keep-alive (the library as it is), for what TLS adds.
    with Endpoint(work, "http") as ep:
        a = index["archives"]["images"][0]
        ep.put_file(os.path.join(root, "images", a["name"]), f"delivery/images/{a['name']}")
        ep.put_bytes(os.urandom(1024), "fixtures/small-1k")
        result["library_http"] = [run_client({**base_req, "run": f"http-{i}"}, ep.env(), work) for i in range(repeats)]
    # 4. Criteria per header (a wave-2 plan's work per header), no S3.
    from bench import delivery as dl

    date, _ = dl.date_threshold(index, 0.1)
    criteria = [{"dicom_tag": ["0008", "0020"], "operation": "GREATER", "reference": date}]
    result["criteria"] = [run_client({"phase": "criteria", "run": f"crit-{i}", "criteria": criteria,
                                      "headers": headers_path}, {}, work) for i in range(repeats)]
    result["figures"] = summarise(result)
    shutil.rmtree(work, ignore_errors=True)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The medians the cost model reads (``report.json`` → ``s3_client_cpu.figures``)."""
    req, inst = result["library"]["requests"], result["library"]["instances"]
    f: dict[str, Any] = {
        "get_cpu_ms": _median(req, "get_small", "cpu_ms"),
        "ranged_get_cpu_ms": _median(req, "get_ranged_512", "cpu_ms"),
        "put_cpu_ms": _median(req, "put_1k", "cpu_ms"),
        "put_object_cpu_ms": _median(req, "put_object", "cpu_ms"),
        "put_object_bytes": req[0]["put_object"]["bytes"],
        "index_pixel_cpu_ms_per_instance": _median(inst, "index_images_s3", "cpu_ms_per_member"),
        "index_pixel_local_cpu_ms_per_instance": _median(inst, "index_images_local", "cpu_ms_per_member"),
        "index_header_cpu_ms_per_instance": _median(inst, "index_text_s3", "cpu_ms_per_member"),
        "index_header_local_cpu_ms_per_instance": _median(inst, "index_text_local", "cpu_ms_per_member"),
        "read_pass_cpu_ms_per_mb": _median(inst, "read_pass_s3", "cpu_ms_per_mb"),
        "read_pass_local_cpu_ms_per_mb": _median(inst, "read_pass_local", "cpu_ms_per_mb"),
        "write_cpu_ms_per_instance": _median(inst, "write_s3", "cpu_ms_per_instance"),
        "write_local_cpu_ms_per_instance": _median(inst, "write_local", "cpu_ms_per_instance"),
        "write_mean_object_bytes": inst[0]["write_s3"]["mean_bytes"],
        "index_pixel_gets_per_instance": inst[0]["index_images_s3"]["gets"] / max(1, inst[0]["index_images_s3"]["members"]),
    }
    f["write_cpu_ms_per_mb"] = f["write_cpu_ms_per_instance"] / (f["write_mean_object_bytes"] / MB)
    if result.get("library_http"):
        f["http_put_object_cpu_ms"] = _median(result["library_http"], "put_object", "cpu_ms")
        f["http_ranged_get_cpu_ms"] = _median(result["library_http"], "get_ranged_512", "cpu_ms")
    if result.get("criteria"):
        f["criteria_us_per_header"] = _median(result["criteria"], "us_per_header")
        f["criteria_mean_header_bytes"] = result["criteria"][0]["mean_header_bytes"]
    f["basis"] = ("medians of fresh client processes on moto over HTTPS keep-alive; client CPU only; "
                  "put_cpu_ms and the *_get_ figures are per request with 1 KiB / 512-byte bodies")
    return f


def render_markdown(result: dict[str, Any] | None) -> list[str]:
    """Lines for report.md."""
    if not result or "figures" not in result:
        return []
    f = result["figures"]
    when = result.get("measured", {})
    lines = ["", "## S3 client CPU (plain processes, moto over HTTPS keep-alive in another process)", "",
             *([f"Measured {when['started_at']} by `{when['command']}` on a delivery of "
                f"{when['delivery']['instances']} instances ({when['delivery']['per_archive']} per archive), "
                "apart from the rest of this report.", ""] if when else []),
             f"Client CPU only (getrusage of the client process), medians of {result['repeats']} fresh processes; "
             f"library options `{json.dumps(result['library_options'])}`.", ""]
    rows = [["GET, whole 1 KiB object", f["get_cpu_ms"], "ms per request"],
            ["ranged GET, 512 bytes", f["ranged_get_cpu_ms"], "ms per request"],
            ["PUT 1 KiB, SHA-256 checksum + If-None-Match", f["put_cpu_ms"], "ms per request"],
            [f"PUT {f['put_object_bytes'] / MB:.2f} MB, SHA-256 checksum + If-None-Match", f["put_object_cpu_ms"],
             "ms per request"],
            ["index pixel archives (ranged GETs), S3 / local", f"{f['index_pixel_cpu_ms_per_instance']:.3f} / "
             f"{f['index_pixel_local_cpu_ms_per_instance']:.3f}", "ms per instance"],
            ["index header archives (streamed GET), S3 / local", f"{f['index_header_cpu_ms_per_instance']:.3f} / "
             f"{f['index_header_local_cpu_ms_per_instance']:.3f}", "ms per instance"],
            ["reassembly's pass over a pixel archive (one ranged GET), S3 / local",
             f"{f['read_pass_cpu_ms_per_mb']:.3f} / {f['read_pass_local_cpu_ms_per_mb']:.3f}", "ms per MB"],
            [f"writes ({f['write_mean_object_bytes'] / MB:.2f} MB objects), S3 / local",
             f"{f['write_cpu_ms_per_instance']:.3f} / {f['write_local_cpu_ms_per_instance']:.3f}", "ms per instance"]]
    if "http_put_object_cpu_ms" in f:
        rows.append(["the same PUT / ranged GET over plain HTTP (no TLS)",
                     f"{f['http_put_object_cpu_ms']:.3f} / {f['http_ranged_get_cpu_ms']:.3f}", "ms per request"])
    if "criteria_us_per_header" in f:
        rows.append(["criteria on one header's JSON (wave-2 plan)", f["criteria_us_per_header"], "µs per header"])
    lines += ["| figure | value | unit |", "|---|---:|---|"]
    lines += [f"| {a} | {b if isinstance(b, str) else f'{b:.3f}'} | {c} |" for a, b, c in rows]
    ab_when = result.get("ab_measured")
    lines += ["", "A/B against botocore's defaults (median client CPU, ms; gain = 1 - candidate / baseline)"
              + (f", measured {ab_when['started_at']} by `{ab_when['command']}`" if ab_when else "") + ":", "",
              "| candidate | metric | baseline | candidate | gain (paired) | verdict |", "|---|---|---:|---:|---:|---|"]
    for ab in result.get("ab", []):
        if "skipped" in ab:
            lines.append(f"| {ab['candidate']} | skipped: {ab['skipped']} | | | | |")
            continue
        for i, (metric, m) in enumerate(ab["metrics"].items()):
            name = f"{ab['candidate']} ({'kept' if ab['kept'] else 'not kept'})" if i == 0 else ""
            lines.append(f"| {name} | {metric} | {m['baseline_median']:.3f} | {m['candidate_median']:.3f} | "
                         f"{100 * m['gain']:+.0f} % | {m['verdict']} |")
    return lines


def merge_into(report_json: str, result: dict[str, Any]) -> None:
    """Add ``result`` to an existing report as ``s3_client_cpu``, and its section to the report.md beside it
    (replacing an earlier one); the rest of both files stays as its own run wrote it."""
    with open(report_json) as f:
        report = json.load(f)
    report["s3_client_cpu"] = result
    with open(report_json, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True, default=str)
    md_path = os.path.join(os.path.dirname(report_json), "report.md")
    with open(md_path) as f:
        md = f.read()
    section = "\n## S3 client CPU"
    if section in md:
        start = md.index(section)
        end = md.find("\n## ", start + len(section))
        md = md[:start] + (md[end:] if end >= 0 else "\n")
    with open(md_path, "w") as f:
        f.write(md.rstrip("\n") + "\n" + "\n".join(render_markdown(result)) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="generate a small delivery and run the step alone")
    m.add_argument("--instances", type=int, default=240)
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--requests", type=int, default=300, help="requests per kind and process")
    m.add_argument("--work", default=os.path.join(ROOT, "bench", "results", "tmp-s3cpu"))
    m.add_argument("--per-archive", type=int, default=50, help="instances per archive (the committed report's 50)")
    m.add_argument("--out", help="write the result as JSON here")
    m.add_argument("--library-only", action="store_true",
                   help="measure the library client only (no A/B), keeping the A/B of the report named by --merge")
    m.add_argument("--merge", help="a bench report.json to add the result to (as s3_client_cpu); report.md beside it "
                                   "is written again")
    args = p.parse_args(argv)
    if args.cmd == "measure":
        from bench import delivery as dl

        root = os.path.join(args.work, "delivery")
        params = dl.DeliveryParams(instances=args.instances, per_archive=args.per_archive, seed=20241121, pool=8)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        index = dl.write_delivery(root, params)
        try:
            res = measure_s3_client_cpu(root, index, args.work, repeats=args.repeats, n=args.requests,
                                        ab=not args.library_only)
        finally:
            shutil.rmtree(args.work, ignore_errors=True)
        res["measured"] = {"started_at": started, "command": "python bench/s3cpu.py measure " + " ".join(argv or sys.argv[2:]),
                           "delivery": {"instances": args.instances, "per_archive": args.per_archive,
                                        "archive_bytes": index["totals"]["archive_bytes"]},
                           "load_average_end": os.getloadavg()}
        print("\n".join(render_markdown(res)))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(res, f, indent=1, default=str)
        if args.merge and args.library_only:
            with open(args.merge) as f:
                earlier = json.load(f).get("s3_client_cpu") or {}
            if earlier.get("ab"):
                res["ab"] = earlier["ab"]
                res["ab_measured"] = earlier.get("ab_measured") or earlier.get("measured")
        if args.merge:
            merge_into(args.merge, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
