"""Page sizes and opaque page tokens shared by every listing API."""

from __future__ import annotations

import base64
import json
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_size(size: int) -> int:
    if size < 0 or size > MAX_PAGE:
        raise InvalidArgument(
            "invalid page_size", [FieldViolation("page_size", f"0 to {MAX_PAGE} (0 = default)")]
        )
    return size or DEFAULT_PAGE


def encode(value: Any) -> str:
    """An opaque token for ``value`` (anything JSON can hold)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def decode(token: str) -> Any:
    """The value behind a token; None for the empty (first page) token.

    Raises:
        InvalidArgument: the token was not made by :func:`encode`.
    """
    if not token:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise bad_token() from None


def bad_token() -> InvalidArgument:
    return InvalidArgument(
        "invalid page_token", [FieldViolation("page_token", "use the token from the last page")]
    )


def keyset(token: str) -> tuple[float, str] | None:
    """A (time, id) position from a token made of ``encode([time, id])``."""
    value = decode(token)
    if value is None:
        return None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int | float)
        and isinstance(value[1], str)
    ):
        raise bad_token()
    return float(value[0]), value[1]
