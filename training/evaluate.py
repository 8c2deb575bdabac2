"""`pm25 evaluate`: score what the stream publishes, per station, on the held-out test year.

Each station's readings go alone through ``run_offline`` (exactly what ``pm25 backtest`` and the
worker run, the online adaptation included), starting two weeks before the test year so the
windows are full (the adaptation starts from the model alone either way: the warm-up only fills the
windows and teaches each station for those two weeks). Every forecast issued in the test year is
paired with the actual PM2.5 at each target hour. On the same pairs:

* persistence: the last observed PM2.5 at issue time;
* the gradient-boosting yardstick: fitted on the training split (training.baselines), evaluated
  at the same issue hours (it needs the training extra; ``--no-yardstick`` skips it).

Reported per station and horizon: RMSE, MAE, R², skill against persistence and the yardstick,
80 % interval coverage, and the share of hours with a PM2.5 reading that got a forecast. The
targets (issue 15) are checked and the command exits 1 when one is missed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.adapters import RowError, multisite_files, read_multisite
from pm25.schema import Reading
from pm25.settings import Settings
from pm25.stations import Station
from stream_processor.backtest import make_engine
from stream_processor.engine import EncodedForecast, Engine, run_offline
from training.metrics import REPORT_HORIZONS, coverage, horizon_metrics, json_safe

__all__ = [
    "Evaluation",
    "StationResult",
    "evaluate_stations",
    "last_observed",
    "multisite_split",
    "shipped_test_year",
    "write_report",
]

log = logging.getLogger(__name__)

COVERAGE_TARGET = (0.75, 0.85)
SKILL_24H_TARGET = 0.10
#: A station forecast with its network (issue 18): at least this much better than persistence.
NETWORK_SKILL_TARGETS = {6: 0.10, 12: 0.10, 24: 0.15}
FORECAST_SHARE_TARGET = 0.99
WARMUP_HOURS = 14 * 24


@dataclass(frozen=True)
class StationResult:
    station_id: str
    new_station: bool
    hours_with_reading: int
    forecast_hours: int  # hours with a reading that got a forecast
    model: dict[str, list[float]]
    persistence: dict[str, list[float]]
    yardstick: dict[str, list[float]] | None
    coverage: list[float]
    weights: dict[str, list[float]] = field(default_factory=dict)  # the adaptation's final weights
    network: bool = False  # replayed with its network (the regional targets apply)

    @property
    def share(self) -> float:
        return self.forecast_hours / self.hours_with_reading if self.hours_with_reading else float("nan")

    def skill(self, h: int, against: str = "persistence") -> float:
        """1 - RMSE_model / RMSE_reference on the same pairs (NaN when the reference has none)."""
        if against == "persistence":
            model, ref = self.model["rmse"][h - 1], self.persistence["rmse"][h - 1]
        elif self.yardstick is not None:
            model, ref = self.yardstick["model_rmse"][h - 1], self.yardstick["rmse"][h - 1]
        else:
            return float("nan")
        if not ref or ref != ref:
            return float("nan")
        return 1.0 - model / ref

    def misses(self) -> list[str]:
        """The targets this station misses (empty: all met)."""
        out = []
        bad = [h for h in range(1, len(self.model["rmse"]) + 1) if self.skill(h) < 0]
        if bad:
            out.append(f"worse than persistence at {bad} h")
        targets = NETWORK_SKILL_TARGETS if self.network else {24: SKILL_24H_TARGET}
        for h, target in targets.items():
            if self.skill(h) < target:
                out.append(f"{h} h skill {self.skill(h):.1%} < {target:.0%}")
        lo, hi = COVERAGE_TARGET
        cov = [h for h in REPORT_HORIZONS if not lo <= self.coverage[h - 1] <= hi]
        if cov:
            out.append(f"coverage outside {lo:.0%}-{hi:.0%} at {cov} h")
        if self.share < FORECAST_SHARE_TARGET:
            out.append(f"forecasts for {self.share:.2%} of hours with a reading")
        return out


@dataclass(frozen=True)
class Evaluation:
    model_version: str
    period: str
    stations: list[StationResult]

    def passed(self) -> bool:
        return not any(s.misses() for s in self.stations)

    def table(self) -> str:
        network = any(s.network for s in self.stations)
        how = (
            "all stations replayed together in one file, with their network (station metadata), "
            if network
            else "each station replayed alone "
        )
        lines = [
            f"Backtest of {self.model_version}, {self.period}: {how}through the stream's "
            "code path (online adaptation included)",
            "",
            "| station | skill vs persistence 1 / 3 / 6 / 12 / 24 h | skill vs yardstick 6 / 12 / 24 h "
            "| RMSE 24 h (persistence) | 80 % coverage 1 / 6 / 24 h | forecast share | targets |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in self.stations:
            name = s.station_id + (" (new)" if s.new_station else "")
            skill = " / ".join(f"{100 * s.skill(h):.1f}" for h in REPORT_HORIZONS)
            yard = " / ".join(f"{100 * s.skill(h, 'yardstick'):.1f}" for h in (6, 12, 24)) if s.yardstick else "-"
            cov = " / ".join(f"{100 * s.coverage[h - 1]:.1f}" for h in (1, 6, 24))
            rmse = f"{s.model['rmse'][23]:.1f} ({s.persistence['rmse'][23]:.1f})"
            misses = s.misses()
            lines.append(
                f"| {name} | {skill} % | {yard} % | {rmse} | {cov} % | {100 * s.share:.2f} % | "
                f"{'met' if not misses else 'MISSED: ' + '; '.join(misses)} |"
            )
        verdict = "every target met" if self.passed() else "targets NOT met (see the last column)"
        below = (
            ", ".join(f"{t:.0%} at {h} h" for h, t in NETWORK_SKILL_TARGETS.items())
            if network
            else f"{SKILL_24H_TARGET:.0%} at 24 h"
        )
        lines += [
            "",
            f"{verdict}. Targets: RMSE at or below persistence's at every horizon, skill at least "
            f"{below}; 80 % coverage within {COVERAGE_TARGET[0]:.0%}-"
            f"{COVERAGE_TARGET[1]:.0%} at 1, 3, 6, 12 and 24 h; forecasts for at least {FORECAST_SHARE_TARGET:.0%} "
            "of hours with a reading.",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "period": self.period,
            "passed": self.passed(),
            "stations": [
                {
                    "station_id": s.station_id,
                    "new_station": s.new_station,
                    "hours_with_reading": s.hours_with_reading,
                    "forecast_hours": s.forecast_hours,
                    "forecast_share": s.share,
                    "model": s.model,
                    "persistence": s.persistence,
                    "yardstick": s.yardstick,
                    "coverage_80": s.coverage,
                    "skill_vs_persistence": [s.skill(h) for h in range(1, len(s.model["rmse"]) + 1)],
                    "adaptation_weights": s.weights,
                    "misses": s.misses(),
                }
                for s in self.stations
            ],
        }


def shipped_test_year(split: str = "test") -> tuple[list[list[Reading]], tuple[int, int]]:
    """The multi-site stations' readings (warm-up + the split's year) and the year's hour bounds:
    the test year for all 12 stations, or the validation year (``split="val"``, where every tuning
    of the adaptation is done) without the new stations."""
    per_station, bounds = multisite_split(split, before_hours=WARMUP_HOURS, after_hours=24)
    return list(per_station.values()), bounds


def multisite_split(
    split: str, *, before_hours: int, after_hours: int = 0
) -> tuple[dict[str, list[Reading]], tuple[int, int]]:
    """Each multi-site station's readings from ``before_hours`` before the split's year to
    ``after_hours`` after it, by station id in file order, and the year's hour bounds; the new
    stations only in the test split (they are never used for a choice)."""
    from training.dataset import DataConfig

    cfg = DataConfig()
    start, end = cfg.bounds()[split]
    out = {}
    for path in multisite_files():
        if split != "test" and any(name in path.name for name in cfg.new_stations):
            continue
        rs = [r for r in read_multisite(path) if not isinstance(r, RowError)]
        out[rs[0].station_id] = [r for r in rs if start - before_hours <= r.hour < end + after_hours]
    return out, (start, end)


def last_observed(readings: Iterable[Reading]) -> dict[int, float]:
    """Persistence as scored: the last PM2.5 observed at or before each reading's hour (NaN before
    the first observation)."""
    last, out = math.nan, {}
    for r in readings:
        if r.pm25 is not None:
            last = r.pm25
        out[r.hour] = last
    return out


def _score_station(
    engine: Engine,
    readings: list[Reading],
    start: int,
    end: int,
    yardstick: Callable[..., Any] | None,
    run: tuple[list[EncodedForecast], dict[str, Any]] | None = None,
) -> tuple[StationResult, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Score one station's forecasts: from its own replay, or from ``run`` (the forecasts of a
    replay of the whole network, and its adaptations)."""
    actual = {r.hour: (math.nan if r.pm25 is None else r.pm25) for r in readings}
    last_by_hour = last_observed(readings)
    horizons = len(engine.model.horizons)
    issued, pred, lo, hi, act, pers = [], [], [], [], [], []
    adaptations: dict[str, Any] = {}
    if run is None:
        forecasts: Iterable[EncodedForecast] = run_offline(
            engine, (r for r in readings if r.hour < end), adaptations=adaptations
        )
    else:
        forecasts, adaptations = run
    for f in _final(forecasts):
        if not start <= f.end_hour < end:
            continue
        d = f.decode()
        issued.append(f.end_hour)
        pred.append([x.pm25 for x in d.horizons])
        lo.append([x.pm25_lo for x in d.horizons])
        hi.append([x.pm25_hi for x in d.horizons])
        act.append([actual.get(f.end_hour + h, math.nan) for h in range(1, horizons + 1)])
        pers.append([last_by_hour[f.end_hour]] * horizons)
    a = np.array(act, dtype=np.float64).reshape(-1, horizons)
    p = np.array(pred, dtype=np.float64).reshape(-1, horizons)
    station = readings[0].station_id
    with_reading = {h for h, v in actual.items() if start <= h < end and not math.isnan(v)}
    weights = {}
    st = adaptations.get(station)
    if st is not None:
        weights = engine.adapter(engine.model).current_weights(st)
    result = StationResult(
        station_id=station,
        new_station=False,
        hours_with_reading=len(with_reading),
        forecast_hours=len(with_reading & set(issued)),
        model=horizon_metrics(a, p),
        persistence=horizon_metrics(a, np.array(pers, dtype=np.float64).reshape(-1, horizons)),
        yardstick=None,
        coverage=coverage(a, np.array(lo).reshape(-1, horizons), np.array(hi).reshape(-1, horizons)),
        weights=weights,
    )
    if yardstick is not None:  # the model and the yardstick on exactly the same pairs
        yp = yardstick(station, np.array(issued, dtype=np.int64)).astype(np.float64).reshape(-1, horizons)
        same = np.where(~np.isnan(yp[:, :1]), a, np.nan)
        yard = {"rmse": horizon_metrics(same, yp)["rmse"], "model_rmse": horizon_metrics(same, p)["rmse"]}
        result = StationResult(**{**result.__dict__, "yardstick": yard})
    return result, np.array(issued, dtype=np.int64), p


