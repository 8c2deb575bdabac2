"""The benchmark waits for the worker's forecasts without reading them while it is measured
(benchmarks.bench._await_published): its count must be exact on both brokers, the embedded one
answering end offsets wrongly (pm25.embedded)."""

from __future__ import annotations

import pytest

from benchmarks.bench import _await_published
from pm25.kafka import make_producer


@pytest.mark.parametrize("broker", ["apache", "embedded"], indirect=True)
def test_the_bench_counts_the_messages_published_exactly(settings) -> None:
    topic = settings.forecasts_topic
    producer = make_producer(settings, linger_ms=20)  # several records per batch: the embedded end offset is wrong then
    for i in range(2500):
        producer.send(topic, key=f"S{i % 37}".encode(), value=b"x" * 300)
    producer.flush()
    producer.close()
    ends = _await_published(settings, topic, 2500, timeout=60)
    assert sum(ends.values()) == 2500
    # one more than there are: the wait ends at its timeout with the true count, not more
    assert sum(_await_published(settings, topic, 2501, timeout=3).values()) == 2500
    # with a quiet period: still the true count once nothing more arrives
    assert sum(_await_published(settings, topic, 100, timeout=30, quiet_s=1.0).values()) == 2500
    # from where a previous wait ended: the messages after it are counted on top
    producer = make_producer(settings, linger_ms=20)
    for i in range(700):
        producer.send(topic, key=f"S{i % 37}".encode(), value=b"y" * 300)
    producer.flush()
    producer.close()
    assert sum(_await_published(settings, topic, 3200, timeout=60, start=ends).values()) == 3200
