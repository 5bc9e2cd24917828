"""The statement check of the ``sql`` agent: only one ``SELECT`` (or
``WITH ... SELECT``) statement, with no word that only a statement changing
something contains outside literals and quoted names.

A lexer per dialect tells literals, quoted names and comments apart from
the rest, so a forbidden word or a ``:name`` parameter is only seen where it
means something. This is the first line of defence; the agent also runs
every query read-only.
"""

from __future__ import annotations

import re

from datamcp.core.agents.agent import TaskRefused

#: Words that only appear in statements that change something. A query that
#: contains one outside a literal or quoted name is refused.
_FORBIDDEN = frozenset(
    (
        *("ALTER", "ANALYZE", "ATTACH", "CALL", "COPY", "CREATE", "DELETE", "DETACH"),
        *("DROP", "EXEC", "EXECUTE", "GRANT", "INSERT", "INTO", "LOAD_EXTENSION"),
        *("LOCK", "MERGE", "PRAGMA", "REINDEX", "RENAME", "REVOKE", "TRUNCATE"),
        *("UPDATE", "UPSERT", "VACUUM"),
    )
)


def check_select(sql: str, dialect: str) -> str:
    """Check that ``sql`` is one SELECT statement and return the text to run.

    The text is cut at a final ``;``, and colons inside literals, quoted
    names and comments are escaped so only ``:name`` outside them binds.

    Raises:
        AgentError: reason ``SQL_NOT_ALLOWED``, saying what was found.
    """
    lexer = _PG_LEXER if dialect == "postgresql" else _SQLITE_LEXER
    out: list[str] = []
    words: list[str] = []
    ended = False
    for token in lexer.finditer(sql):
        kind, value = token.lastgroup, token.group()
        if kind in {"space", "comment"}:
            if kind == "comment" and "/*" in value[2:]:
                raise _refuse("nested comment")
            out.append(value.replace(":", "\\:"))
            continue
        if ended:
            raise _refuse("more than one statement")
        if kind == "open":
            raise _refuse(f"unterminated {value} quote or comment")
        if kind == "end":
            ended = True
        elif kind == "quoted":
            out.append(value.replace(":", "\\:"))
        else:
            if kind == "word":
                words.append(value.upper())
            out.append(value)
    if not words:
        raise _refuse("the query is empty")
    if words[0] not in {"SELECT", "WITH"}:
        raise _refuse(f"it starts with {words[0]}")
    found = sorted({w for w in words if w in _FORBIDDEN})
    if found:
        raise _refuse(f"it contains {', '.join(found)} (quote names that are these words)")
    return "".join(out).strip()


def _lexer(postgres: bool) -> re.Pattern[str]:
    """Tokens of a query; the first alternative that matches wins."""
    quoted = [
        r"'(?:[^']|'')*'",
        r'"(?:[^"]|"")*"',
        r"`(?:[^`]|``)*`",
    ]
    if postgres:
        # E'..' strings take backslash escapes; $tag$..$tag$ strings nothing.
        quoted[:0] = [r"[eE]'(?:[^'\\]|\\.|'')*'", r"\$(?P<tag>(?:[^\W\d]\w*)?)\$.*?\$(?P=tag)\$"]
    else:
        quoted.append(r"\[[^\]]*\]")
    parts = [
        r"(?P<space>\s+)",
        r"(?P<comment>--[^\n]*|/\*.*?\*/)",
        f"(?P<quoted>{'|'.join(quoted)})",
        r"(?P<open>/\*|['\"`" + ("" if postgres else r"\[") + r"])",
        r"(?P<word>[^\W\d][\w$]*)",
        r"(?P<end>;)",
        r"(?P<other>.)",
    ]
    return re.compile("|".join(parts), re.DOTALL)


_PG_LEXER = _lexer(postgres=True)
_SQLITE_LEXER = _lexer(postgres=False)


def _refuse(why: str) -> TaskRefused:
    return TaskRefused(
        f"only a single SELECT statement is allowed: {why}", reason="SQL_NOT_ALLOWED"
    )
