"""Bearer tokens for ``serve``: JWT (PyJWT), HS256 with a secret from the environment or RS256 with a JWKS file.

A token's ``patient_ids`` claim is the list of patients whose objects it may see; ``["*"]`` means every
patient (minted only on request, with ``token --all-patients``). Every token must carry ``exp`` and the
audience ``dicom-reassembly``. Secrets are read from the environment (``DICOM_REASSEMBLY_JWT_SECRET``)
and never logged; a token is never logged either.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import jwt

from ..errors import ConfigError

ENV_SECRET = "DICOM_REASSEMBLY_JWT_SECRET"
AUDIENCE = "dicom-reassembly"
ISSUER = "dicom-reassembly"
ALL_PATIENTS = "*"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


class AuthError(Exception):
    """A request's token is missing or invalid (HTTP 401); the message is one line, safe to show."""


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: ``patient_ids`` None means every patient."""

    subject: str | None
    patient_ids: frozenset[str] | None

    def may_see(self, patient_id: str | None) -> bool:
        """True when the token covers this patient (an object without PatientID only with ``*``)."""
        return self.patient_ids is None or (patient_id is not None and patient_id in self.patient_ids)


@dataclass(frozen=True)
class AuthSettings:
    """How tokens are checked: ``secret`` (HS256) or ``jwks`` (RS256 public keys by ``kid``), not both."""

    secret: str | None = field(default=None, repr=False)
    jwks: str | None = None  # the JWKS file's text
    leeway: float = 30.0

    def __post_init__(self) -> None:
        if bool(self.secret) == bool(self.jwks):
            raise ConfigError("bad_auth", f"set {ENV_SECRET} (HS256) or give --jwks FILE (RS256), one of them")
        if self.secret and len(self.secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError("weak_secret", f"{ENV_SECRET} must be at least {MIN_SECRET_BYTES} bytes")

    def __repr__(self) -> str:
        return f"AuthSettings(alg={'HS256' if self.secret else 'RS256'})"

    @classmethod
    def from_env(cls, jwks_path: str | None = None, environ: dict[str, str] | None = None) -> AuthSettings:
        """RS256 from ``jwks_path`` when given, else HS256 from the environment."""
        env = os.environ if environ is None else environ
        if jwks_path:
            try:
                with open(jwks_path, encoding="utf-8") as f:
                    text = f.read()
                jwt.PyJWKSet.from_json(text)
            except OSError as exc:
                raise ConfigError("bad_jwks", exc.strerror or type(exc).__name__, uri=jwks_path) from exc
            except (jwt.PyJWTError, ValueError) as exc:
                raise ConfigError("bad_jwks", f"not a JWKS: {exc}", uri=jwks_path) from exc
            return cls(jwks=text)
        return cls(secret=env.get(ENV_SECRET))


def _keys(settings: AuthSettings) -> dict[str | None, object]:
    keyset = jwt.PyJWKSet.from_json(settings.jwks or "{}")
    return {k.key_id: k.key for k in keyset.keys}


def verify_token(token: str, settings: AuthSettings) -> Principal:
    """The token's principal, or AuthError (expired, bad signature, wrong audience, no patient_ids...)."""
    try:
        if settings.secret:
            claims = jwt.decode(token, settings.secret, algorithms=["HS256"], audience=AUDIENCE,
                                leeway=settings.leeway, options={"require": ["exp", "aud"]})
        else:
            kid = jwt.get_unverified_header(token).get("kid")
            keys = _keys(settings)
            key = keys.get(kid) if kid is not None else (next(iter(keys.values())) if len(keys) == 1 else None)
            if key is None:
                raise AuthError("invalid token: no key in the JWKS for its kid")
            claims = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, leeway=settings.leeway,
                                options={"require": ["exp", "aud"]})
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {str(exc).splitlines()[0][:120]}") from exc
    ids = claims.get("patient_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AuthError("invalid token: patient_ids must be a list of strings")
    subject = claims.get("sub") if isinstance(claims.get("sub"), str) else None
    return Principal(subject, None if ALL_PATIENTS in ids else frozenset(ids))


def parse_ttl(text: str) -> int:
    """``3600``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    m = _TTL.match(text)
    if not m or int(m.group(1)) <= 0:
        raise ConfigError("bad_ttl", f"{text!r} is not a positive duration like 90s, 15m, 1h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def mint_token(patient_ids: Iterable[str], ttl_seconds: int, secret: str, subject: str | None = None,
               now: float | None = None) -> str:
    """An HS256 token for local use: ``patient_ids`` (``["*"]`` for all), expiring after ``ttl_seconds``."""
    ids = sorted(set(patient_ids))
    if not ids:
        raise ConfigError("no_patient", "a token names at least one patient (or --all-patients)")
    AuthSettings(secret=secret)  # the same strength rule as the server's
    issued = int(now if now is not None else time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": issued, "exp": issued + ttl_seconds, "patient_ids": ids}
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, secret, algorithm="HS256")


def jwks_for_public_key(public_key: object, kid: str) -> str:
    """A one-key JWKS document (for RS256 setups and tests)."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
    jwk.update(kid=kid, use="sig", alg="RS256")
    return json.dumps({"keys": [jwk]})
