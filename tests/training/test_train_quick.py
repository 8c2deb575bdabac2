"""The quick training mode end to end: trains, exports, writes a verified bundle, gates promotion,
and is reproducible (same inputs, same selection and scores)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from model_store import load_bundle, load_production
from pm25.features import RAW_FIELDS
from pm25_ops.cli import main
from stream_processor.inference import OnnxForecaster

pytestmark = [pytest.mark.training, pytest.mark.slow]


def test_quick_train_export_gate_and_reproducibility(tmp_path):
    store = tmp_path / "store"
    started = time.monotonic()
    assert main(["train", "--grid", "quick", "--model-store", str(store), "--version", "q1"]) == 0
    elapsed = time.monotonic() - started
    print(f"\nquick training + export took {elapsed:.1f} s")  # reported, not asserted: no wall-clock asserts
    first = load_production(store)
    assert first.version == "q1"
    model = OnnxForecaster(first)
    raw = np.full((2, model.window_hours, len(RAW_FIELDS)), 30.0, dtype=np.float32)
    assert model.predict(raw, np.array([380_000, 380_001])).point.shape == (2, 24)
    spec = first.spec
    for key in ("data", "packages", "code_sha256", "seed", "metrics", "intervals", "scaler", "train_config"):
        assert key in spec
    # selected on validation, then refit on the training and validation years for the epochs
    # early stopping kept
    grid = {r["name"]: r for r in spec["selection"]["results"]}
    refit = spec["refit"]
    assert refit["before"] == "2016-03-01" and refit["samples"] > 1.2 * refit["train_samples"]
    assert refit["epochs"] == {n: grid[n]["best_epochs"] for n in refit["epochs"]}
    assert all(1 <= grid[n]["best_epochs"] <= grid[n]["config"]["epochs"] for n in refit["epochs"])
    assert "in-sample" in (first.path / "MODEL_CARD.md").read_text()
    assert set(spec["metrics"]["test"]) == {
        "model",
        "persistence",
        "seasonal_naive_24h",
        "gradient_boosting",
        "per_station_rmse",
    }
    # scored per station, the new stations included, on the test year only
    assert {"Dingling", "Huairou", "Gucheng"} <= set(spec["metrics"]["test"]["per_station_rmse"])
    assert not {"Dingling", "Huairou", "Gucheng"} & set(spec["metrics"]["val"]["per_station_rmse"])
    assert (first.path / "model.keras").is_file() and (first.path / "MODEL_CARD.md").is_file()
    for plot in ("card/skill_vs_horizon.png", "card/coverage.png", "card/sample_weeks.png"):
        assert (first.path / plot).read_bytes()[:4] == b"\x89PNG"
        assert plot in (first.path / "MODEL_CARD.md").read_text()

    # same inputs in a fresh process -> the same model, byte for byte; not better -> production is kept
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pm25_ops.cli",
            "train",
            "--grid",
            "quick",
            "--model-store",
            str(store),
            "--version",
            "q2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = load_bundle(store / "bundles" / "q2")
    assert second.spec["selection"]["val_score"] == spec["selection"]["val_score"]
    assert second.spec["metrics"] == spec["metrics"]
    # the same function (graph node names may differ with what else the process built before)
    rng = np.random.default_rng(5)
    probe = rng.uniform(0, 300, size=(16, model.window_hours, len(RAW_FIELDS))).astype(np.float32)
    ends = np.arange(380_000, 380_016)
    np.testing.assert_array_equal(OnnxForecaster(second).predict(probe, ends).point, model.predict(probe, ends).point)
    assert load_production(store).version == "q1"
    assert "kept q1 in production" in proc.stdout + proc.stderr
    # --force promotes anyway; --no-refit serves the model as selected: another function
    argv = ["train", "--grid", "quick", "--model-store", str(store), "--version", "q3", "--force", "--no-refit"]
    assert main(argv) == 0
    assert json.loads((store / "production.json").read_text())["version"] == "q3"
    third = load_bundle(store / "bundles" / "q3")
    assert third.spec["refit"] is None and third.spec["selection"]["val_score"] == spec["selection"]["val_score"]
    assert not np.array_equal(OnnxForecaster(third).predict(probe, ends).point, model.predict(probe, ends).point)
    # an experiment on a split moved a year back is never promoted, even with --force
    argv = ["train", "--grid", "quick", "--model-store", str(store), "--version", "q4", "--force", "--shift-years", "1"]
    assert main(argv) == 0
    assert load_bundle(store / "bundles" / "q4").spec["data"]["split_id"].startswith("shifted: train < 2014-03-01")
    assert load_production(store).version == "q3"
    assert main(["promote", "q4", "--model-store", str(store)]) == 2  # nor by hand
    assert main(["promote", "q1", "--model-store", str(store)]) == 0
    assert load_production(store).version == "q1"


def test_only_servable_families_are_selected(tmp_path):
    from training.train import TrainConfig, train

    with pytest.raises(ValueError, match="no configuration of a servable family"):
        train(TrainConfig(grid="quick", serving_families=("lstm",)), tmp_path / "store")
    assert not (tmp_path / "store" / "production.json").exists()
