"""Neighbour features: NaN (never an error) without neighbours or contents; upwind weighting;
computed from closed hours, they are the same for every arrival order within the bound."""

from __future__ import annotations

import math
import random

import pytest

from pm25.neighbours import MAX_NEIGHBOUR_KM, MAX_NEIGHBOURS, NB_FIELDS, Neighbour, bearing_deg, nearest_of
from pm25.neighbours import neighbour_features as features_of
from pm25.network import ClosedHour, NetworkClock
from pm25.schema import WIND_DIRECTIONS, Reading
from pm25.stations import Station, read_stations_csv

CENTRE = Station("c", "centre", 40.0, 116.0, "n")
NORTH = Station("n", "north", 40.1, 116.0, "n")
SOUTH = Station("s", "south", 39.9, 116.0, "n")


def content(hour: int, values: dict[str, float]) -> ClosedHour:
    return ClosedHour(hour, dict(sorted(values.items())), frozenset(values), False)


def neighbour_features(own: Reading, near: tuple[Neighbour, ...], contents: dict[int, ClosedHour]) -> tuple:
    pm = math.nan if own.pm25 is None else own.pm25
    wind = WIND_DIRECTIONS.get(own.wind_direction) if own.wind_direction else None
    return features_of(own.hour, pm, wind, near, contents.get)


def test_bearings():
    assert bearing_deg(CENTRE, NORTH) == pytest.approx(0, abs=1e-9)
    assert bearing_deg(CENTRE, SOUTH) == pytest.approx(180)
    assert bearing_deg(CENTRE, Station("e", "e", 40.0, 116.1, "n")) == pytest.approx(90, abs=0.1)


def test_no_neighbours_or_no_content_gives_nan_features():
    own = Reading("c", 10, pm25=10.0, wind_direction="N")
    assert all(math.isnan(x) for x in neighbour_features(own, (), {10: content(10, {"n": 5.0})}))
    near = nearest_of(CENTRE, [CENTRE, NORTH], 4)
    assert all(math.isnan(x) for x in neighbour_features(own, near, {}))
    assert len(neighbour_features(own, near, {})) == len(NB_FIELDS)


def test_upwind_weights_only_the_stations_the_wind_comes_from():
    near = nearest_of(CENTRE, [CENTRE, NORTH, SOUTH], 4)
    contents = {7: content(7, {"n": 10.0, "s": 10.0}), 10: content(10, {"n": 100.0, "s": 10.0})}
    f = dict(
        zip(NB_FIELDS, neighbour_features(Reading("c", 10, pm25=10.0, wind_direction="N"), near, contents), strict=True)
    )
    # north rose, south did not: from the north, the upwind change is north's alone
    assert f["nb_upwind_change3"] == pytest.approx(math.log1p(100) - math.log1p(10))
    assert f["nb_change3"] == pytest.approx(f["nb_upwind_change3"] / 2, rel=1e-3)  # equal distances
    southerly = neighbour_features(Reading("c", 10, pm25=10.0, wind_direction="S"), near, contents)
    assert dict(zip(NB_FIELDS, southerly, strict=True))["nb_upwind_change3"] == pytest.approx(0.0)
    calm = dict(
        zip(
            NB_FIELDS,
            neighbour_features(Reading("c", 10, pm25=10.0, wind_direction="calm"), near, contents),
            strict=True,
        )
    )
    assert math.isnan(calm["nb_upwind_change3"]) and not math.isnan(calm["nb_change3"])
    assert f["nb_share"] == 1.0


def test_at_most_sixteen_neighbours():
    many = [Station(f"s{i}", "x", 40 + i / 1000, 116.0, "n") for i in range(40)]
    assert len(nearest_of(many[0], many, 100)) == MAX_NEIGHBOURS


def test_features_from_the_clock_do_not_depend_on_arrival_order():
    meta = read_stations_csv()
    rng = random.Random(7)
    readings = [
        Reading(sid, h, pm25=round(rng.uniform(2, 400), 1), wind_direction=rng.choice(["N", "SW", "E", "calm"]))
        for h in range(5000, 5060)
        for sid in sorted(meta)
        if rng.random() > 0.08
    ]
    near = {sid: nearest_of(st, meta.values(), 11) for sid, st in meta.items()}

    def features(order: list[Reading]) -> dict[tuple[str, int], tuple[float, ...]]:
        clock = NetworkClock(lateness_hours=3, active_hours=12)
        kept: dict[int, ClosedHour] = {}
        for r in order:
            for c in clock.offer(r).closed:
                kept[c.hour] = c
        return {(r.station_id, r.hour): neighbour_features(r, near[r.station_id], kept) for r in readings}

    reference = features(readings)
    assert sum(not math.isnan(f[0]) for f in reference.values()) > len(readings) // 2
    for seed in range(10):
        g = random.Random(seed)
        arrival = [r.hour + g.uniform(0, 3 - 1e-9) for r in readings]  # within the bound of 3 h
        order = [r for _, r in sorted(zip(arrival, readings, strict=True), key=lambda p: p[0])]
        got = features(order)
        assert got.keys() == reference.keys()
        for key, f in reference.items():
            assert all((a == b) or (math.isnan(a) and math.isnan(b)) for a, b in zip(f, got[key], strict=True)), key


def test_neighbours_farther_than_the_bound_are_not_looked_at():
    far = Station("f", "far", 40.0 + MAX_NEIGHBOUR_KM / 100, 116.0, "n")  # 0.01 degree of latitude is 1.11 km
    near = nearest_of(CENTRE, [CENTRE, NORTH, far], 4)
    assert [n.station_id for n in near] == ["n"]
    assert [n.station_id for n in nearest_of(CENTRE, [CENTRE, NORTH, far], 4, max_km=1000.0)] == ["n", "f"]
    assert nearest_of(CENTRE, [CENTRE, far], 4) == ()  # nothing in range: features missing, as alone
    own = Reading("c", 10, pm25=10.0, wind_direction="N")
    assert all(math.isnan(x) for x in neighbour_features(own, (), {10: content(10, {"f": 5.0})}))


def test_the_bound_leaves_every_training_network_whole():
    """The model learnt from these networks: the bound must not change a feature they gave it."""
    from pm25.stations import distance_km
    from training.dataset import DataConfig

    meta = list(read_stations_csv(DataConfig().stations_csv).values())
    farthest = max(distance_km(a, b) for a in meta for b in meta if a.network == b.network)
    assert 50 < farthest <= MAX_NEIGHBOUR_KM
    for st in meta:
        assert len(nearest_of(st, meta, MAX_NEIGHBOURS)) == len(meta) - 1
