"""The published JSON Schemas (docs/contracts/) are the ones the code generates, and real messages
(readings from the shipped data, forecasts from the stream's own encoder) validate against them."""

import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from pm25 import contracts
from pm25.schema import parse_reading, reading_to_json
from pm25.settings import Settings
from pm25.stations import station_to_json
from producer.replay import load_source
from stream_processor.backtest import make_engine
from stream_processor.engine import run_offline

FOLDER = Path(__file__).resolve().parents[2] / "docs" / "contracts"


@pytest.mark.parametrize("name", sorted(contracts.SCHEMAS))
def test_the_checked_in_schema_is_the_generated_one(name):
    assert (FOLDER / name).read_text(encoding="utf-8") == contracts.render(name), (
        f"docs/contracts/{name} is out of date: run python -m pm25.contracts"
    )


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((FOLDER / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_real_readings_and_forecasts_validate():
    readings = list(load_source("multisite", [], hours=60))
    reading_v = validator("reading.schema.json")
    for r in readings:
        reading_v.validate(orjson.loads(reading_to_json(r)))
    forecasts = list(run_offline(make_engine(Settings()), readings))
    assert len(forecasts) > 500
    forecast_v = validator("forecast.schema.json")
    for f in forecasts:
        forecast_v.validate(orjson.loads(f.value))


@pytest.mark.parametrize(
    "message",
    [
        {"station_id": "Dongsi", "timestamp": "2016-03-01T00:00:00Z", "pm25": 5000},
        {"station_id": "Dongsi", "timestamp": "2016-03-01T00:30:00Z"},
        {"station_id": "Dongsi", "timestamp": "2016-03-01T00:00:00"},
        {"station_id": "Dongsi", "timestamp": "2016-03-01T00:00:00Z", "wind_direction": "north"},
        {"station_id": "bad id with spaces", "timestamp": "2016-03-01T00:00:00Z"},
        {"timestamp": "2016-03-01T00:00:00Z"},
    ],
)
def test_what_the_schema_refuses_the_worker_refuses_too(message):
    assert not validator("reading.schema.json").is_valid(message)
    with pytest.raises(ValueError):
        parse_reading(orjson.dumps(message))


def test_shipped_stations_validate():
    from pm25.stations import read_stations_csv

    station_v = validator("station.schema.json")
    stations = read_stations_csv()
    assert len(stations) == 12
    for s in stations.values():
        station_v.validate(orjson.loads(station_to_json(s)))


@pytest.mark.parametrize(
    "record",
    [
        {"station_id": "A", "name": "a", "latitude": 91, "longitude": 0, "network": "n"},
        {"station_id": "A", "name": "a", "latitude": 0, "longitude": -181, "network": "n"},
        {"station_id": "A", "name": "a", "latitude": 0, "longitude": 0, "network": "bad network"},
        {"station_id": "bad id", "name": "a", "latitude": 0, "longitude": 0, "network": "n"},
        {"station_id": "A", "name": "a", "latitude": 0, "longitude": 0},
    ],
)
def test_what_the_station_schema_refuses_the_code_refuses_too(record):
    from pm25.stations import InvalidStation, station_from_json

    assert not validator("station.schema.json").is_valid(record)
    with pytest.raises(InvalidStation):
        station_from_json(orjson.dumps(record))
