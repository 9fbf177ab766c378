"""Where and how to send by STOW-RS (``StowSettings``), and the credentials (``StowAuth``).

Settings hold no secret and ship to Spark executors as they are. Credentials come from the environment
(``DICOMWEB_TOKEN`` or ``DICOMWEB_USER``/``DICOMWEB_PASSWORD``), read once on the driver; they never appear in
``repr``, logs, exceptions or ledgers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

log = logging.getLogger(__name__)
ENV_TOKEN = "DICOMWEB_TOKEN"
ENV_USER = "DICOMWEB_USER"
ENV_PASSWORD = "DICOMWEB_PASSWORD"
MB = 1024 * 1024
DEFAULT_BATCH_COUNT = 50
DEFAULT_BATCH_BYTES = 50 * MB
DEFAULT_TIMEOUT = (10.0, 300.0)


@dataclass(frozen=True)
class StowSettings:
    """Where and how to send. Picklable, holds no secret, safe to ship to Spark executors.

    ``url`` is the DICOMweb root (``https://pacs/dicom-web``); ``/studies`` is appended
    unless already there. ``timeout`` is (connect, read) seconds. A request is tried
    ``1 + max_retries`` times, waiting ``backoff_base * 2**n`` seconds (with jitter,
    at most ``backoff_max``) or the server's Retry-After in between.
    """

    url: str
    batch_count: int = DEFAULT_BATCH_COUNT
    batch_bytes: int = DEFAULT_BATCH_BYTES
    timeout: tuple[float, float] = DEFAULT_TIMEOUT
    verify_tls: bool = True
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("bad_stow_url", "the STOW-RS URL must be http(s)://host/...")
        if parts.username or parts.password:
            # The URL travels to logs, ledgers and Spark closures; credentials must not.
            raise ConfigError("credentials_in_url",
                              f"put credentials in {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}, not in the URL")
        if self.batch_count < 1 or self.batch_bytes < 1:
            raise ConfigError("bad_batch_limit", "batch count and bytes must be at least 1")
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("bad_retry_setting", "retries and backoff must not be negative")
        timeout = tuple(float(t) for t in self.timeout)
        if len(timeout) != 2 or min(timeout) <= 0:
            raise ConfigError("bad_timeout", "timeout is (connect, read) seconds, both positive")
        object.__setattr__(self, "timeout", timeout)

    @property
    def studies_url(self) -> str:
        """The STOW-RS endpoint: ``{url}/studies``."""
        base = self.url.rstrip("/")
        return base if base.endswith("/studies") else f"{base}/studies"


@dataclass(frozen=True)
class StowAuth:
    """Credentials for the endpoint; ``repr`` shows only the kind.

    It pickles, so a driver can read it once with ``from_env`` and ship it to executors, which (on YARN) do not
    inherit the driver's environment. The pickled bytes hold the secret: ship them, never log them.
    """

    kind: str | None = None  # "bearer" | "basic" | None
    user: str | None = None
    secret: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in (None, "bearer", "basic"):
            raise ConfigError("bad_auth", f"auth kind must be bearer, basic or None, not {self.kind!r}")
        if self.kind == "bearer" and not self.secret:
            raise ConfigError("bad_auth", "bearer auth needs a token")
        if self.kind == "basic" and (not self.user or self.secret is None):
            raise ConfigError("bad_auth", "basic auth needs a user and a password")

    def __repr__(self) -> str:
        return f"StowAuth(kind={self.kind!r})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Any = None) -> StowAuth:
        """Bearer from ``DICOMWEB_TOKEN``, else basic from ``DICOMWEB_USER``/``DICOMWEB_PASSWORD``, else none."""
        env = os.environ if environ is None else environ
        token = env.get(ENV_TOKEN)
        if token:
            return cls("bearer", None, token)
        user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
        if user and password is not None:
            return cls("basic", user, password)
        if user or password:
            raise ConfigError("incomplete_auth", f"set both {ENV_USER} and {ENV_PASSWORD}")
        return cls()
