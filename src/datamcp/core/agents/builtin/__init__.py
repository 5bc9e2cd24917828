"""The built-in agents.

Their capability namespaces are reserved: no remote agent may offer a
capability named ``echo`` or under ``sql.``, ``http.``, ``profile.``,
``memory.`` or ``pipeline.``, whether or not that agent is enabled here.
"""

BUILTIN_NAMESPACES = frozenset({"echo", "sql", "http", "profile", "memory", "pipeline"})


def is_builtin_capability(name: str) -> bool:
    return name.split(".", 1)[0] in BUILTIN_NAMESPACES
