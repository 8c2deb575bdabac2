"""Neighbour features: what a station's network says about its next hours, from closed hours.

PM2.5 is carried by the wind, so the readings of the stations around a station, and how they
changed, tell something about its next hours. These features are computed only from the
*contents* of closed network hours (pm25.network), which are the same for every arrival order
within the lateness bound; a station without metadata, or alone in its network, gets NaN for
every feature (the model's missing value), never an error.

Every feature is a difference of ``log1p`` PM2.5, like the station's own (pm25.features): a ratio,
the same at any level well above a few µg/m³ (``log1p`` is not ``log`` below that).

* ``nb_rel``: the station's level against its neighbours' (inverse-distance weighted);
* ``nb_change1``, ``nb_change3``: how the neighbours' level changed over the last 1 and 3 hours;
* ``nb_upwind_rel``, ``nb_upwind_change3``: the same, weighting each neighbour by how far it lies
  in the direction the wind at the station comes from (``cos`` of the angle, negative parts
  dropped): air that is upwind now arrives later;
* ``nb_share``: the share of the ``k`` nearest neighbours that reported the hour (when none did,
  every feature is missing).

Only neighbours within :data:`MAX_NEIGHBOUR_KM` count. The model learnt what a neighbour says from
networks whose stations are at most 60 km apart (Beijing's); a station farther away than that is
outside what it learnt, and a network that spans a province or a country (an agency's whole
network under one id) would otherwise feed it stations whose air it does not share. Neighbours
that say nothing about a station's next hours cost skill at every horizon: with the 12 Beijing
stations' series moved apart in time, so that each one's neighbours were unrelated to it, the
network took the forecasts at 1 hour from 3.7 % better than persistence (mean over the stations,
each alone) to 0.3 % (``pm25 evaluate --scenario unrelated-network --network``,
docs/regional.md). A station with no neighbour in range is
forecast as a station alone is (its network columns missing).

The stream and training compute them with :func:`row_features`, from the station's raw row
(pm25.features) and the network clock's closed hours, when the hour closes.

>>> from pm25.stations import Station
>>> from pm25.network import ClosedHour, log_level
>>> a, b = Station("a", "a", 40.0, 116.0, "n"), Station("b", "b", 40.1, 116.0, "n")  # b is north of a
>>> hour = lambda h, pm: ClosedHour(h, {"b": pm}, frozenset({"b"}), False)
>>> f = neighbour_features(10, 20.0, 0.0, nearest_of(a, [a, b], 4),
...                        {9: hour(9, 40.0), 10: hour(10, 80.0), 7: hour(7, 10.0)}.get)
>>> [round(x, 2) for x in f]   # a is below b; b rose; the wind (from the north) blows from b to a
[-1.35, 0.68, 2.0, -1.35, 2.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from pm25.features import NB_FIELDS, wind_degrees
from pm25.network import ClosedHour, log_level
from pm25.stations import Station, nearest

__all__ = [
    "MAX_NEIGHBOURS",
    "MAX_NEIGHBOUR_KM",
    "NB_FIELDS",
    "Neighbour",
    "bearing_deg",
    "nearest_of",
    "neighbour_features",
    "row_features",
]

#: The issue's bound: at most this many neighbours are looked at.
MAX_NEIGHBOURS = 16
#: Neighbours farther than this (km) are not looked at: the training networks' stations are at most
#: 59.5 km apart (a test checks that this bound leaves every training network whole).
MAX_NEIGHBOUR_KM = 75.0
_NAN_ROW = (math.nan,) * len(NB_FIELDS)
#: a neighbour closer than this still weighs as if it were this far (no infinite weights)
_MIN_KM = 1.0


class Neighbour(NamedTuple):
    station_id: str
    weight: float  # 1 / distance in km
    bearing: float  # degrees clockwise from north, from the station to the neighbour


def bearing_deg(a: Station, b: Station) -> float:
    """Initial great-circle bearing from ``a`` to ``b``, degrees clockwise from north."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlon = math.radians(b.longitude - a.longitude)
    x = math.sin(dlon) * math.cos(lat2)
    y = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return math.degrees(math.atan2(x, y)) % 360.0


def nearest_of(
    station: Station, stations: Iterable[Station], k: int, max_km: float = MAX_NEIGHBOUR_KM
) -> tuple[Neighbour, ...]:
    """The station's ``k`` nearest neighbours (same network) within ``max_km``, as the features
    need them."""
    k = min(k, MAX_NEIGHBOURS)
    return tuple(
        Neighbour(o.station_id, 1.0 / max(d, _MIN_KM), bearing_deg(station, o))
        for o, d in nearest(station, stations, k)
        if d <= max_km
    )


def _ratio(weighted: float, total: float) -> float:
    return weighted / total if total > 0 else math.nan


def row_features(
    row: npt.NDArray[np.float32],
    hour: int,
    neighbours: Sequence[Neighbour],
    content: Callable[[int], ClosedHour | None],
) -> tuple[float, ...]:
    """The :data:`NB_FIELDS` of a station's raw row (pm25.features) at ``hour``."""
    return neighbour_features(hour, float(row[0]), wind_degrees(row), neighbours, content)


def neighbour_features(
    hour: int,
    own_pm25: float,
    wind: float | None,
    neighbours: Sequence[Neighbour],
    content: Callable[[int], ClosedHour | None],
) -> tuple[float, ...]:
    """The :data:`NB_FIELDS` of a station at ``hour`` (its PM2.5, NaN when missing; the
    direction its wind comes from, degrees, None when calm or unknown), from the closed contents
    of that hour and the 1 and 3 hours before (missing contents: NaN features, never an error)."""
    now = content(hour)
    if not neighbours or now is None:
        return _NAN_ROW
    before1, before3 = content(hour - 1), content(hour - 3)
    logs, logs1, logs3 = now.logs, before1.logs if before1 else {}, before3.logs if before3 else {}
    nan = math.nan
    # weighted sums, added in neighbour order (sum of weights, sum of weight * value)
    lw = lv = c1w = c1v = c3w = c3v = uw = uv = u3w = u3v = 0.0
    present = 0
    for sid, weight, bearing in neighbours:
        x = logs.get(sid, nan)
        if x != x:  # NaN: not reported, or reported without PM2.5
            continue
        present += 1
        x1 = logs1.get(sid, nan)
        x3 = logs3.get(sid, nan)
        upwind = max(0.0, math.cos(math.radians(bearing - wind))) * weight if wind is not None else 0.0
        lw += weight
        lv += weight * x
        if x1 == x1:
            c1w += weight
            c1v += weight * (x - x1)
        if x3 == x3:
            c3w += weight
            c3v += weight * (x - x3)
            if upwind > 0:
                u3w += upwind
                u3v += upwind * (x - x3)
        if upwind > 0:
            uw += upwind
            uv += upwind * x
    if not present:  # no neighbour reported the hour: as if there were no content
        return _NAN_ROW
    mine = log_level(own_pm25)
    return (
        mine - _ratio(lv, lw),
        _ratio(c1v, c1w),
        _ratio(c3v, c3w),
        mine - _ratio(uv, uw),
        _ratio(u3v, u3w),
        present / len(neighbours),
    )
