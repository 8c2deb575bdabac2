"""`pm25 evaluate`: score the production bundle on a held-out year through the stream's code path.

The readings of the single-site dataset go through ``run_offline`` (exactly what ``pm25 backtest``
and the worker run); every forecast issued in the chosen year (China Standard Time, the dataset's
calendar) is paired with the actual PM2.5 at each target hour. Persistence is scored on the same
pairs. The table compares with the yardstick quoted in the project's issue #7 (a gradient-boosting
model on lags, weather and calendar features, same data and split).

Needs no TensorFlow; the plot needs matplotlib (training extra).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pm25.adapters import CST, RowError, read_single_site
from pm25.schema import Reading, iso_to_hour
from pm25.settings import Settings
from stream_processor.backtest import make_engine
from stream_processor.engine import run_offline
from training.metrics import REPORT_HORIZONS, coverage, horizon_metrics

__all__ = ["YARDSTICK_RMSE", "Evaluation", "evaluate_year"]

#: Test-year 2014 RMSE (µg/m³) of the yardsticks, from issue #7.
YARDSTICK_RMSE = {1: 21.32, 3: 38.87, 6: 53.01, 12: 70.40, 24: 86.41}
PERSISTENCE_REFERENCE = {1: 22.06, 3: 42.29, 6: 61.24, 12: 81.98, 24: 98.83}
COVERAGE_TARGET = (0.75, 0.85)


@dataclass(frozen=True)
class Evaluation:
    year: int
    model_version: str
    forecasts: int
    model: dict[str, list[float]]
    persistence: dict[str, list[float]]
    coverage: list[float]

    def passed(self) -> dict[int, bool]:
        return {h: self.model["rmse"][h - 1] <= YARDSTICK_RMSE[h] for h in REPORT_HORIZONS}

    def coverage_ok(self) -> bool:
        lo, hi = COVERAGE_TARGET
        return all(lo <= self.coverage[h - 1] <= hi for h in REPORT_HORIZONS)

    def table(self) -> str:
        lines = [
            f"Backtest of {self.model_version} on the single-site test year {self.year} "
            f"({self.forecasts} forecasts, stream code path)",
            "",
            "| horizon | model RMSE | yardstick RMSE | beats yardstick | persistence RMSE | model MAE | model R² "
            "| 80 % interval coverage | pairs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for h in REPORT_HORIZONS:
            i = h - 1
            lines.append(
                f"| {h} h | {self.model['rmse'][i]:.2f} | {YARDSTICK_RMSE[h]:.2f} | "
                f"{'yes' if self.passed()[h] else 'NO'} | {self.persistence['rmse'][i]:.2f} | "
                f"{self.model['mae'][i]:.2f} | {self.model['r2'][i]:.3f} | {self.coverage[i]:.1%} | "
                f"{self.model['n'][i]} |"
            )
        verdict = "all horizons at or below the yardstick" if all(self.passed().values()) else "yardstick NOT met"
        cov = "within" if self.coverage_ok() else "NOT within"
        lines += ["", f"{verdict}; coverage {cov} {COVERAGE_TARGET[0]:.0%}-{COVERAGE_TARGET[1]:.0%} at every horizon"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "year": self.year,
            "model_version": self.model_version,
            "forecasts": self.forecasts,
            "model": self.model,
            "persistence": self.persistence,
            "coverage_80": self.coverage,
            "yardstick_rmse": YARDSTICK_RMSE,
            "beats_yardstick": {str(h): ok for h, ok in self.passed().items()},
            "coverage_ok": self.coverage_ok(),
        }


def _year_bounds(year: int) -> tuple[int, int]:
    from datetime import datetime

    start = iso_to_hour(datetime(year, 1, 1, tzinfo=CST).isoformat())
    end = iso_to_hour(datetime(year + 1, 1, 1, tzinfo=CST).isoformat())
    return start, end


def evaluate_year(settings: Settings, year: int = 2014, progress: bool = True) -> Evaluation:
    engine = make_engine(settings)
    start, end = _year_bounds(year)
    warmup = start - engine.model.window_hours - 1
    readings: list[Reading] = [
        r for r in read_single_site() if not isinstance(r, RowError) and warmup <= r.hour < end + 24
    ]
    actual = {r.hour: (math.nan if r.pm25 is None else r.pm25) for r in readings}
    horizons = len(engine.model.horizons)
    rows_pred, rows_lo, rows_hi, rows_act, rows_pers = [], [], [], [], []
    last_obs = math.nan
    last_by_hour: dict[int, float] = {}
    for r in readings:  # persistence: the last observed PM2.5 at issue time
        if r.pm25 is not None:
            last_obs = r.pm25
        last_by_hour[r.hour] = last_obs
    stream = [r for r in readings if r.hour < end]
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, unit="reading", desc=f"backtest {year}")
    n = 0
    for encoded in run_offline(engine, stream):
        issued = encoded.end_hour
        if not start <= issued < end:
            continue
        n += 1
        f = encoded.decode()
        rows_pred.append([x.pm25 for x in f.horizons])
        rows_lo.append([x.pm25_lo for x in f.horizons])
        rows_hi.append([x.pm25_hi for x in f.horizons])
        rows_act.append([actual.get(issued + h, math.nan) for h in range(1, horizons + 1)])
        rows_pers.append([last_by_hour[issued]] * horizons)
    act = np.array(rows_act, dtype=np.float64)
    return Evaluation(
        year=year,
        model_version=engine.model.version,
        forecasts=n,
        model=horizon_metrics(act, np.array(rows_pred)),
        persistence=horizon_metrics(act, np.array(rows_pers)),
        coverage=coverage(act, np.array(rows_lo), np.array(rows_hi)),
    )


def write_report(ev: Evaluation, out_dir: Path) -> list[Path]:
    """JSON, Markdown table and a skill-vs-horizon plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "evaluation.json", out_dir / "evaluation.md"]
    written[0].write_text(json.dumps(ev.to_dict(), indent=2) + "\n")
    written[1].write_text(ev.table() + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    hs = np.arange(1, len(ev.model["rmse"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(hs, ev.model["rmse"], "o-", label=f"model {ev.model_version}")
    ax1.plot(hs, ev.persistence["rmse"], "s--", label="persistence")
    ax1.plot(list(YARDSTICK_RMSE), list(YARDSTICK_RMSE.values()), "k^", label="yardstick (gradient boosting)")
    ax1.set(xlabel="horizon (h)", ylabel="RMSE (µg/m³)", title=f"Test year {ev.year}: RMSE by horizon")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot(hs, np.array(ev.coverage) * 100, "o-")
    ax2.axhspan(75, 85, color="green", alpha=0.15, label="target 75-85 %")
    ax2.axhline(80, color="k", lw=0.8)
    ax2.set(xlabel="horizon (h)", ylabel="% of actuals inside", title="80 % interval coverage", ylim=(50, 100))
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    png = out_dir / "evaluation.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [*written, png]
