"""`pm25 coldstart`: a new station's skill by its age, scored like the evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pm25.schema import Reading
from training.coldstart import AGE_BINS, HORIZONS, ColdStartConfig, _skill, run_coldstart, score_by_age


def forecast(hour: int, values: list[float]) -> SimpleNamespace:
    horizons = [SimpleNamespace(pm25=v) for v in values]
    return SimpleNamespace(end_hour=hour, decode=lambda: SimpleNamespace(horizons=horizons))


def test_skill_is_pooled_by_age_against_persistence_on_the_same_pairs():
    readings = [Reading("s", 100 + t, pm25=float(10 + (t % 5))) for t in range(80)]
    truth = {r.hour: r.pm25 for r in readings}
    perfect = [forecast(100 + t, [truth.get(100 + t + h, 0.0) for h in range(1, 25)]) for t in range(48)]
    sums: dict = {}
    score_by_age(perfect, readings, 100, sums)
    skill = _skill(sums)
    assert skill["1"][0] == 100.0 and skill["24"][1] == 100.0  # ages 0-12 and 12-48 h
    assert skill["1"][2] is None  # no forecast at 48 h or later
    assert sums[(1, AGE_BINS[0])][2] == 12  # 12 issue hours in the first bin, each scored once
    persistent = [forecast(100 + t, [truth[100 + t]] * 24) for t in range(50)]
    sums = {}
    score_by_age(persistent, readings, 100, sums)
    assert _skill(sums)["6"][0] == 0.0


def test_a_short_run_writes_its_report(tmp_path):
    report = run_coldstart(ColdStartConfig(split="val", starts=1, days=3), tmp_path)
    saved = json.loads((tmp_path / "coldstart.json").read_text())
    assert saved["new_station_skill"] == report["new_station_skill"]
    assert all(report["pairs"][str(h)][0] > 9 * 10 for h in HORIZONS)  # every station, most of its first 12 hours
    assert report["pairs"]["1"][3] == 0  # three days: nothing at 4-7 days
    assert all(isinstance(x, float) for x in report["established_skill"]["1"][:3])
    assert "new station (established station)" in (tmp_path / "coldstart.md").read_text()
