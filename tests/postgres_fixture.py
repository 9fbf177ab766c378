"""A real PostgreSQL server on loopback with password (SCRAM) authentication.

Use it with ``from postgres_fixture import postgres  # noqa: F401`` in a test module
(tests/ is on sys.path under pytest's default import mode, as for orthanc_fixture).

initdb and postgres refuse to run as root, so under root both run as the ``postgres``
system user (created by the Debian package) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from helpers import free_port, require_tool

PG_USER = "dr_test"
PG_PASSWORD = "secret-pw"
PG_DB = "dicom_reassembly_test"
START_TIMEOUT_S = 30


def find_pg_bin() -> str:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, else the folder of ``initdb`` on PATH."""
    def version(path: str) -> tuple[int, ...]:
        name = os.path.basename(os.path.dirname(path))
        return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)

    dirs = sorted((d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))),
                  key=version)
    if dirs:
        return dirs[-1]
    return os.path.dirname(require_tool("initdb"))


@dataclass
class PostgresServer:
    """Connection facts for the test server plus a ``query`` helper that runs psql."""

    host: str
    port: int
    db: str
    user: str
    password: str = field(repr=False)
    psql: str = "psql"

    @property
    def jdbc_url(self) -> str:
        """A credential-free JDBC URL for the test database."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{self.db}"

    def query(self, sql: str, db: str | None = None) -> list[tuple[str, ...]]:
        """Run ``sql`` with psql over TCP (password auth); rows as tuples of strings, NULL as ''."""
        env = dict(os.environ, PGPASSWORD=self.password, PGCONNECT_TIMEOUT="10")
        cmd = [self.psql, "-X", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port),
               "-U", self.user, "-d", db or self.db, "-c", sql]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return [tuple(line.split("|")) for line in done.stdout.splitlines() if line]


class _Cluster:
    """initdb + pg_ctl on a temp folder, as the postgres system user when we are root."""

    def __init__(self, bindir: str, workdir: str) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = os.path.join(workdir, "data")
        self.logfile = os.path.join(workdir, "postgres.log")
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = require_tool("runuser")
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root needs the 'postgres' system user (Debian postgresql package)")
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
            self.prefix = [runuser, "-u", "postgres", "--"]
            self.owner = (pw.pw_uid, pw.pw_gid)
        else:
            self.owner = (os.getuid(), os.getgid())

    def run(self, tool: str, *args: str) -> None:
        """Run a PostgreSQL server tool; its output goes into the failure message only."""
        done = subprocess.run([*self.prefix, os.path.join(self.bindir, tool), *args],
                              capture_output=True, text=True, timeout=START_TIMEOUT_S + 30, cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                               f"\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the server log, for failure messages."""
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def init(self, user: str, password: str) -> None:
        """A new cluster whose superuser is ``user`` and where every connection needs a SCRAM password."""
        pwfile = os.path.join(self.workdir, "pwfile")
        with open(pwfile, "w", encoding="utf-8") as f:
            f.write(password + "\n")
        os.chmod(pwfile, 0o600)
        os.chown(pwfile, *self.owner)
        try:
            self.run("initdb", "-D", self.datadir, "-U", user, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                     "--encoding=UTF8", "--locale=C", "--no-sync")
        finally:
            os.unlink(pwfile)

    def start(self, port: int) -> None:
        """Start on 127.0.0.1:port only, with the socket in the work folder; wait until it accepts connections."""
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={self.workdir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
        self.run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", options, "-w", "-t", str(START_TIMEOUT_S),
                 "start")

    def stop(self) -> None:
        """Fast shutdown; a server that is already down is fine."""
        if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            self.run("pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", str(START_TIMEOUT_S), "stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run, on 127.0.0.1 with a free port and one test database."""
    bindir = find_pg_bin()
    psql = shutil.which("psql") or os.path.join(bindir, "psql")
    if not os.path.exists(psql):
        require_tool("psql")
    workdir = tempfile.mkdtemp(prefix="dr-postgres-")
    cluster = _Cluster(bindir, workdir)
    server = PostgresServer("127.0.0.1", free_port(), PG_DB, PG_USER, PG_PASSWORD, psql=psql)
    try:
        cluster.init(PG_USER, PG_PASSWORD)
        cluster.start(server.port)
        server.query(f"CREATE DATABASE {PG_DB}", db="postgres")
        yield server
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
