"""JSON Schemas of the messages, generated from the code that defines them (pm25.schema).

The checked-in files (``docs/contracts/reading.schema.json``, ``forecast.schema.json``,
``station.schema.json``) are what
this module writes; a test regenerates them and fails when they differ, and checks that real
messages validate. ``docs/contracts/asyncapi.yaml`` describes the topics, keys and messages and
refers to these files (validated against the AsyncAPI 3.0 schema by ``make lint``).

Regenerate: ``python -m pm25.contracts`` (writes docs/contracts/).
"""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from pm25.aqi import CATEGORIES
from pm25.schema import (
    MAX_MESSAGE_BYTES,
    RANGES,
    STATION_ID_PATTERN,
    WIND_DIRECTIONS,
    Forecast,
    HorizonForecast,
    Reading,
)

__all__ = ["SCHEMAS", "forecast_schema", "reading_schema", "write"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: ISO 8601 on the hour with an explicit UTC offset (what pm25.schema.iso_to_hour accepts, written
#: as the producer and the worker write it)
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:00(:00(\.0+)?)?(Z|[+-]\d{2}:?\d{2})$"
UNITS = {
    "pm25": "µg/m³",
    "temperature_c": "°C",
    "dew_point_c": "°C",
    "pressure_hpa": "hPa",
    "wind_speed_ms": "m/s",
    "precipitation_mm": "mm in the hour",
}


def reading_schema() -> dict[str, Any]:
    """The reading message: station, timestamp, then every measurement of :class:`Reading`."""
    hints = typing.get_type_hints(Reading)
    props: dict[str, Any] = {
        "station_id": {"type": "string", "pattern": STATION_ID_PATTERN, "description": "the message key too"},
        "timestamp": {
            "type": "string",
            "pattern": TIMESTAMP_PATTERN,
            "description": "start of the hour the reading covers, ISO 8601 with a UTC offset",
        },
    }
    for f in fields(Reading)[2:]:
        if hints[f.name] == float | None:
            lo, hi = RANGES[f.name]
            props[f.name] = {
                "type": ["number", "null"],
                "minimum": lo,
                "maximum": hi,
                "description": f"{UNITS[f.name]}; null or absent when not measured",
            }
        else:  # the wind direction
            props[f.name] = {
                "enum": [*WIND_DIRECTIONS, None],
                "description": "16-point compass direction the wind comes from, or calm",
            }
    return {
        "$schema": DRAFT,
        "$id": "reading.schema.json",
        "title": "Reading",
        "description": (
            "One hourly observation (PM2.5 and weather) at one station, keyed by station_id. "
            f"At most {MAX_MESSAGE_BYTES} bytes; unknown fields are ignored."
        ),
        "type": "object",
        "required": ["station_id", "timestamp"],
        "properties": props,
        "additionalProperties": True,
    }


def forecast_schema() -> dict[str, Any]:
    """The forecast message: :class:`Forecast` with its :class:`HorizonForecast` list."""
    number = {"type": "number", "minimum": 0}
    horizon_props: dict[str, Any] = {}
    for f in fields(HorizonForecast):
        if f.name == "h":
            horizon_props[f.name] = {"type": "integer", "minimum": 1, "description": "hours ahead"}
        elif f.name == "target_time":
            horizon_props[f.name] = {"type": "string", "pattern": TIMESTAMP_PATTERN}
        elif f.name == "aqi_us":
            horizon_props[f.name] = {"type": "integer", "minimum": 0, "maximum": 500}
        elif f.name == "aqi_us_category":
            horizon_props[f.name] = {"enum": list(CATEGORIES)}
        else:
            horizon_props[f.name] = {**number, "description": "µg/m³ (pm25_lo / pm25_hi: the 80 % interval)"}
    props: dict[str, Any] = {}
    for f in fields(Forecast):
        if f.name == "horizons":
            props[f.name] = {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": [g.name for g in fields(HorizonForecast)],
                    "properties": horizon_props,
                    "additionalProperties": False,
                },
            }
        elif f.name == "issued_at":
            props[f.name] = {"type": "string", "pattern": TIMESTAMP_PATTERN, "description": "the newest reading's hour"}
        else:
            props[f.name] = {"type": "string", "minLength": 1}
    return {
        "$schema": DRAFT,
        "$id": "forecast.schema.json",
        "title": "Forecast",
        "description": "Multi-horizon PM2.5 forecast for one station, keyed by station_id.",
        "type": "object",
        "required": [f.name for f in fields(Forecast)],
        "properties": props,
        "additionalProperties": False,
    }


def station_schema() -> dict[str, Any]:
    """The station record of the compacted station topic: every field of :class:`Station`."""
    from pm25.stations import NETWORK_PATTERN, Station

    described = {
        "station_id": {"type": "string", "pattern": STATION_ID_PATTERN, "description": "the message key too"},
        "name": {"type": "string", "maxLength": 200, "description": "human-readable site name"},
        "latitude": {"type": "number", "minimum": -90, "maximum": 90, "description": "degrees north (WGS 84)"},
        "longitude": {"type": "number", "minimum": -180, "maximum": 180, "description": "degrees east (WGS 84)"},
        "network": {
            "type": "string",
            "pattern": NETWORK_PATTERN,
            "description": "the group of stations forecast together (neighbours are looked up within it)",
        },
    }
    names = [f.name for f in fields(Station)]
    return {
        "$schema": DRAFT,
        "$id": "station.schema.json",
        "title": "Station",
        "description": "Where a station is and which network it belongs to, keyed by station_id (compacted topic).",
        "type": "object",
        "required": names,
        "properties": {n: described[n] for n in names},
        "additionalProperties": False,
    }


SCHEMAS = {
    "reading.schema.json": reading_schema,
    "forecast.schema.json": forecast_schema,
    "station.schema.json": station_schema,
}


def render(name: str) -> str:
    return json.dumps(SCHEMAS[name](), indent=2, ensure_ascii=False) + "\n"


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in SCHEMAS:
        path = folder / name
        path.write_text(render(name), encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":
    for written in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/contracts")):
        print(f"wrote {written}")
