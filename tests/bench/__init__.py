"""Benchmarks for the mesh, run with ``make bench`` (``python -m tests.bench``).

Every server and every load generator runs in its own process, so the
numbers reflect what a real client sees over loopback and the client never
steals the server's event loop. ``__main__`` runs the named sections in
order; later work adds sections there.
"""
