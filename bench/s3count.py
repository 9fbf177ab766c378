"""moto's S3 server on 127.0.0.1, with a WSGI middleware that counts every request the pipeline makes.

Built the way ``moto.server.ThreadedMotoServer`` builds its app (``DomainDispatcherApplication(create_backend_app)``
served by werkzeug with ``MotoRequestHandler``), with the counter wrapped around it. Requests are counted per
bucket and operation, with the request body bytes (uploads) and the response body bytes (downloads), so a stage's
reads and writes are what crossed the wire, not what the client believed it asked for.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def classify(method: str, path: str, query: str, ranged: bool) -> tuple[str, str]:
    """(bucket, operation) of one path-style S3 request."""
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    params = parse_qs(query, keep_blank_values=True)
    if not key:
        if method == "GET":
            return bucket, "LIST" if "list-type" in params or not params else "GET_BUCKET_OTHER"
        return bucket, {"PUT": "CREATE_BUCKET", "HEAD": "HEAD_BUCKET", "DELETE": "DELETE_BUCKET"}.get(method, method)
    if method == "GET":
        return bucket, "GET_RANGE" if ranged else "GET"
    if method == "PUT":
        return bucket, "UPLOAD_PART" if "partNumber" in params else "PUT"
    if method == "POST":
        if "uploads" in params:
            return bucket, "CREATE_MULTIPART"
        return bucket, "COMPLETE_MULTIPART" if "uploadId" in params else "POST"
    return bucket, method


@dataclass
class Counts:
    """Requests and bytes per (bucket, operation)."""

    requests: Counter = field(default_factory=Counter)
    bytes_in: Counter = field(default_factory=Counter)  # request bodies (uploads)
    bytes_out: Counter = field(default_factory=Counter)  # response bodies (downloads)
    objects: Counter = field(default_factory=Counter)  # requests per (bucket, key, operation): which object was read

    def minus(self, before: Counts) -> Counts:
        """What happened since ``before``."""
        return Counts(self.requests - before.requests, self.bytes_in - before.bytes_in,
                      self.bytes_out - before.bytes_out, self.objects - before.objects)

    def on_object(self, bucket: str, key: str, *ops: str) -> int:
        """Requests of ``ops`` (all when none given) on one object."""
        return sum(v for (b, k, op), v in self.objects.items() if b == bucket and k == key and (not ops or op in ops))

    def total(self, bucket: str, *ops: str, what: str = "requests") -> int:
        """Sum of one measure over ``ops`` (all operations when none given) in ``bucket``."""
        counter: Counter = getattr(self, what)
        return sum(v for (b, op), v in counter.items() if b == bucket and (not ops or op in ops))

    def as_dict(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{bucket: {op: {"requests": n, "bytes_in": b, "bytes_out": b}}}`` for the report."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (bucket, op), n in sorted(self.requests.items()):
            out.setdefault(bucket, {})[op] = {"requests": n, "bytes_in": self.bytes_in[(bucket, op)],
                                             "bytes_out": self.bytes_out[(bucket, op)]}
        return out


class _CountingBody:
    """The response iterable, counting the bytes that go out."""

    def __init__(self, body: Iterable[bytes], counter: RequestCounter, key: tuple[str, str]) -> None:
        self.body = body
        self.counter = counter
        self.key = key

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.body:
            self.counter.add_out(self.key, len(chunk))
            yield chunk

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


class RequestCounter:
    """WSGI middleware: counts requests by bucket and operation, and their body bytes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts = Counts()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        key = classify(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""),
                       environ.get("QUERY_STRING", ""), "HTTP_RANGE" in environ)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        bucket, _, name = unquote(environ.get("PATH_INFO", "")).lstrip("/").partition("/")
        with self.lock:
            self.counts.requests[key] += 1
            self.counts.bytes_in[key] += length
            if name:
                self.counts.objects[(bucket, name, key[1])] += 1
        return _CountingBody(self.app(environ, start_response), self, key)

    def add_out(self, key: tuple[str, str], n: int) -> None:
        with self.lock:
            self.counts.bytes_out[key] += n

    def snapshot(self) -> Counts:
        """A copy of the counts so far."""
        with self.lock:
            return Counts(Counter(self.counts.requests), Counter(self.counts.bytes_in), Counter(self.counts.bytes_out),
                          Counter(self.counts.objects))


class CountingS3Server:
    """moto's S3 on 127.0.0.1 (a free port), counted; ``env()`` points clients and Spark executors at it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.counter: RequestCounter | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> CountingS3Server:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request drowns the bench
        self.counter = RequestCounter(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self.host, self.port, self.counter, threaded=True, request_handler=MotoRequestHandler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for boto3 clients and spark-submit: the endpoint and fake credentials."""
        return {"AWS_ENDPOINT_URL": self.url, **FAKE_CREDENTIALS}

    def snapshot(self) -> Counts:
        """Counts so far."""
        if self.counter is None:
            raise RuntimeError("server not started")
        return self.counter.snapshot()

    def client(self) -> Any:
        """A boto3 S3 client on this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> CountingS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
