"""The message contracts, defined once: Reading in, Forecast out, and the canonical CSV.

Every part of the system (producer, stream processor, training, tests) imports these
definitions; nothing else parses or writes a reading.

>>> r = parse_reading(b'{"station_id": "Dongsi", "timestamp": "2013-03-01T00:00:00Z", "pm25": 9}')
>>> r.station_id, r.hour, r.pm25
('Dongsi', 378360, 9.0)
>>> reading_to_json(r)[:60]
b'{"station_id":"Dongsi","timestamp":"2013-03-01T00:00:00Z","p'
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "CSV_HEADER",
    "KEY_HORIZONS",
    "MAX_MESSAGE_BYTES",
    "RANGES",
    "STATION_ID_PATTERN",
    "WIND_DIRECTIONS",
    "Forecast",
    "HorizonForecast",
    "InvalidReading",
    "Reading",
    "encode_forecasts",
    "forecast_from_json",
    "forecast_to_json",
    "hour_to_iso",
    "iso_to_hour",
    "kept_json",
    "own_size",
    "parse_reading",
    "reading_from_mapping",
    "reading_to_json",
    "reading_to_row",
]

#: The horizons (hours) every summary reports and the online adaptation learns at: the scores,
#: the evaluation, the viewer and pm25.adapt use this one constant.
KEY_HORIZONS: tuple[int, ...] = (1, 3, 6, 12, 24)

#: 16 compass points plus ``calm``; the angle (degrees, direction the wind comes from).
WIND_DIRECTIONS: dict[str, float | None] = {
    name: i * 22.5
    for i, name in enumerate(
        ["N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW"]
    )
} | {"calm": None}

#: Physically plausible ranges; a value outside is rejected with reason ``out_of_range``.
RANGES: dict[str, tuple[float, float]] = {
    "pm25": (0.0, 2000.0),
    "temperature_c": (-60.0, 60.0),
    "dew_point_c": (-80.0, 40.0),
    "pressure_hpa": (850.0, 1100.0),
    "wind_speed_ms": (0.0, 75.0),
    "precipitation_mm": (0.0, 500.0),
}

#: Largest accepted reading message; a real reading is about 250 bytes.
MAX_MESSAGE_BYTES = 4096

#: What a station id may look like (it is also the message key).
STATION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_STATION_RE = re.compile(STATION_ID_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Readings dated further ahead of the wall clock than this are rejected as ``future``.
_FUTURE_TOLERANCE_H = 1


class InvalidReading(ValueError):
    """A message that is not a valid Reading; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Reading:
    """One hourly observation at one station. ``hour`` is hours since 1970-01-01T00Z (UTC)."""

    station_id: str
    hour: int
    pm25: float | None = None
    temperature_c: float | None = None
    dew_point_c: float | None = None
    pressure_hpa: float | None = None
    wind_speed_ms: float | None = None
    wind_direction: str | None = None
    precipitation_mm: float | None = None

    @property
    def timestamp(self) -> str:
        return hour_to_iso(self.hour)


#: The measurements of a reading, in declaration order (everything after station and hour).
MEASUREMENTS: tuple[str, ...] = tuple(f.name for f in fields(Reading))[2:]
#: Column order of the canonical readings CSV (empty cell = missing): the message's fields.
CSV_HEADER: tuple[str, ...] = ("station_id", "timestamp", *MEASUREMENTS)
#: The numeric measurements (each has a plausible range in RANGES).
_NUMERIC: tuple[str, ...] = tuple(name for name in MEASUREMENTS if name != "wind_direction")
assert set(_NUMERIC) == set(RANGES), "every numeric measurement needs a range"


@dataclass(frozen=True, slots=True)
class HorizonForecast:
    h: int
    target_time: str
    pm25: float
    pm25_lo: float
    pm25_hi: float
    aqi_us: int
    aqi_us_category: str


@dataclass(frozen=True, slots=True)
class Forecast:
    station_id: str
    issued_at: str
    model_version: str
    horizons: tuple[HorizonForecast, ...]


def kept_json(value: Any, option: int | None = None) -> bytes:
    """``orjson.dumps(value)`` as a bytes object of its own size, for JSON that is kept or queued:
    the object orjson returns holds its whole output buffer (4 KB for a short text), so a thousand
    cached keys held 4 MB (docs/benchmarks.md, "The worker's settings").

    >>> len(kept_json("station-1")), kept_json({"b": 1, "a": 2}, orjson.OPT_SORT_KEYS)
    (11, b'{"a":2,"b":1}')
    """
    return own_size(orjson.dumps(value, option=option))


