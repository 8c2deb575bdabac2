"""Station metadata: where each station is and which network it belongs to.

A station record is the value of the compacted topic ``pm25.stations`` (key ``station_id``) and
a row of a stations CSV (``data/stations/beijing.csv`` ships the 12 Beijing multi-site stations).
A reading from a station without a record is still forecast, as a lone station.

>>> s = station_from_mapping({"station_id": "Dongsi", "name": "Dongsi", "latitude": 39.929,
...                           "longitude": 116.417, "network": "beijing"})
>>> station_from_json(station_to_json(s)) == s
True
>>> t = station_from_mapping({"station_id": "Tiantan", "name": "Temple of Heaven",
...                           "latitude": 39.886, "longitude": 116.407, "network": "beijing"})
>>> round(distance_km(s, t), 1)
4.9
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from pm25.adapters import DATA_DIR
from pm25.schema import STATION_ID_PATTERN

__all__ = [
    "BEIJING_STATIONS",
    "NETWORK_PATTERN",
    "InvalidStation",
    "Station",
    "StationFileError",
    "distance_km",
    "nearest",
    "read_stations_csv",
    "station_from_json",
    "station_from_mapping",
    "station_to_json",
]

#: The shipped metadata of the 12 Beijing multi-site stations (see data/README.md for the source).
BEIJING_STATIONS = DATA_DIR / "stations" / "beijing.csv"
#: A network name: the same characters as a station id.
NETWORK_PATTERN = STATION_ID_PATTERN
_ID_RE = re.compile(STATION_ID_PATTERN)
_EARTH_RADIUS_KM = 6371.0088
_MAX_NAME = 200


class InvalidStation(ValueError):
    """A station record that breaks the contract; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class StationFileError(ValueError):
    """A stations CSV that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Station:
    station_id: str
    name: str
    latitude: float
    longitude: float
    network: str


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Station))


def _number(data: Mapping[str, Any], key: str, lo: float, hi: float) -> float:
    value = data.get(key)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidStation("bad_type", f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidStation("bad_type", f"{key} must be a finite number")
    if not lo <= value <= hi:
        raise InvalidStation("out_of_range", f"{key}={value} outside [{lo}, {hi}]")
    return float(value)


def station_from_mapping(data: Mapping[str, Any]) -> Station:
    """Validate one record (from JSON or a CSV row) and return it; raises InvalidStation."""
    missing = [k for k in FIELDS if data.get(k) in (None, "")]
    if missing:
        raise InvalidStation("missing_field", f"missing {', '.join(missing)}")
    station_id, network, name = data["station_id"], data["network"], data["name"]
    if not isinstance(station_id, str) or not _ID_RE.match(station_id):
        raise InvalidStation("bad_station_id", f"station_id must match {STATION_ID_PATTERN}")
    if not isinstance(network, str) or not _ID_RE.match(network):
        raise InvalidStation("bad_network", f"network must match {NETWORK_PATTERN}")
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise InvalidStation("bad_name", f"name must be a string of at most {_MAX_NAME} characters")
    return Station(
        station_id=station_id,
        name=name,
        latitude=_number(data, "latitude", -90.0, 90.0),
        longitude=_number(data, "longitude", -180.0, 180.0),
        network=network,
    )


def station_to_json(station: Station) -> bytes:
    return orjson.dumps(asdict(station))


def station_from_json(raw: bytes) -> Station:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidStation("bad_json", str(err)) from None
    if not isinstance(data, dict):
        raise InvalidStation("bad_json", "a station record is a JSON object")
    return station_from_mapping(data)


def read_stations_csv(path: Path = BEIJING_STATIONS) -> dict[str, Station]:
    """Every station of a CSV with the header ``station_id,name,latitude,longitude,network``, by
    id. Raises StationFileError naming the file and line of the first problem (a missing column,
    a bad value, a station listed twice)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a byte-order mark (spreadsheets) is no header
            reader = csv.DictReader(fh)
            absent = [k for k in FIELDS if k not in (reader.fieldnames or ())]
            if absent:
                raise StationFileError(f"{path}: header lacks {', '.join(absent)} (wants {','.join(FIELDS)})")
            stations: dict[str, Station] = {}
            for row in reader:
                line = reader.line_num
                try:
                    station = station_from_mapping(row)
                except InvalidStation as err:
                    raise StationFileError(f"{path}:{line}: {err}") from None
                if station.station_id in stations:
                    raise StationFileError(f"{path}:{line}: station {station.station_id} listed twice")
                stations[station.station_id] = station
    except (OSError, UnicodeDecodeError) as err:
        raise StationFileError(f"{path}: {err}") from None
    if not stations:
        raise StationFileError(f"{path}: no stations")
    return stations


def distance_km(a: Station, b: Station) -> float:
    """Great-circle (haversine) distance in km."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat, dlon = lat2 - lat1, math.radians(b.longitude - a.longitude)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def nearest(station: Station, others: Iterable[Station], k: int) -> list[tuple[Station, float]]:
    """The ``k`` stations of the same network nearest to ``station`` (itself excluded), with their
    distances, nearest first; ties broken by station id, so the order never depends on the order
    of ``others``."""
    if k < 0:
        raise ValueError("k must be >= 0")
    peers = [
        (o, distance_km(station, o))
        for o in others
        if o.network == station.network and o.station_id != station.station_id
    ]
    peers.sort(key=lambda p: (p[1], p[0].station_id))
    return peers[:k]
