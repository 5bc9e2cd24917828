"""Page sizes, opaque page tokens, and pages bounded by bytes, shared by
every listing API.

A token is base64 of a small JSON value (a name, a sequence number, a
``[time, id]`` position). A caller can send anything as a token, so
:func:`decode` takes only what :func:`encode` makes: short, flat JSON of
finite numbers within 64 bits and short strings without control characters.
Deeply nested JSON, NaN, 1e400 or a NUL inside a string is an invalid token
(INVALID_ARGUMENT), never an error further down (a recursion limit, a float
overflow, a database that refuses NUL).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from datamcp.core.errors import FieldViolation, InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Longest token accepted (ours are far shorter: a position of a few ids).
MAX_TOKEN = 8192
#: Longest string and most items inside a token.
MAX_TOKEN_TEXT = 2048
MAX_TOKEN_ITEMS = 8
_INT64 = 2**63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def page_size(size: int) -> int:
    if size < 0 or size > MAX_PAGE:
        raise InvalidArgument(
            "invalid page_size", [FieldViolation("page_size", f"0 to {MAX_PAGE} (0 = default)")]
        )
    return size or DEFAULT_PAGE


def encode(value: Any) -> str:
    """An opaque token for ``value`` (anything JSON can hold)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def decode(token: str) -> Any:
    """The value behind a token; None for the empty (first page) token.

    Raises:
        InvalidArgument: the token was not made by :func:`encode`.
    """
    if not token:
        return None
    if len(token) > MAX_TOKEN:
        raise bad_token()
    try:
        value = json.loads(
            base64.urlsafe_b64decode(token.encode()), parse_constant=_refuse_constant
        )
    except (ValueError, UnicodeError, RecursionError):
        raise bad_token() from None
    if isinstance(value, list):
        if len(value) > MAX_TOKEN_ITEMS or not all(_scalar(v) for v in value):
            raise bad_token()
    elif not _scalar(value):
        raise bad_token()
    return value


def _scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_TOKEN_TEXT and _CONTROL.search(value) is None
    return False


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
        and not isinstance(value[0], bool)
        and isinstance(value[1], str)
    ):
        raise bad_token()
    return float(value[0]), value[1]


def after_text(token: str) -> str:
    """The name a token made of ``encode(name)`` continues after ("" first)."""
    value = decode(token)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_token()
    return value


def after_number(token: str) -> int:
    """The non-negative position a token made of ``encode(n)`` continues
    after (0 first)."""
    value = decode(token)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_token()
    return value


#: Takes one more item for the page being answered, or says it does not fit
#: (see :func:`fill`).
Fits = Callable[[Any], bool]


def fill(items: Sequence[T], more: bool, fits: Fits | None) -> tuple[list[T], bool]:
    """The items of a page the entry point can send, and whether a next page
    may hold more.

    ``items`` is a page bounded by count, ``more`` whether the store has
    more after it. When ``fits`` is given, the page is bounded by what the
    entry point can send too: ``fits(item)`` takes each item in order
    (converting it, say) and returns False for the first that does not fit
    any more; the page stops there and a next page follows. ``fits`` must
    take the first item of a page whatever its size, so paging never stalls.
    """
    if fits is None:
        return list(items), more
    kept: list[T] = []
    for item in items:
        if not fits(item):
            return kept, True
        kept.append(item)
    return kept, more
