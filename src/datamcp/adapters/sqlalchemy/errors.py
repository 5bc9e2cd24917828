"""What a database error means to the core: an outage (``Unavailable``), a
value the database will not store (``InvalidArgument``), or neither (a bug,
left as it is). Their text never carries SQL or parameters; the original
stays chained as the cause, for the log."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from datamcp.core.errors import DataMCPError, InvalidArgument, Unavailable

#: SQLite result codes that mean the file, not the statement, is the trouble.
_SQLITE_OUTAGES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_NOMEM",
    "SQLITE_PROTOCOL",
)
#: SQLSTATE classes of connection trouble, resources, operator intervention
#: (shutdown, crash recovery) and system errors.
_PG_OUTAGES = ("08", "53", "57P", "58")


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be used right now (as
    opposed to this statement or its data being wrong)."""
    if isinstance(error, sa_exc.DisconnectionError | sa_exc.TimeoutError | OSError):
        return True
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if sqlite_name is not None:
        return str(sqlite_name).startswith(_SQLITE_OUTAGES)
    state = str(getattr(orig, "sqlstate", None) or "")
    if state:
        return state.startswith(_PG_OUTAGES)
    return isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)


def translate(error: BaseException) -> DataMCPError | None:
    """The core error a database error means to callers, or None."""
    if isinstance(error, DataMCPError):
        return None
    if is_outage(error):
        return Unavailable(
            "the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE"
        )
    if isinstance(error, sa_exc.DataError):
        return InvalidArgument(
            "a value could not be stored (out of the database's range or encoding)",
            reason="VALUE_NOT_STORABLE",
        )
    return None
