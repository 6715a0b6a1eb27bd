"""`Children`: a labelled child looked up once, counting into the same series as labels()."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.metrics import Children


def test_children_are_looked_up_once_and_count_where_labels_would() -> None:
    registry = CollectorRegistry()
    counter = Counter("lc_test_things", "things", ["kind", "replay"], registry=registry)
    child = Children(counter)
    assert child("a", "false") is child("a", "false")
    child("a", "false").inc()
    child("a", "false").inc(2)
    child("b", "true").inc()
    counter.labels("a", "false").inc()
    assert registry.get_sample_value("lc_test_things_total", {"kind": "a", "replay": "false"}) == 4
    assert registry.get_sample_value("lc_test_things_total", {"kind": "b", "replay": "true"}) == 1
