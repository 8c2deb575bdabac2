"""A station that reports no weather at all still gets useful forecasts (the production bundle,
test year, Dongsi, through the stream's code path): the model was trained with whole weather fields
hidden, so it knows "not measured" from "average". The test year: the production model is refit on
the validation year (training.train), which is in-sample for it.

Known gap (docs/skill.md, "Stations unlike Beijing's"): since the refit, a station without any
weather field misses the 10 % target at 24 hours at 10 of 12 stations on the test year (Dongsi
9.0 %; 12.6 % before the refit). Every other target is asserted, and the 24-hour skill must stay
above 8 %, well clear of the 5.3-5.7 % of a model that could not tell missing weather from average
weather (the bundle before the missing-field features, on the validation year)."""

from __future__ import annotations

from pm25.settings import Settings
from training.evaluate import SKILL_24H_TARGET, evaluate_stations, shipped_test_year
from training.scenarios import apply_scenario


def test_a_station_without_weather_beats_persistence_with_calibrated_intervals():
    per_station, bounds = shipped_test_year("test")
    dongsi = [apply_scenario("no-weather", rs) for rs in per_station if rs and rs[0].station_id == "Dongsi"]
    assert dongsi and all(r.temperature_c is None and r.wind_direction is None for r in dongsi[0])
    ev = evaluate_stations(Settings(), dongsi, bounds, period="test year, no weather", progress=False)
    (result,) = ev.stations
    print(f"\nno weather, Dongsi, test year: 24 h skill {100 * result.skill(24):.1f} %")
    assert result.skill(24) > 0.08
    missed_24h = [f"24 h skill {result.skill(24):.1%} < {SKILL_24H_TARGET:.0%}"] if result.skill(24) < 0.10 else []
    assert result.misses() == missed_24h
