"""moto's S3 in a process of its own, served over HTTPS with keep-alive, for bench/s3cpu.py.

uvicorn runs moto's S3 app with HTTP/1.1 keep-alive and TLS (a self-signed certificate the client trusts through
``AWS_CA_BUNDLE``), the way S3 serves: so TLS and connection reuse are in the client's bill as they would be on AWS,
and moto's own CPU stays in another process. ``python bench/s3endpoint.py --port P [--cert C --key K]`` serves.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from typing import Any

BUCKET = "bench-s3cpu"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


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
        args = [sys.executable, os.path.abspath(__file__), "--port", str(self.port)]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="moto's S3 app under uvicorn (HTTP/1.1 keep-alive, optional TLS)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    args = p.parse_args(argv)
    serve(args.port, args.cert, args.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
