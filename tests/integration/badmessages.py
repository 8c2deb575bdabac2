"""A seeded generator of invalid reading messages, each with the reason the worker must give."""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

GOOD = {"station_id": "BadStation", "timestamp": "2013-03-01T00:00:00Z", "pm25": 12.0, "temperature_c": 1.0}


def _j(d: object) -> bytes:
    return orjson.dumps(d)


def _without(d: dict, field: str) -> dict:
    return {k: v for k, v in d.items() if k != field}


def _mutations(rng: random.Random) -> list[tuple[str, Callable[[], tuple[bytes | None, bytes]]]]:
    key = b"BadStation"
    return [
        ("bad_json", lambda: (key, b'{"station_id": "BadStation", "pm25": ' + bytes([rng.randrange(33, 127)]))),
        ("bad_json", lambda: (key, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + b"\xff")),
        ("bad_json", lambda: (key, b'{"station_id":"BadStation","timestamp":"2013-03-01T00:00:00Z","pm25":NaN}')),
        ("bad_json", lambda: (key, b'{"station_id":"BadStation","timestamp":"2013-03-01T00:00:00Z","pm25":1e999}')),
        ("not_an_object", lambda: (key, _j(rng.choice([[1, 2], "text", 3.5, None, True])))),
        ("missing_field", lambda: (key, _j(_without(GOOD, rng.choice(["station_id", "timestamp"]))))),
        (
            "bad_type",
            lambda: (
                key,
                _j(
                    GOOD
                    | {rng.choice(["pm25", "temperature_c", "pressure_hpa"]): rng.choice(["12", [1], {"v": 1}, True])}
                ),
            ),
        ),
        ("bad_type", lambda: (key, _j(GOOD | {"timestamp": rng.randrange(10**9)}))),
        ("out_of_range", lambda: (key, _j(GOOD | {"pm25": rng.choice([-1.0, -500.0, 5000.0, 1e12])}))),
        ("out_of_range", lambda: (key, _j(GOOD | {"temperature_c": rng.choice([-100.0, 99.0])}))),
        ("out_of_range", lambda: (key, _j(GOOD | {"wind_speed_ms": -3.0}))),
        ("naive_timestamp", lambda: (key, _j(GOOD | {"timestamp": "2013-03-01T%02d:00:00" % rng.randrange(24)}))),
        ("future_timestamp", lambda: (key, _j(GOOD | {"timestamp": "2099-01-01T00:00:00Z"}))),
        ("bad_timestamp", lambda: (key, _j(GOOD | {"timestamp": rng.choice(["", "soon", "2013-13-01T00:00:00Z"])}))),
        ("not_on_hour", lambda: (key, _j(GOOD | {"timestamp": "2013-03-01T00:%02d:00Z" % rng.randrange(1, 60)}))),
        ("bad_station_id", lambda: (key, _j(GOOD | {"station_id": rng.choice(["", "a b", "x" * 65, 42])}))),
        ("bad_wind_direction", lambda: (key, _j(GOOD | {"wind_direction": rng.choice(["north", "", "XX"])}))),
        ("too_large", lambda: (key, _j(GOOD | {"note": "x" * rng.randrange(5000, 20000)}))),
        ("key_mismatch", lambda: (b"SomeoneElse", _j(GOOD))),
        ("empty", lambda: (key, None)),
    ]


def bad_messages(n: int, seed: int = 7) -> list[tuple[str, bytes | None, bytes]]:
    """``n`` invalid messages as (expected reason, key, value)."""
    rng = random.Random(seed)
    muts = _mutations(rng)
    out = []
    for _ in range(n):
        reason, make = rng.choice(muts)
        key, value = make()
        out.append((reason, key, value))
    return out
