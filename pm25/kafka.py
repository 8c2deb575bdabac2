"""kafka-python clients and topic creation, configured from Settings (used by the producer, the
forecast consumer, the demo and the tests; the worker uses Faust/aiokafka)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from pm25.embedded import kafka_consumer_overrides
from pm25.settings import Settings
from pm25.stations import Station, station_to_json

__all__ = [
    "TOPIC_CONFIGS",
    "BrokerUnreachable",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "partition_counts",
    "publish_stations",
    "wait_for_broker",
]

log = logging.getLogger(__name__)

#: Forecasts and scores are keyed by station: a compacted topic keeps each station's latest.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "forecasts": {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 24 * 3600 * 1000)},
    "dlq": {"retention.ms": str(30 * 24 * 3600 * 1000)},
    # station metadata: the latest record per station, kept for ever
    "stations": {"cleanup.policy": "compact"},
}


class BrokerUnreachable(ConnectionError):
    """No broker answered at the configured address within the timeout."""


def wait_for_broker(settings: Settings, timeout: float = 10.0) -> None:
    """Return once a broker at ``settings.bootstrap_servers`` answers a metadata request; raise
    BrokerUnreachable (naming the address) when none does within ``timeout`` seconds. The client's
    own retry warnings are kept quiet meanwhile: the one line of the exception says it all."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    quiet = logging.getLogger("kafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    deadline = time.monotonic() + timeout
    last = "no answer"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerUnreachable(
                    f"cannot reach a Kafka broker at {settings.bootstrap_servers} within {timeout:g} s ({last})"
                )
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=settings.bootstrap_servers,
                    client_id="pm25-probe",
                    request_timeout_ms=max(int(left * 1000), 1000),
                    bootstrap_timeout_ms=max(int(left * 1000), 500),
                    reconnect_backoff_max_ms=500,
                    **settings.kafka_python_security(),
                )
            except (KafkaError, OSError, ValueError) as err:
                last = type(err).__name__
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
                continue
            try:
                if admin.describe_cluster().get("brokers"):
                    return
            except (KafkaError, OSError) as err:
                last = type(err).__name__
            finally:
                admin.close()
    finally:
        quiet.setLevel(level)


def ensure_topics(settings: Settings, timeout: float = 30.0, *, routed: bool = False) -> list[str]:
    """Create the project's topics if missing (readings, forecasts, DLQ, scores, stations, and with
    ``routed`` the station-keyed readings topic that ``pm25 route`` reads); returns the names
    created. Partition counts follow the readings topic (forecasts are co-partitioned)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=settings.bootstrap_servers, client_id="pm25-admin", **settings.kafka_python_security()
            )
            break
        except (KafkaConnectionError, KafkaTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    wanted = {
        settings.readings_topic: ("readings", settings.partitions),
        settings.forecasts_topic: ("forecasts", settings.partitions),
        settings.dlq_topic: ("dlq", 1),
        settings.scores_topic: ("scores", 1),
        settings.stations_topic: ("stations", 1),
    }
    if routed:
        wanted[settings.station_readings_topic] = ("readings", settings.partitions)
    created = []
    try:
        existing = set(admin.list_topics())
        for name, (role, partitions) in wanted.items():
            if name in existing:
                continue
            configs = TOPIC_CONFIGS.get(role, {})
            try:
                admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
            except TopicAlreadyExistsError:
                continue
            except KafkaError as err:  # a broker that refuses the configs still gets the topic
                log.warning("creating %s with %s failed (%s); creating it without configs", name, configs, err)
                admin.create_topics([NewTopic(name, partitions, 1)])
            created.append(name)
    finally:
        admin.close()
    return created


def partition_counts(settings: Settings, *topics: str) -> dict[str, int | None]:
    """Partition count of each topic (None if it cannot be described)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,  # no group: nothing to commit (and no warning saying so)
        **settings.kafka_python_security(),
    )
    try:
        return {t: (len(consumer.partitions_for_topic(t) or ()) or None) for t in topics}
    finally:
        consumer.close()


def worker_start_up(settings: Settings, timeout: float, log_level: int = logging.INFO) -> dict[str, int | None]:
    """What a worker asks the broker before it starts: it answers (else BrokerUnreachable), the
    topics exist (created if missing), and the partition counts of the readings and forecasts
    topics. Run in a fresh child process by ``pm25 worker`` (kafka-python, which these calls use,
    then never loads in the serving process), so it sets up that process's logging itself."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("kafka").setLevel(logging.WARNING)
    wait_for_broker(settings, timeout)
    ensure_topics(settings)
    return partition_counts(settings, settings.readings_topic, settings.forecasts_topic)


def make_producer(settings: Settings, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "acks": "all",
        "linger_ms": 5,
        "client_id": "pm25-producer",
    }
    kwargs.update(settings.kafka_python_security())
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)


def make_consumer(settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any) -> Any:
    from kafka import KafkaConsumer

    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": group_id is not None,
        "client_id": "pm25-consumer",
    }
    kwargs.update(settings.kafka_python_security())
    if settings.embedded_broker:
        kwargs.update(kafka_consumer_overrides())
    kwargs.update(overrides)
    return KafkaConsumer(*topics, **kwargs)


def publish_stations(settings: Settings, stations: Iterable[Station], timeout: float = 30.0) -> int:
    """Publish station records to the compacted station topic, keyed by station id; returns how
    many, once the broker acknowledged every one (an error otherwise)."""
    producer = make_producer(settings)
    try:
        sent = [
            producer.send(settings.stations_topic, key=s.station_id.encode(), value=station_to_json(s))
            for s in stations
        ]
        for future in sent:
            future.get(timeout=timeout)
    finally:
        producer.close()
    return len(sent)
