"""Servers the campaign tests start as subprocesses: a moto server with IAM enforced, a Prefect server.

Both are process-wide in what they change (moto's auth mode and restore timing, Prefect's database), so each
runs in its own process here, not in the session-scoped moto server of conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Prefect's server answers 503 when its SQLite database is busy (a loaded machine) and 429 when it sheds load;
# Prefect's own client retries both, for every method, so the tests' client does too.
RETRIED_STATUS = (429, 503)


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None, timeout: float = 30,
         attempts: int = 6) -> Any:
    """One JSON request (retried on 429/503 with backoff); returns the decoded answer (None for an empty body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    ctype = "text/plain" if raw is not None else "application/json"
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRIED_STATUS or attempt == attempts - 1:
                raise
            time.sleep(min(2 ** attempt, 10))
    return None


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a process group started with start_new_session=True."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class IamMoto:
    """A moto server whose requests are checked against IAM once ``enforce()`` has been called."""

    url: str
    proc: subprocess.Popen
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)

    def admin(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="admin", aws_secret_access_key="admin")

    def client(self, service: str, user: str) -> Any:
        import boto3

        key, secret = self.keys[user]
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret)

    def add_user(self, name: str, buckets: list[str], actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed ``actions`` on ``buckets`` only; returns (and keeps) its first access key."""
        iam = self.admin("iam")
        iam.create_user(UserName=name)
        resources = [f"arn:aws:s3:::{b}" for b in buckets] + [f"arn:aws:s3:::{b}/*" for b in buckets]
        iam.put_user_policy(UserName=name, PolicyName="buckets", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resources}]}))
        self.keys[name] = self.new_key(name)
        return self.keys[name]

    def new_key(self, user: str) -> tuple[str, str]:
        key = self.admin("iam").create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def restore_takes(self, seconds: float) -> None:
        """A restore stays in progress ``seconds`` after it is first looked at (moto's state manager)."""
        http("POST", f"{self.url}/moto-api/state-manager/set-transition",
             {"model_name": "s3::keyrestore", "transition": {"progression": "time", "seconds": seconds}})

    def enforce(self) -> None:
        """From now on every request is authorised against the IAM users and policies (INITIAL_NO_AUTH_ACTION_COUNT)."""
        http("POST", f"{self.url}/moto-api/reset-auth", raw=b"0")


@contextmanager
def iam_moto_server() -> Iterator[IamMoto]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/moto-api/data.json", 60, proc)
        yield IamMoto(url, proc)
    finally:
        stop(proc)


@dataclass
class PrefectServer:
    """A real Prefect server (SQLite under ``home``)."""

    api: str
    home: str
    proc: subprocess.Popen

    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api, "PREFECT_HOME": self.home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "INFO"}


@contextmanager
def prefect_server(home: str, log_path: str) -> Iterator[PrefectServer]:
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([os.path.join(BIN, "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(api + "/health", 180, proc)
        yield PrefectServer(api, home, proc)
    finally:
        stop(proc)
