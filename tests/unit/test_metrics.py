"""Latency histogram accuracy and snapshot shape."""

from __future__ import annotations

import random

import pytest

from datamcp.core.metrics import LatencyHistogram, MetricsRegistry


def test_percentiles_are_within_ten_percent() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(0, 1) for _ in range(20_000)]
    hist = LatencyHistogram()
    for s in samples:
        hist.record(s)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * len(ordered)) - 1]
        assert hist.percentile(q) == pytest.approx(exact, rel=0.1)
    assert hist.percentile(1.0) == max(samples)


def test_registry_counts_errors_and_sections() -> None:
    registry = MetricsRegistry(clock=lambda: 1000.0)
    registry.record_call("/a/B", "OK", 1.0)
    registry.record_call("/a/B", "UNAVAILABLE", 3.0)
    registry.add_section_provider("infrastructure", lambda: {"x": 1.0})
    snap = registry.snapshot()
    (method,) = snap.methods
    assert (method.requests, method.errors) == (2, 1)
    assert method.codes == {"OK": 1, "UNAVAILABLE": 1}
    assert snap.sections["infrastructure"] == {"x": 1.0}
    assert set(snap.sections) == {"agents", "pipelines", "memory", "infrastructure"}
    with pytest.raises(ValueError):
        registry.add_section_provider("nope", dict)