def _final(forecasts: Iterable[EncodedForecast]) -> list[EncodedForecast]:
    """The final forecast of each issue hour (a re-issue replaces an earlier one), in hour order."""
    last: dict[int, EncodedForecast] = {}
    for f in forecasts:
        last[f.end_hour] = f
    return [last[h] for h in sorted(last)]


def evaluate_stations(
    settings: Settings,
    per_station: Iterable[list[Reading]],
    bounds: tuple[int, int],
    *,
    period: str,
    new_stations: Sequence[str] = (),
    yardstick: Callable[..., Any] | None = None,
    progress: bool = True,
    stations_meta: Sequence[Station] | None = None,
    version: str | None = None,
) -> Evaluation:
    """Score each station's replay; ``stations_meta``: replay all stations together in one file
    (hour by hour, in station order) with this metadata, as ``pm25 backtest`` does; ``version``: a
    bundle of the store other than production's."""
    engine = make_engine(settings, stations_meta or (), version)
    start, end = bounds
    results = []
    stations = [s for s in per_station if s]
    together: dict[str, tuple[list[EncodedForecast], dict[str, Any]]] = {}
    if stations_meta is not None:
        merged = sorted((r for rs in stations for r in rs if r.hour < end), key=lambda r: (r.hour, r.station_id))
        adaptations: dict[str, Any] = {}
        log.info("replaying %d readings of %d stations together ...", len(merged), len(stations))
        for f in run_offline(engine, merged, adaptations=adaptations):
            together.setdefault(f.station_id, ([], adaptations))[0].append(f)
    for k, readings in enumerate(stations, start=1):
        sid = readings[0].station_id
        run = together.get(sid, ([], {})) if stations_meta is not None else None
        res, _, _ = _score_station(engine, readings, start, end, yardstick, run)
        in_network = engine.networks.network_of(sid) is not None
        res = StationResult(**{**res.__dict__, "new_station": sid in new_stations, "network": in_network})
        results.append(res)
        if progress:
            log.info(
                "[%d/%d] %s: skill 1/6/24 h %.1f/%.1f/%.1f %%, coverage 24 h %.1f %%",
                k,
                len(stations),
                res.station_id,
                100 * res.skill(1),
                100 * res.skill(6),
                100 * res.skill(24),
                100 * res.coverage[23],
            )
    return Evaluation(engine.model.version, period, results)


