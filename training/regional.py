"""What neighbour features add, measured on the project's split (``pm25 regional``).

The 12 Beijing multi-site stations are replayed in event-time order through the network clock
(pm25.network) with the shipped station metadata, and the neighbour features (pm25.neighbours)
are computed from the closed hours exactly as a worker would. Two gradient-boosting forecasters,
one regressor per key horizon, read the same station features as the yardstick
(training.baselines: the last 24 hours of log PM2.5 relative to the newest level and the newest
hour of every model feature); the second also reads the neighbour features of the issue hour.
Both are fitted on the training split (stations and hours of the skill issue's split, the three
new stations kept out) and scored on validation or test against persistence on the same pairs.

This measures the information in the neighbour features with a simple learner, apart from the
shipped model (which reads them too: ``pm25 evaluate --network``).
Writes ``reports/regional.{json,md,png}``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.adapters import RowError, read_multisite
from pm25.features import NB_FIELDS, OWN_FIELDS
from pm25.schema import KEY_HORIZONS, Reading
from pm25.stations import BEIJING_STATIONS
from training.dataset import DataConfig, Samples, Series, fill_networks, load_series, split_samples
from training.metrics import json_safe

__all__ = ["RegionalConfig", "run_regional"]

log = logging.getLogger(__name__)
_LAGS = 24


@dataclass(frozen=True)
class RegionalConfig:
    split: str = "test"
    stations_csv: Path = BEIJING_STATIONS
    neighbours: int = 11
    lateness_hours: int = 2
    active_hours: int = 24
    window_hours: int = 48
    max_gap_hours: int = 36
    iterations: int = 200
    seed: int = 42


def _readings(cfg: DataConfig) -> tuple[list[Series], list[Reading]]:
    series, readings = [], []
    for path in cfg.multisite:
        items = list(read_multisite(path))
        series.append(load_series(path, items, cfg))
        readings += [r for r in items if not isinstance(r, RowError)]
    readings.sort(key=lambda r: (r.hour, r.station_id))  # in order: the bound holds trivially
    return series, readings


def _features(s: Samples, nb: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
    base = np.concatenate([s.x[:, -_LAGS:, 0], s.x[:, -1, :]], axis=1)
    return base if nb is None else np.concatenate([base, nb], axis=1)


def _nb_of(s: Samples, series: list[Series], nb: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    rows = np.empty((len(s.y), len(NB_FIELDS)), dtype=np.float32)
    for k, ser in enumerate(series):
        mask = s.station == k
        rows[mask] = nb[k][s.end_hour[mask] - ser.hours[0]]
    return rows


def _fit_predict(
    train: Samples,
    x_train: npt.NDArray[np.float32],
    x_eval: npt.NDArray[np.float32],
    last: npt.NDArray[np.float32],
    rc: RegionalConfig,
) -> dict[int, npt.NDArray[np.float32]]:
    """One HistGradientBoosting per key horizon on the change of log1p PM2.5; the point forecast."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    out = {}
    for h in KEY_HORIZONS:
        y = np.log1p(train.y[:, h - 1]) - np.log1p(train.last_pm25)
        ok = ~np.isnan(y)
        model = HistGradientBoostingRegressor(max_iter=rc.iterations, learning_rate=0.05, random_state=rc.seed)
        model.fit(x_train[ok], y[ok])
        out[h] = np.expm1(np.log1p(last) + model.predict(x_eval)).astype(np.float32)
    return out


def _rmse(a: npt.NDArray[np.floating], p: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean((a - p) ** 2)))


def _score(s: Samples, names: list[str], preds: dict[str, dict[int, Any]], new: tuple[str, ...]) -> list[dict]:
    rows = []
    for k, name in enumerate(names):
        mask = s.station == k
        if not mask.any():
            continue
        row: dict[str, Any] = {"station": name, "new_station": name in new, "skill": {}}
        for variant, by_h in preds.items():
            row["skill"][variant] = {}
            for h in KEY_HORIZONS:
                actual = s.y[mask, h - 1]
                ok = ~np.isnan(actual)
                persist = _rmse(actual[ok], s.last_pm25[mask][ok])
                row["skill"][variant][str(h)] = 1 - _rmse(actual[ok], by_h[h][mask][ok]) / persist
        rows.append(row)
    return rows


