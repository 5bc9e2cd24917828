"""Authentication (API keys, JWT bearer tokens) and method-level authorization.

API keys are configured only as SHA-256 digests: keys are long random
strings, so a fast digest is enough and nothing secret sits in config. JWTs
are verified with PyJWT (HS256 shared secret, RS256 public key or JWKS file).
Verified bearer tokens are cached until shortly before they expire, which
keeps signature checks off the hot path for clients that reuse a token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from datamcp.core.context import ANONYMOUS, Principal, valid_tenant
from datamcp.core.errors import ConfigError, PermissionDenied, Unauthenticated

_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str
    subject: str
    tenant: str
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JwtSettings:
    hs256_secret: str | None = None
    rs256_public_key_file: Path | None = None
    jwks_file: Path | None = None
    issuer: str | None = None
    audience: str | None = None
    tenant_claim: str = "tenant"
    roles_claim: str = "roles"
    leeway: float = 30.0
    #: Tenant of tokens without the tenant claim; None refuses such tokens.
    default_tenant: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.hs256_secret or self.rs256_public_key_file or self.jwks_file)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call: API keys, JWT verification, and the roles each method
    needs. The core's own type; ``datamcp.config`` builds it from ``auth.*``."""

    api_keys: tuple[ApiKey, ...] = ()
    jwt: JwtSettings = field(default_factory=JwtSettings)
    method_roles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys) or self.jwt.enabled


#: Protections that hold whatever ``auth.method_roles`` says: configured
#: entries add methods, or add roles to one of these (never remove them).
BUILTIN_METHOD_ROLES: Mapping[str, tuple[str, ...]] = {
    "/datamcp.v1.HealthService/GetMetrics": ("admin", "operator"),
}