def gradient_boosting_yardstick(settings: Settings) -> Callable[[str, npt.NDArray[np.int64]], Any]:
    """Fit the yardstick on the training split with the production bundle's features and window;
    returns ``predict(station_id, issue_hours) -> [N, 24]`` (NaN where no sample exists)."""
    from model_store import default_store, load_production
    from training.baselines import GradientBoostingBaseline
    from training.dataset import DataConfig, load_all, split_samples
    from training.train import HORIZONS, _level

    spec = load_production(settings.model_store or default_store()).spec
    cfg = DataConfig()
    stations = load_all(cfg)
    w, gap, names = int(spec["window_hours"]), int(spec["max_gap_hours"]), list(spec["features"])
    data = split_samples(stations, cfg, w, HORIZONS, gap, names, splits=("train", "test"))
    from pm25.features import target_scale

    train = data["train"]  # trees need no scaling: the yardstick reads the features as they are
    unit = target_scale(_level(train), spec["target"])
    target = ((train.y - train.last_pm25[:, None]) / unit).astype(np.float32)
    gb = GradientBoostingBaseline().fit(train, target, spec["target"], _level)
    test = data["test"]
    pred = gb.predict(test)
    ids = [s.station_id for s in stations]
    index = {
        (ids[k], int(h)): i for i, (k, h) in enumerate(zip(test.station.tolist(), test.end_hour.tolist(), strict=True))
    }

    def predict(station_id: str, hours: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        out = np.full((len(hours), HORIZONS), np.nan, dtype=np.float32)
        for j, h in enumerate(hours.tolist()):
            i = index.get((station_id, h))
            if i is not None:
                out[j] = pred[i]
        return out

    return predict


def write_report(ev: Evaluation, out_dir: Path) -> list[Path]:
    """JSON, Markdown table and a per-station plot (skill by horizon, coverage)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "evaluation.json", out_dir / "evaluation.md"]
    written[0].write_text(json.dumps(json_safe(ev.to_dict()), indent=1) + "\n")
    written[1].write_text(ev.table() + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return written
    hs = list(range(1, 25))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for s in ev.stations:
        style = "--" if s.new_station else "-"
        ax1.plot(
            hs, [100 * s.skill(h) for h in hs], style, lw=1.2, label=s.station_id + (" (new)" if s.new_station else "")
        )
        ax2.plot(hs, [100 * c for c in s.coverage], style, lw=1.2)
    ax1.axhline(0, color="k", lw=0.8)
    ax1.axhline(100 * SKILL_24H_TARGET, color="tab:red", lw=0.8, ls=":")
    ax1.set(xlabel="horizon (h)", ylabel="skill vs persistence (%)", title=f"{ev.period}: skill by station")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    ax2.axhspan(75, 85, color="green", alpha=0.15, label="target 75-85 %")
    ax2.axhline(80, color="k", lw=0.8)
    ax2.set(
        xlabel="horizon (h)", ylabel="% of actuals inside", title="80 % interval coverage by station", ylim=(50, 100)
    )
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    png = out_dir / "evaluation.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [*written, png]
