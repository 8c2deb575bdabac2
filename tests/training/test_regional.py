"""`pm25 regional` end to end on the real data (validation year, a small learner): every station
scored, the report files written, and the neighbour features carry information at 1-3 h."""

from __future__ import annotations

import json

import numpy as np

from training.regional import RegionalConfig, run_regional


def test_regional_check_on_the_validation_year(tmp_path):
    report = run_regional(RegionalConfig(split="val", iterations=40), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"regional.json", "regional.md", "regional.png"}
    assert json.loads((tmp_path / "regional.json").read_text())["split"] == "val"
    stations = {r["station"] for r in report["stations"]}
    assert len(stations) == 9 and not stations & {"Dingling", "Huairou", "Gucheng"}  # new stations: test only
    assert report["closed_hours"] > 30000
    for h in ("1", "3"):
        own = np.mean([r["skill"]["own"][h] for r in report["stations"]])
        both = np.mean([r["skill"]["own+neighbours"][h] for r in report["stations"]])
        assert both > own + 0.02, (h, own, both)
