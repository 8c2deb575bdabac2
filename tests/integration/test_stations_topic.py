"""`pm25 stations load` on the test session's broker (Apache Kafka): the station topic is
compacted, every station arrives keyed by its id and decodes to the record in the file."""

from __future__ import annotations

import pytest

from pm25.stations import BEIJING_STATIONS, read_stations_csv, station_from_json
from pm25_ops.cli import main
from tests.integration.conftest import collect

pytestmark = pytest.mark.broker


def _cleanup_policy(settings, topic: str) -> str:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="pm25-test")
    try:
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    # kafka-python 3: {resource type: {resource name: {config key: {config data}}}}
    for by_name in result.values():
        entry = by_name.get(topic, {}).get("cleanup.policy")
        if entry is not None:
            return str(entry.get("value", entry) if isinstance(entry, dict) else entry)
    raise AssertionError(f"no cleanup.policy reported for {topic}")


def test_stations_load_publishes_a_compacted_keyed_topic(settings, settings_env, monkeypatch, capsys):
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    assert main(["stations", "load", str(BEIJING_STATIONS)]) == 0
    assert f"published 12 stations in 1 network(s) (beijing) to {settings.stations_topic}" in capsys.readouterr().out
    messages = collect(settings, settings.stations_topic, lambda m: len(m) >= 12, timeout=30)
    expected = read_stations_csv(BEIJING_STATIONS)
    got = {m.key.decode(): station_from_json(m.value) for m in messages}
    assert got == expected
    assert _cleanup_policy(settings, settings.stations_topic) == "compact"
    print(f"stations topic: {len(messages)} records, {len(got)} stations")
