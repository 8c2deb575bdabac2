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

from pm25.embedded import aiokafka_consumer_overrides
from pm25.settings import Settings
from pm25.stations import Station, station_from_json

__all__ = ["follow_stations"]

log = logging.getLogger(__name__)


async def follow_stations(
    settings: Settings, apply: Callable[[list[Station]], None], caught_up: asyncio.Event, retry_s: float = 2.0
) -> None:
    """Read the topic to its end (then set ``caught_up``) and keep following it; ``apply`` gets
    each batch of valid stations. Broker errors are retried; an absent topic means no metadata."""
    kwargs = {
        "bootstrap_servers": settings.bootstrap_servers,
        "group_id": None,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        **(aiokafka_consumer_overrides() if settings.embedded_broker else {}),
        **settings.aiokafka_security(),
    }
    topic = settings.stations_topic
    while True:
        consumer = AIOKafkaConsumer(**kwargs)
        try:
            await consumer.start()
            known = await consumer.topics()  # fetches the cluster's metadata
            partitions = consumer.partitions_for_topic(topic) if topic in known else None
            tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
            if not tps:
                log.info("no station metadata topic %s: every station is forecast alone", topic)
            else:
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                end = await consumer.end_offsets(tps)
                total = 0
                while await _behind(consumer, tps, end):
                    total += _apply(await consumer.getmany(timeout_ms=500), apply)
                log.info("station metadata: %d records read from %s", total, topic)
            caught_up.set()
            if not tps:
                return  # topics are created before the readings flow (pm25 topics); restart to pick it up
            while True:
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
