"""Client CPU of the S3 path: per request (GET, ranged GET, PUT) and per instance (indexing, writes), with A/B runs.

moto's S3 runs in a process of its own, served over HTTPS with keep-alive (uvicorn, a self-signed certificate the
client trusts through ``AWS_CA_BUNDLE``), the way S3 serves: so TLS and connection reuse are in the client's bill
as they would be on AWS, and moto's own CPU is not. Every measurement runs in a fresh plain Python process (no
Spark) calling the library's own functions (``index_archive``, ``read_range``, ``open_read``, ``write_parts``), and
counts only that process's CPU (``getrusage(RUSAGE_SELF)``, user + system), after a warm-up request.

A/B: a botocore client option (``dicom_reassembly.io.clients.CLIENT_OPTIONS``), a handler trim, awscrt or a new
connection per request is measured against its baseline in the same run, alternating, in fresh processes, and
the medians compared. ``python bench/s3cpu.py`` runs the step alone; ``bench/run.py`` runs it after the S3 step.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if os.path.join(ROOT, "lib") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "lib"))

BUCKET = "bench-s3cpu"
MB = 1000 ** 2
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
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


# ---------------------------------------------------------------- the endpoint (another process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_certificate(folder: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert, key), with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())  # what S3's endpoints negotiate is ECDHE; the key type is ours
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    os.makedirs(folder, exist_ok=True)
    cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def serve(port: int, cert: str | None, key: str | None) -> None:
    """moto's S3 app under uvicorn: HTTP/1.1 keep-alive (werkzeug's server, moto_server's, closes every connection)."""
    import uvicorn
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    uvicorn.run(app, host="127.0.0.1", port=port, interface="wsgi", log_level="error", access_log=False,
                ssl_certfile=cert, ssl_keyfile=key)


class Endpoint:
    """moto's S3 in its own process: ``https`` (the default, as S3) or ``http``."""

    def __init__(self, work: str, scheme: str = "https") -> None:
        self.work = work
        self.scheme = scheme
        self.port = _free_port()
        self.cert: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self) -> Endpoint:
        args = [sys.executable, os.path.abspath(__file__), "serve", "--port", str(self.port)]
        if self.scheme == "https":
            self.cert, key = write_certificate(os.path.join(self.work, "tls"))
            args += ["--cert", self.cert, "--key", key]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                return self
            except Exception:  # still starting
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the S3 endpoint did not start") from None
                time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {"AWS_ENDPOINT_URL": self.url, **FAKE_CREDENTIALS}
        if self.cert:
            env["AWS_CA_BUNDLE"] = self.cert
        return env

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        if self._client is None:
            self._client = boto3.client("s3", endpoint_url=self.url, region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
                                        aws_access_key_id="bench", aws_secret_access_key="bench",
                                        verify=self.cert or True,
                                        config=Config(request_checksum_calculation="when_required"))
        return self._client

    def put_bytes(self, data: bytes, key: str) -> None:
        """One PUT with a CRC32 the client computed, as boto3 >= 1.36 stores by default (so full GETs validate it).

        A header, not an aws-chunked trailer: moto under uvicorn does not decode those.
        """
        import base64
        import zlib

        crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode("ascii")
        self.client().put_object(Bucket=BUCKET, Key=key, Body=data, ChecksumCRC32=crc)

    def put_file(self, path: str, key: str) -> None:
        with open(path, "rb") as f:
            self.put_bytes(f.read(), key)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> Endpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- the client process


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


# ---------------------------------------------------------------- the driver


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
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "client", path], env=child_env,
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
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert")
    s.add_argument("--key")
    c = sub.add_parser("client")
    c.add_argument("spec")
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
    if args.cmd == "serve":
        serve(args.port, args.cert, args.key)
    elif args.cmd == "client":
        client_main(args.spec)
    else:
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
