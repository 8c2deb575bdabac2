"""The worker's view of the station metadata topic (``pm25.stations``, compacted, key station_id).

Every worker reads the whole topic (no consumer group: each needs every station), first to its end
before the agent takes any reading, so that the first forecasts already see the networks, then
follows it: a new or changed station applies from its next reading on. A record that is not a
valid station is skipped with a log line (``pm25 stations load`` checks files before publishing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from pm25.settings import Settings
from pm25.stations import Station, station_from_json

__all__ = ["follow_stations"]

log = logging.getLogger(__name__)

#: How long the worker waits at start for the metadata topic's partitions to be known.
TOPIC_WAIT_S = 5.0


async def follow_stations(
    settings: Settings, apply: Callable[[list[Station]], None], caught_up: asyncio.Event, retry_s: float = 2.0
) -> None:
    """Read the topic to its end (then set ``caught_up``) and keep following it; ``apply`` gets
    each batch of valid stations. Broker errors are retried; a topic still unknown after
    ``TOPIC_WAIT_S`` means no metadata for now (it is followed once it appears)."""
    kwargs = settings.aiokafka_reader()
    topic = settings.stations_topic
    while True:
        consumer = AIOKafkaConsumer(**kwargs)
        try:
            await consumer.start()
            consumer.subscribe([topic])  # no group: every partition, assigned once the topic is known
            deadline = asyncio.get_running_loop().time() + TOPIC_WAIT_S
            total = 0
            while not consumer.assignment() and asyncio.get_running_loop().time() < deadline:
                total += _apply(await consumer.getmany(timeout_ms=200), apply)
            tps = sorted(consumer.assignment())
            if not tps:
                log.info("no station metadata topic %s yet: every station is forecast alone until it appears", topic)
            else:
                end = await consumer.end_offsets(tps)
                while await _behind(consumer, tps, end):
                    total += _apply(await consumer.getmany(timeout_ms=500), apply)
                log.info("station metadata: %d records read from %s", total, topic)
            caught_up.set()
            while True:  # follow it (a topic created later is picked up by the subscription)
                _apply(await consumer.getmany(timeout_ms=1000), apply)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a broker outage must not stop the worker: retry
            log.warning("station metadata: %s; retrying in %.0f s", err, retry_s)
            await asyncio.sleep(retry_s)
        finally:
            await consumer.stop()


async def _behind(consumer: AIOKafkaConsumer, tps: list[TopicPartition], end: dict[TopicPartition, int]) -> bool:
    for tp in tps:
        if await consumer.position(tp) < end[tp]:
            return True
    return False


def _apply(batches: dict, apply: Callable[[list[Station]], None]) -> int:
    stations = []
    for messages in batches.values():
        for msg in messages:
            if msg.value is None:
                continue
            try:
                stations.append(station_from_json(msg.value))
            except ValueError as err:
                log.warning("station metadata: record at offset %d skipped: %s", msg.offset, err)
    if stations:
        apply(stations)
    return len(stations)