def method_roles(configured: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The effective table: the built-in entries, each with the configured
    roles of the same method added, plus the configured entries."""
    table = dict(BUILTIN_METHOD_ROLES)
    for method, roles in configured.items():
        merged = [*table.get(method, ()), *roles]
        table[method] = tuple(dict.fromkeys(merged))
    return table


def hash_api_key(key: str) -> str:
    """Return the digest to put in ``auth.api_keys[].sha256`` for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Authenticator:
    """Turns an ``authorization`` header value into a :class:`Principal`."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        self._keys = {k.sha256: k for k in settings.api_keys}
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._jwt_keys = _load_jwt_keys(settings)
        self._roles = method_roles(settings.method_roles)
        # Settings are frozen: answer once, not on every call.
        self._enabled = settings.enabled

    @property
    def enabled(self) -> bool:
        return self._enabled

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify the credential.

        Raises:
            Unauthenticated: missing, malformed, unknown, expired or badly signed.
        """
        if not self._enabled:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>' "
                "or 'authorization: ApiKey <key>'",
                reason="MISSING_CREDENTIALS",
            )
        cached = self._cache.get(authorization)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        scheme = scheme.lower()
        if not credential or scheme not in {"bearer", "apikey"}:
            raise Unauthenticated(
                "malformed authorization header: expected 'Bearer <token>' or 'ApiKey <key>'",
                reason="MALFORMED_CREDENTIALS",
            )
        if scheme == "apikey" or credential.count(".") != 2:
            principal, expires = self._api_key(credential), time.time() + 60.0
        else:
            principal, expires = self._jwt(credential)
        self._remember(authorization, principal, expires)
        return principal

    def authorize(
        self, principal: Principal, method: str, required: tuple[str, ...] | None = None
    ) -> None:
        """Check the principal's roles against ``auth.method_roles``.

        Args:
            required: the method's roles when the caller has looked them up
                already (the entry does, once per method).

        Raises:
            PermissionDenied: the method needs a role the principal lacks.
        """
        if required is None:
            required = self.required_roles(method)
        if not principal.has_any_role(required):
            raise PermissionDenied(
                f"{method} requires one of the roles {', '.join(required)}; "
                f"{principal.subject} has {', '.join(sorted(principal.roles)) or 'none'}",
                reason="MISSING_ROLE",
                metadata={"method": method, "required_roles": ",".join(required)},
            )

    def required_roles(self, method: str) -> tuple[str, ...]:
        roles = self._roles
        if method in roles:
            return roles[method]
        service_wildcard = method.rsplit("/", 1)[0] + "/*"
        return roles.get(service_wildcard, ())

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        self._cache[token] = (principal, expires)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _api_key(self, key: str) -> Principal:
        digest = hash_api_key(key)
        match = self._keys.get(digest)
        # compare_digest keeps the final check constant-time.
        if match is None or not hmac.compare_digest(match.sha256, digest):
            raise Unauthenticated("unknown API key", reason="INVALID_API_KEY")
        return Principal(match.subject, match.tenant, frozenset(match.roles), "api_key")

    def _jwt(self, token: str) -> tuple[Principal, float]:
        cfg = self._settings.jwt
        if not cfg.enabled:
            raise Unauthenticated("bearer tokens are not accepted here", reason="JWT_DISABLED")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise Unauthenticated(f"malformed token: {exc}", reason="MALFORMED_TOKEN") from exc
        alg = header.get("alg")
        key = self._jwt_keys.get((alg, header.get("kid"))) or self._jwt_keys.get((alg, None))
        if key is None:
            raise Unauthenticated(
                f"token algorithm {alg!r} / key id {header.get('kid')!r} is not accepted",
                reason="UNSUPPORTED_TOKEN_KEY",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[str(alg)],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway,
                options={"require": ["exp", "sub"], "verify_aud": cfg.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("token signature is invalid", reason="BAD_SIGNATURE") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}", reason="INVALID_TOKEN") from exc
        tenant = _tenant(claims.get(cfg.tenant_claim), cfg.tenant_claim, cfg.default_tenant)
        principal = Principal(
            subject=str(claims["sub"]),
            tenant=tenant,
            roles=_roles(claims.get(cfg.roles_claim)),
            method="jwt",
        )
        return principal, float(claims["exp"])


def _tenant(value: object, claim: str, default: str | None) -> str:
    """The token's tenant. A token without the claim names no tenant: it is
    refused unless an explicit ``auth.jwt.default_tenant`` is configured (it
    must never fall silently into some shared tenant)."""
    if value is None or value == "":
        if default is None:
            raise Unauthenticated(
                f"token has no {claim!r} claim: every token must name its tenant "
                "(or the server must set auth.jwt.default_tenant)",
                reason="MISSING_TENANT",
                metadata={"claim": claim},
            )
        return default
    if not isinstance(value, str) or not valid_tenant(value):
        shown = repr(value)
        shown = shown if len(shown) <= 64 else shown[:61] + "..."
        raise Unauthenticated(
            f"token {claim!r} claim {shown} is not a valid tenant (1-128 letters, digits, - _ .)",
            reason="INVALID_TENANT",
        )
    return value


def _roles(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(str(v) for v in value)
    return frozenset()


def _load_jwt_keys(settings: AuthSettings) -> Mapping[tuple[str | None, str | None], Any]:
    """Index verification keys by (algorithm, key id); None kid matches any.

    Raises:
        ConfigError: a key file that cannot be parsed.
    """
    try:
        return _read_jwt_keys(settings)
    except (ValueError, TypeError, OSError, jwt.PyJWTError) as exc:
        raise ConfigError([f"auth.jwt: cannot load verification key: {exc}"]) from exc


def _read_jwt_keys(settings: AuthSettings) -> dict[tuple[str | None, str | None], Any]:
    cfg = settings.jwt
    keys: dict[tuple[str | None, str | None], Any] = {}
    if cfg.hs256_secret:
        keys[("HS256", None)] = cfg.hs256_secret
    if cfg.rs256_public_key_file:
        keys[("RS256", None)] = load_pem_public_key(cfg.rs256_public_key_file.read_bytes())
    if cfg.jwks_file:
        jwks = jwt.PyJWKSet.from_json(cfg.jwks_file.read_text(encoding="utf-8"))
        for jwk in jwks.keys:
            keys[(jwk.algorithm_name if jwk.algorithm_name else "RS256", jwk.key_id)] = jwk.key
    return keys
