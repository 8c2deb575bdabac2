"""A new station's first two weeks: `pm25 coldstart`.

`pm25 evaluate` scores stations that have run for 14 days before the scored year. A station that
joins a deployment starts from nothing: an empty window (the model reads 48 hours) and an
adaptation with no pairs (pm25.adapt). This replays each station of the split from ``starts``
dates spread over its year, each time from nothing, through the stream's code path (the backtest,
adaptation included), for ``days`` days, and scores the forecasts by the station's age (hours since
its first reading) against persistence on the same pairs, beside the same station and hours
forecast with 30 days of history before the start (an established station).

Skill is RMSE skill against persistence, pooled over the stations and starts of an age bin.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pm25.schema import Reading
from pm25.settings import Settings
from stream_processor.backtest import make_engine
from stream_processor.engine import EncodedForecast, run_offline
from training.evaluate import last_observed, multisite_split

__all__ = ["AGE_BINS", "ColdStartConfig", "run_coldstart", "score_by_age"]

log = logging.getLogger(__name__)

#: age bins (hours since the station's first reading, [from, to))
AGE_BINS: tuple[tuple[int, int], ...] = ((0, 12), (12, 48), (48, 96), (96, 168), (168, 336))
HORIZONS = (1, 3, 6, 12, 24)
#: the history an established station has before the start
HISTORY_DAYS = 30


@dataclass(frozen=True)
class ColdStartConfig:
    split: str = "val"  # the validation year: where choices are made (test: the held-out year)
    starts: int = 30
    days: int = 14
    version: str | None = None  # a bundle of the store other than production's


def score_by_age(
    forecasts: Iterable[EncodedForecast], readings: Sequence[Reading], first: int, sums: dict[Any, list[float]]
) -> None:
    """Add a replay's squared errors, and persistence's on the same pairs, to ``sums`` keyed by
    (horizon, age bin); ``first``: the hour the station's age counts from (its final forecast per
    issue hour; ages outside :data:`AGE_BINS` are left out)."""
    actual = {r.hour: r.pm25 for r in readings}
    last_by_hour = last_observed(readings)
    final = {f.end_hour: f for f in forecasts}
    for hour, f in final.items():
        age = hour - first
        b = next((b for b in AGE_BINS if b[0] <= age < b[1]), None)
        if b is None:
            continue
        points = f.decode().horizons
        for h in HORIZONS:
            y, p = actual.get(hour + h), last_by_hour.get(hour, math.nan)
            if y is None or math.isnan(p):
                continue
            acc = sums.setdefault((h, b), [0.0, 0.0, 0])
            acc[0] += (points[h - 1].pm25 - y) ** 2
            acc[1] += (p - y) ** 2
            acc[2] += 1


def _skill(sums: dict[Any, list[float]]) -> dict[str, list[float | None]]:
    return {
        str(h): [
            round(100 * (1 - math.sqrt(sums[(h, b)][0] / sums[(h, b)][1])), 1)
            if (h, b) in sums and sums[(h, b)][1] > 0
            else None
            for b in AGE_BINS
        ]
        for h in HORIZONS
    }


def run_coldstart(cc: ColdStartConfig, out_dir: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Replay, score, and write ``coldstart.{json,md,png}`` to ``out_dir``; returns the report."""
    t0 = time.monotonic()
    settings = settings or Settings()
    series, (start, end) = multisite_split(cc.split, before_hours=HISTORY_DAYS * 24)
    span = cc.days * 24
    engine = make_engine(settings, (), cc.version)
    new: dict[Any, list[float]] = {}
    old: dict[Any, list[float]] = {}
    step = max(1, (end - start - span - 24) // cc.starts)
    for k in range(cc.starts):
        t_start = start + k * step
        for rs in series.values():
            window = [r for r in rs if t_start <= r.hour < t_start + span + 24]
            if not window:
                continue
            first = window[0].hour
            fresh = [r for r in window if r.hour < t_start + span]
            score_by_age(run_offline(engine, fresh, batch_size=256), window, first, new)
            history = [r for r in rs if t_start - HISTORY_DAYS * 24 <= r.hour < t_start + span]
            established = (f for f in run_offline(engine, history, batch_size=256) if f.end_hour >= first)
            score_by_age(established, window, first, old)
        log.info("[%d/%d] start %d replayed (%d stations)", k + 1, cc.starts, t_start, len(series))
    report = {
        "model_version": engine.model.version,
        "split": cc.split,
        "starts": cc.starts,
        "stations": sorted(series),
        "age_bins_hours": [list(b) for b in AGE_BINS],
        "pairs": {str(h): [int(new.get((h, b), [0, 0, 0])[2]) for b in AGE_BINS] for h in HORIZONS},
        "new_station_skill": _skill(new),
        "established_skill": _skill(old),
        "seconds": round(time.monotonic() - t0, 1),
    }
    _write(report, out_dir)
    return report


def _write(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "coldstart.json").write_text(json.dumps(report, indent=2) + "\n")
    bins = [f"{a}-{b} h" for a, b in AGE_BINS]
    lines = [
        f"# A new station's first {AGE_BINS[-1][1] // 24} days ({report['model_version']}, {report['split']} split)",
        "",
        f"RMSE skill against persistence by the station's age, {len(report['stations'])} stations x "
        f"{report['starts']} starts; new: from nothing; established: the same hours with "
        f"{HISTORY_DAYS} days of history before the start (`pm25 coldstart`).",
        "",
        "| horizon | " + " | ".join(bins) + " |",
        "|---|" + "---|" * len(bins),
    ]
    for h in HORIZONS:
        new, old = report["new_station_skill"][str(h)], report["established_skill"][str(h)]
        cells = [f"{_pct(n)} ({_pct(o)})" for n, o in zip(new, old, strict=True)]
        lines.append(f"| {h} h | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: new station (established station)."]
    (out_dir / "coldstart.md").write_text("\n".join(lines) + "\n")
    try:
        _plot(report, out_dir / "coldstart.png")
    except ImportError:  # matplotlib is in the training extra
        log.warning("matplotlib missing: no plot")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} %"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HORIZONS), figsize=(3.2 * len(HORIZONS), 3.6), sharey=True)
    x = range(len(AGE_BINS))
    labels = [f"{a}-{b}" for a, b in AGE_BINS]
    for ax, h in zip(axes, HORIZONS, strict=True):
        for key, label in (("new_station_skill", "new station"), ("established_skill", "established")):
            values = [math.nan if v is None else v for v in report[key][str(h)]]
            ax.plot(x, values, marker="o", label=label)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(list(x), labels, rotation=45, fontsize=8)
        ax.set_title(f"{h} h ahead")
        ax.set_xlabel("station age (hours)")
    axes[0].set_ylabel("skill vs persistence (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"A new station's first days, {report['split']} split")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
