"""The evaluation's stand-ins for stations unlike Beijing's transform readings as they say, and
the same way on every run."""

from __future__ import annotations

from dataclasses import replace

from pm25.schema import Reading
from training.scenarios import SCENARIOS, apply_scenario, shift_hours

READINGS = [
    Reading(
        "s",
        1000 + h,
        pm25=float(40 + h),
        temperature_c=5.0,
        dew_point_c=-3.0,
        pressure_hpa=1010.0,
        wind_speed_ms=2.0,
        wind_direction="NW",
        precipitation_mm=0.0,
    )
    for h in range(400)
]


def test_quarter_divides_pm25_only():
    out = apply_scenario("quarter", READINGS)
    assert [r.pm25 for r in out[:2]] == [10.0, 10.2]
    assert out[0].temperature_c == 5.0 and len(out) == len(READINGS)


def test_weather_scenarios_drop_the_fields_they_name():
    none = apply_scenario("no-weather", READINGS)[0]
    assert (none.temperature_c, none.wind_direction, none.precipitation_mm) == (None, None, None)
    assert none.pm25 == 40.0
    part = apply_scenario("partial-weather", READINGS)[0]
    assert (part.dew_point_c, part.pressure_hpa, part.wind_direction) == (None, None, None)
    assert (part.temperature_c, part.wind_speed_ms) == (5.0, 2.0)


def test_time_zone_moves_event_time_and_the_scored_year_with_it():
    out = apply_scenario("time-zone", READINGS)
    assert out[0].hour == 1000 + shift_hours("time-zone") and shift_hours("quarter") == 0


def test_cheap_sensor_is_noisy_lossy_and_reproducible():
    a, b = apply_scenario("cheap-sensor", READINGS), apply_scenario("cheap-sensor", READINGS)
    assert a == b
    assert 0.9 * len(READINGS) < len(a) < len(READINGS)  # about 5 % lost
    ratios = [r.pm25 / (40 + r.hour - 1000) for r in a]
    assert min(ratios) < 0.8 and max(ratios) > 1.2


def test_coastal_combines_them_all():
    out = apply_scenario("coastal", READINGS)
    assert out[0].hour >= 1007 and out[0].dew_point_c is None and out[0].pm25 < 20
    assert set(SCENARIOS) == {
        "quarter",
        "no-weather",
        "partial-weather",
        "time-zone",
        "cheap-sensor",
        "coastal",
        "unrelated-network",
    }


def test_unrelated_network_turns_each_station_s_year_round_by_its_own_whole_weeks():
    shifts = set()
    for sid in ("Dongsi", "Tiantan", "Wanliu"):
        rs = [replace(r, station_id=sid) for r in READINGS]
        out = apply_scenario("unrelated-network", rs)
        assert [r.hour for r in out] == [r.hour for r in rs]  # the same hours, each once
        assert sorted(r.pm25 for r in out) == sorted(r.pm25 for r in rs)  # the same values, moved
        moved = {(r.hour - (r.pm25 - 40) - 1000) % len(rs) for r in out}  # pm25 = 40 + original offset
        assert len(moved) == 1
        shift = moved.pop()
        assert shift in {w * 168 % len(rs) for w in range(1, 41)}  # whole weeks, turned round the span
        shifts.add(shift)
    assert len(shifts) == 3  # each station its own shift