def own_size(data: bytes) -> bytes:
    """A copy of ``data`` that holds only its bytes (for orjson's output, or what a library made
    with it, e.g. Faust's JSON keys)."""
    return bytes(memoryview(data))


@functools.lru_cache(maxsize=65536)
def hour_to_iso(hour: int) -> str:
    """Epoch hour -> ISO 8601 UTC string (cached: forecasts format 25 hours each).

    >>> hour_to_iso(0)
    '1970-01-01T00:00:00Z'
    """
    return (_EPOCH + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=4096)
def iso_to_hour(text: str) -> int:
    """ISO 8601 timestamp with an explicit offset, on the hour -> epoch hour (UTC). Cached: a
    network's stations report the same hours (a bad timestamp raises and is not cached).

    >>> iso_to_hour("2013-03-01T08:00:00+08:00") == iso_to_hour("2013-03-01T00:00:00Z")
    True
    """
    try:
        ts = datetime.fromisoformat(text)
    except (TypeError, ValueError) as err:
        raise InvalidReading("bad_timestamp", f"not ISO 8601: {text!r}") from err
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidReading("naive_timestamp", f"timestamp has no UTC offset: {text!r}")
    if ts.minute or ts.second or ts.microsecond:
        raise InvalidReading("not_on_hour", f"timestamp is not on the hour: {text!r}")
    delta = ts - _EPOCH
    return int(delta.total_seconds()) // 3600


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if type(value) is float:  # the common case, checked in one step (NaN and infinities fail the range)
        lo, hi = RANGES[name]
        if lo <= value <= hi:
            return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReading("bad_type", f"{name} must be a number or null, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise InvalidReading("not_finite", f"{name} is {value!r}")
    lo, hi = RANGES[name]
    if not lo <= x <= hi:
        raise InvalidReading("out_of_range", f"{name}={x} outside [{lo}, {hi}]")
    return x


def reading_from_mapping(data: Mapping[str, Any], now_hour: int | None = None) -> Reading:
    """Validate a decoded JSON object (or CSV row converted to JSON types) into a Reading.

    ``now_hour`` (epoch hour of the wall clock) enables the ``future`` check; tests inject it.
    """
    if not isinstance(data, Mapping):
        raise InvalidReading("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    # Unknown fields are ignored (tolerant reader): sensors may send more than we use.
    station = data.get("station_id")
    if station is None or "timestamp" not in data:
        raise InvalidReading("missing_field", "station_id and timestamp are required")
    if not isinstance(station, str) or not _STATION_RE.match(station):
        raise InvalidReading("bad_station_id", f"station_id must match {_STATION_RE.pattern}")
    stamp = data["timestamp"]
    if not isinstance(stamp, str):
        raise InvalidReading("bad_type", "timestamp must be a string")
    hour = iso_to_hour(stamp)
    if now_hour is not None and hour > now_hour + _FUTURE_TOLERANCE_H:
        raise InvalidReading("future_timestamp", f"{stamp} is ahead of the clock")
    wd = data.get("wind_direction")
    if wd is not None and wd not in WIND_DIRECTIONS:
        raise InvalidReading("bad_wind_direction", f"wind_direction {wd!r} is not a compass point or 'calm'")
    values = {name: _number(name, data.get(name)) for name in _NUMERIC}
    return Reading(station_id=station, hour=hour, wind_direction=wd, **values)


def parse_reading(raw: bytes | None, now_hour: int | None = None) -> Reading:
    """Decode and validate one message value. Raises InvalidReading with a reason code."""
    if raw is None:
        raise InvalidReading("empty", "message has no value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidReading("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidReading("bad_json", str(err)[:200]) from err
    return reading_from_mapping(data, now_hour)


def reading_to_json(r: Reading) -> bytes:
    out: dict[str, Any] = {"station_id": r.station_id, "timestamp": r.timestamp}
    for name in CSV_HEADER[2:]:
        value = getattr(r, name)
        if value is not None:
            out[name] = value
    return orjson.dumps(out)


def reading_to_row(r: Reading) -> list[str]:
    """The canonical CSV row (empty string = missing)."""
    row = [r.station_id, r.timestamp]
    for name in CSV_HEADER[2:]:
        value = getattr(r, name)
        row.append("" if value is None else (value if isinstance(value, str) else f"{value:g}"))
    return row


def forecast_to_json(f: Forecast) -> bytes:
    """Deterministic serialisation: the same Forecast always gives the same bytes (fields in
    declaration order, which is the contract's order)."""
    return orjson.dumps(f)


def encode_forecasts(
    station_ids: Sequence[str],
    issued_hours: Sequence[int],
    model_version: str,
    horizons: tuple[int, ...],
    amounts: npt.NDArray[np.floating[Any]],
    aqi: npt.NDArray[np.integer[Any]],
    category: npt.NDArray[np.integer[Any]],
    category_names: Sequence[str],
) -> list[bytes]:
    """Forecast messages for many stations at once, without building dataclasses or dicts (the
    worker's hot path): each is byte-identical to :func:`forecast_to_json` of the equivalent
    Forecast. Per forecast and horizon: ``amounts`` [N, H, 3] pm25, pm25_lo, pm25_hi; ``aqi``
    [N, H] aqi_us; ``category`` [N, H] indices into ``category_names`` (aqi_us_category).

    Every value's JSON text is the one orjson writes for it, taken from a table where it can be
    (amounts of whole tenths from 0.0 to 1999.9, integers from 0 to 999) and written by orjson
    otherwise; the texts go into the message's fixed frame for its issue hour and model.
    """
    n = len(station_ids)
    if n == 0:
        return []
    texts = np.empty((n, len(horizons), len(_HORIZON_FIELDS)), dtype=object)
    for j in range(3):
        texts[:, :, j] = _amount_texts(amounts[:, :, j])
    texts[:, :, 3] = _integer_texts(aqi)
    texts[:, :, 4] = np.array([orjson.dumps(c) for c in category_names], dtype=object)[category]
    rows = texts.reshape(n, -1).tolist()
    return [
        _frame(hour, model_version, horizons) % (orjson.dumps(sid), *row)
        for sid, hour, row in zip(station_ids, issued_hours, rows, strict=True)
    ]


#: the per-horizon values after h and target_time, in the contract's order
_HORIZON_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(HorizonForecast))[2:]
#: Sizes of the text tables: 0.0-1999.9 µg/m³ in tenths (forecasts are rounded to 0.1), ints 0-999.
_TENTHS = 20_000
_INTEGERS = 1_000


@functools.cache
def _tenths_table() -> npt.NDArray[np.object_]:
    return _text_table([t / 10 for t in range(_TENTHS)])


@functools.cache
def _integer_table() -> npt.NDArray[np.object_]:
    return _text_table(list(range(_INTEGERS)))


def _text_table(values: list[float] | list[int]) -> npt.NDArray[np.object_]:
    """orjson's texts of ``values``, each copied: a bytes object orjson returns keeps the memory of
    its output buffer (docs/benchmarks.md, "The worker's settings")."""
    return np.array([kept_json(v) for v in values], dtype=object)


def _amount_texts(x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.object_]:
    """JSON texts of floats: from the table where the value is exactly a whole number of tenths
    in its range (t / 10 is the very float orjson would format), by orjson otherwise."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        tenths = np.rint(x * 10.0)
        in_table = (tenths >= 0) & (tenths < _TENTHS) & (tenths / 10.0 == x) & ~np.signbit(x)
    out = _tenths_table()[np.where(in_table, tenths, 0).astype(np.intp)]
    for pos in zip(*np.nonzero(~in_table), strict=True):
        out[pos] = orjson.dumps(float(x[pos]))
    return out


def _integer_texts(x: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.object_]:
    x = np.asarray(x, dtype=np.int64)
    in_table = (x >= 0) & (x < _INTEGERS)
    out = _integer_table()[np.where(in_table, x, 0)]
    for pos in zip(*np.nonzero(~in_table), strict=True):
        out[pos] = orjson.dumps(int(x[pos]))
    return out


@functools.lru_cache(maxsize=1024)
def _frame(issued_hour: int, model_version: str, horizons: tuple[int, ...]) -> bytes:
    """A forecast message with ``%b`` where the station id and the horizon values go."""

    def lit(value: object) -> bytes:  # a JSON literal, safe inside a %-template
        return orjson.dumps(value).replace(b"%", b"%%")

    slots = b"".join(b',"%b":%%b' % f.encode() for f in _HORIZON_FIELDS)
    parts = [
        b'{"h":' + lit(h) + b',"target_time":' + lit(hour_to_iso(issued_hour + h)) + slots + b"}" for h in horizons
    ]
    head = b'{"station_id":%b,"issued_at":' + lit(hour_to_iso(issued_hour)) + b',"model_version":' + lit(model_version)
    return head + b',"horizons":[' + b",".join(parts) + b"]}"


def forecast_from_json(raw: bytes | str) -> Forecast:
    d = orjson.loads(raw)
    return Forecast(
        station_id=d["station_id"],
        issued_at=d["issued_at"],
        model_version=d["model_version"],
        horizons=tuple(HorizonForecast(**h) for h in d["horizons"]),
    )
