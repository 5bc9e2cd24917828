"""Per-call state that flows through the core without being passed by hand.

Entry points (gRPC interceptor, Lambda handlers) set these for the duration
of one call; core code reads them.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the subject, the tenant whose data they see, their roles."""

    subject: str
    tenant: str
    roles: frozenset[str]
    method: str = "anonymous"

    def has_any_role(self, roles: tuple[str, ...]) -> bool:
        return not roles or not self.roles.isdisjoint(roles)


def valid_tenant(tenant: str) -> bool:
    """Letters, digits and - _ . only (1-128): never the all-tenants sentinel
    ``*`` or a pattern, and safe inside composite keys (``|`` separated)."""
    return 0 < len(tenant) <= 128 and all(c.isalnum() or c in "-_." for c in tenant)


#: The caller when authentication is off (loopback development only).
ANONYMOUS = Principal("anonymous", "default", frozenset({"admin"}), "none")

current_principal: ContextVar[Principal] = ContextVar("current_principal", default=ANONYMOUS)
current_request_id: ContextVar[str] = ContextVar("current_request_id", default="")


def current_tenant() -> str:
    """The tenant of the call being served."""
    return current_principal.get().tenant