def run_regional(rc: RegionalConfig, out_dir: Path) -> dict[str, Any]:
    from training.train import MODEL_FEATURES

    started = time.monotonic()
    cfg = DataConfig(
        single_site=None,
        stations_csv=rc.stations_csv,
        network_lateness_hours=rc.lateness_hours,
        network_neighbours=rc.neighbours,
    )
    series, readings = _readings(cfg)
    log.info("regional: %d readings of %d stations; the network step ...", len(readings), len(series))
    clocks = fill_networks(series, readings, cfg)  # the stream's network columns, in each series
    nb = [s.raw[:, len(OWN_FIELDS) :] for s in series]
    own_features = [n for n in MODEL_FEATURES if not n.startswith("nb_")]
    samples = split_samples(
        series, cfg, rc.window_hours, 24, rc.max_gap_hours, own_features, splits=("train", rc.split), seed=rc.seed
    )
    train, ev = samples["train"], samples[rc.split]
    nb_train, nb_eval = _nb_of(train, series, nb), _nb_of(ev, series, nb)
    log.info("regional: fitting (%d training samples, %d scored) ...", len(train.y), len(ev.y))
    preds = {
        "own": _fit_predict(train, _features(train, None), _features(ev, None), ev.last_pm25, rc),
        "own+neighbours": _fit_predict(train, _features(train, nb_train), _features(ev, nb_eval), ev.last_pm25, rc),
    }
    rows = _score(ev, [s.station_id for s in series], preds, cfg.new_stations)
    report = {
        "split": rc.split,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in rc.__dict__.items()},
        "neighbour_features": list(NB_FIELDS),
        "closed_hours": sum(c.closed_hours for c in clocks.values()),
        "closed_by_watermark": sum(c.closed_by_watermark for c in clocks.values()),
        "samples": {"train": len(train.y), rc.split: len(ev.y)},
        "stations": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
    _write(report, out_dir)
    return report


def _write(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "regional.json").write_text(json.dumps(json_safe(report), indent=2) + "\n", encoding="utf-8")
    hs = [str(h) for h in KEY_HORIZONS]
    lines = [
        f"# Neighbour features: skill against persistence, {report['split']} split",
        "",
        "Gradient boosting on the station's own features (own) and with the neighbour features",
        "(own+neighbours); skill = 1 - RMSE / RMSE of persistence on the same pairs, in %.",
        f"Closed network hours: {report['closed_hours']}, of which {report['closed_by_watermark']} by the watermark.",
        "",
        "| station | " + " | ".join(f"own {h} h" for h in hs) + " | " + " | ".join(f"+nb {h} h" for h in hs) + " |",
        "|---|" + "---:|" * (2 * len(hs)),
    ]
    for row in report["stations"]:
        own = [f"{100 * row['skill']['own'][h]:.1f}" for h in hs]
        both = [f"{100 * row['skill']['own+neighbours'][h]:.1f}" for h in hs]
        name = row["station"] + (" (new)" if row["new_station"] else "")
        lines.append(f"| {name} | " + " | ".join(own) + " | " + " | ".join(both) + " |")
    (out_dir / "regional.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(report, out_dir / "regional.png")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = [str(h) for h in KEY_HORIZONS]
    fig, axes = plt.subplots(1, len(hs), figsize=(3.2 * len(hs), 4), sharey=True)
    names = [r["station"] for r in report["stations"]]
    y = np.arange(len(names))
    for ax, h in zip(axes, hs, strict=True):
        own = [100 * r["skill"]["own"][h] for r in report["stations"]]
        both = [100 * r["skill"]["own+neighbours"][h] for r in report["stations"]]
        ax.barh(y - 0.2, own, height=0.4, label="own")
        ax.barh(y + 0.2, both, height=0.4, label="own + neighbours")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{h} h ahead")
        ax.set_xlabel("skill vs persistence (%)")
    axes[0].set_yticks(y, names)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Neighbour features, gradient boosting, {report['split']} split")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
