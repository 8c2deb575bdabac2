"""`pm25 train`: grid search on the validation year, export to ONNX, write a bundle, gate promotion.

Trained on every station the repository ships, split by time and station (training.dataset):
train before 2015-03-01 (without the three stations kept out as new stations), validation
2015-03-01 to 2016-02-29, test 2016-03-01 to 2017-02-28 (all 12 multi-site stations). Every
choice (early stopping, configuration, ensemble, interval calibration) uses validation only; the
test year is scored once, at the end, for the report. The chosen members are then refit on the
training and validation years together (``TrainConfig.refit``), so the served model has seen the
year before the test year.

The inputs and the target carry over between stations: PM2.5 relative to the station's own recent
level in log space, weather as changes and anomalies, no clock (pm25.features); the target is the
change from the last observation in units of the window's level (``level_delta``). The stream then
adapts each station's forecasts online (pm25.adapt).

``train`` runs stages, each a function: data, preprocessing, search, ensemble, calibration, refit,
evaluation, packaging, promotion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model_store import BundleError, load_production, promote, write_bundle
from pm25.features import RAW_FIELDS, postprocess, scale, target_scale
from stream_processor.networks import ACTIVE_HOURS, NEIGHBOURS
from training.dataset import (
    SPLIT_ID,
    DataConfig,
    Samples,
    Series,
    is_experiment_split,
    load_all,
    split_id_of,
    split_samples,
)
from training.metrics import REPORT_HORIZONS, coverage, horizon_metrics, json_safe
from training.models import ModelConfig

__all__ = ["GRIDS", "MODEL_FEATURES", "TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)
HORIZONS = 24
#: A new bundle must beat production's validation score by more than this (µg/m³) to be promoted.
MIN_IMPROVEMENT = 0.05
#: Scale-free features the model reads (see pm25.features).
MODEL_FEATURES: tuple[str, ...] = (
    "log_pm25_rel_last",
    "log_pm25_rel_mean",
    "log_pm25_change_1h",
    "pm25_imputed",
    "hours_since_pm25",
    "dew_point_depression",
    "temperature_anomaly",
    "pressure_change_3h",
    "log_wind_speed",
    "wind_east",
    "wind_north",
    "log_precipitation",
    "temperature_missing",
    "dew_point_missing",
    "pressure_missing",
    "wind_speed_missing",
    "wind_direction_missing",
    "precipitation_missing",
    # the network's, written when each hour closed (pm25.neighbours; missing for a lone station)
    "nb_rel",
    "nb_change1",
    "nb_change3",
    "nb_upwind_rel",
    "nb_upwind_change3",
    "nb_share",
    "nb_missing",
)


def _grid(
    families: tuple[str, ...],
    windows: tuple[int, ...],
    units: tuple[int, ...],
    lrs: tuple[float, ...],
    dropouts: tuple[float, ...],
    epochs: int,
    patience: int = 2,
) -> list[ModelConfig]:
    return [
        ModelConfig(
            family=f,
            window_hours=w,
            units=u,
            learning_rate=lr,
            dropout=d,
            epochs=epochs,
            patience=patience,
            batch_size=512,
        )
        for f in families
        for w in windows
        for u in units
        for lr in lrs
        for d in dropouts
    ]


GRIDS: dict[str, Callable[[], list[ModelConfig]]] = {
    # CI: one small model, a few epochs (< 2 minutes with data loading and export).
    "quick": lambda: [ModelConfig(family="mlp", window_hours=48, units=32, epochs=2, patience=1, batch_size=512)],
    # The default grid (< 20 minutes on 2 cores): 3 servable families x 2 widths, window 48 h.
    "default": lambda: (
        _grid(("mlp",), (48,), (32, 64), (1e-3,), (0.2,), 12)
        + _grid(("conv1d",), (48,), (32, 64), (1e-3,), (0.2,), 10)
        + _grid(("lstm",), (48,), (32, 64), (2e-3,), (0.0,), 8)
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    grid: str = "default"
    target_kind: str = "level_delta"
    #: the unit of the target: the window's level plus this (µg/m³); keeps clean air from dividing by ~0
    level_offset: float = 10.0
    ensemble_size: int = 3
    #: Refit the selected configuration(s) on every sample before the test year (training and
    #: validation years), each for the epochs early stopping chose on validation, once every choice
    #: is made. The served model then has seen the most recent year; its validation metrics are
    #: in-sample (the selection score and the interval calibration stay those of the search).
    #: Chosen on a split one year earlier (docs/skill.md): 24-hour skill on the validation year
    #: 10.2-13.3 % without, 12.7-16.7 % with.
    refit: bool = True
    #: the longest trailing PM2.5 gap that still gets a forecast (hours)
    max_gap_hours: int = 36
    seed: int = 42
    #: boosting iterations of the gradient-boosting yardstick (per reported horizon)
    yardstick_iterations: int = 200
    selection_horizons: tuple[int, ...] = REPORT_HORIZONS
    version: str | None = None
    #: Families that may be served. A GRU is trained and reported for comparison but not selected:
    #: tf2onnx exports Keras 3 GRUs as ONNX Loop graphs, several times slower in onnxruntime than
    #: the native LSTM op (docs/benchmarks.md), and the worker's throughput is bound by inference.
    serving_families: tuple[str, ...] = ("mlp", "conv1d", "lstm")


@dataclass(frozen=True)
class TrainResult:
    bundle_path: Path
    version: str
    val_score: float
    promoted: bool
    reason: str


@dataclass
class _Prep:
    """The fitted preprocessing: feature scaler and target transform (training split only)."""

    mean: npt.NDArray[np.float32]
    std: npt.NDArray[np.float32]
    target: dict[str, Any]

    def x(self, s: Samples) -> npt.NDArray[np.float32]:
        return scale(s.x, range(len(MODEL_FEATURES)), self.mean, self.std)

    def y(self, s: Samples) -> npt.NDArray[np.float32]:
        unit = target_scale(_level(s), self.target)
        return ((s.y - s.last_pm25[:, None]) / unit).astype(np.float32)

    def point(self, out: npt.NDArray[np.float32], s: Samples, intervals: dict[str, Any] | None = None) -> Any:
        return postprocess(out, s.last_pm25, self.target, intervals or _zero_intervals(), _level(s))


def _level(s: Samples) -> npt.NDArray[np.float32]:
    """The window level of each sample, as the shared feature code computes it for the stream."""
    return s.level


def _selection_score(metrics: dict[str, list[float]], horizons: tuple[int, ...]) -> float:
    """Mean RMSE over the selection horizons (µg/m³), lower is better."""
    return float(np.mean([metrics["rmse"][h - 1] for h in horizons]))


def _package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "scikit-learn", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _code_fingerprint() -> str:
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for pkg in ("pm25", "training"):
        for path in sorted((root / pkg).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _progress_callback(k: int, n: int, name: str) -> Any:
    """One log line per epoch: configuration k of n, epoch, validation loss."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            log.info(
                "  [%d/%d] %s epoch %d: loss %.4f val_loss %.4f",
                k,
                n,
                name,
                epoch + 1,
                logs.get("loss", float("nan")),
                logs.get("val_loss", float("nan")),
            )

    return Progress()


def _predict(model: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(model.predict(x, batch_size=4096, verbose=0), dtype=np.float32)


def _ensemble(models: list[Any], window_hours: int, n_features: int) -> Any:
    import keras

    inp = keras.Input(shape=(window_hours, n_features), name="x")
    out = keras.layers.Average(name="y")([m(inp) for m in models])
    return keras.Model(inp, out, name="ensemble")


# -- stages ------------------------------------------------------------------------------------
def stage_data(tc: TrainConfig, windows: list[int]) -> tuple[list[Series], dict[int, dict[str, Samples]]]:
    """Read and validate every station; samples per window length and split."""
    stations = load_all(tc.data)
    samples = {
        w: split_samples(stations, tc.data, w, HORIZONS, tc.max_gap_hours, MODEL_FEATURES, seed=tc.seed)
        for w in windows
    }
    longest = samples[windows[-1]]
    log.info(
        "data: %d stations; %s samples",
        len(stations),
        ", ".join(f"{k} {len(v.y)}" for k, v in longest.items()),
    )
    return stations, samples


def stage_preprocessing(tc: TrainConfig, train: Samples) -> _Prep:
    """Feature scaler fitted on the training split only (missing values ignored)."""
    flat = train.x.reshape(-1, train.x.shape[2]).astype(np.float64)
    mean = np.nan_to_num(np.nanmean(flat, axis=0))
    std = np.nan_to_num(np.nanstd(flat, axis=0), nan=1.0)
    target = {"kind": tc.target_kind, "offset": tc.level_offset}
    return _Prep(mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32), target)


def _val_score(tc: TrainConfig, prep: _Prep, model: Any, val: Samples) -> tuple[float, dict[str, list[float]]]:
    point, _, _ = prep.point(_predict(model, prep.x(val)), val)
    m = horizon_metrics(val.y, point)
    return _selection_score(m, tc.selection_horizons), m


def stage_search(
    tc: TrainConfig, configs: list[ModelConfig], samples: dict[int, dict[str, Samples]], prep: _Prep
) -> tuple[list[tuple[float, ModelConfig, Any]], list[dict[str, Any]]]:
    """Fit every configuration (early stopping on validation); score each on validation. Each
    result records the epochs early stopping kept (``best_epochs``, what a refit trains for)."""
    import keras

    from training.models import build_model

    trained, results = [], []
    for k, cfg in enumerate(configs, start=1):
        t0 = time.perf_counter()
        data = samples[cfg.window_hours]
        keras.utils.set_random_seed(tc.seed)
        model = build_model(cfg, len(MODEL_FEATURES), HORIZONS)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
        model.fit(
            prep.x(data["train"]),
            prep.y(data["train"]),
            validation_data=(prep.x(data["val"]), prep.y(data["val"])),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[stop, _progress_callback(k, len(configs), cfg.name)],
        )
        score, m = _val_score(tc, prep, model, data["val"])
        trained.append((score, cfg, model))
        results.append(
            {
                "config": cfg.to_dict(),
                "name": cfg.name,
                "val_score": round(score, 4),
                "val_rmse": {h: m["rmse"][h - 1] for h in REPORT_HORIZONS},
                "best_epochs": stop.best_epoch + 1,
                "seconds": round(time.perf_counter() - t0, 1),
                "servable": cfg.family in tc.serving_families,
            }
        )
        log.info(
            "[%d/%d] %s: validation mean RMSE %.2f (%.0f s)", k, len(configs), cfg.name, score, time.perf_counter() - t0
        )
    trained.sort(key=lambda t: t[0])
    return trained, results


def stage_ensemble(
    tc: TrainConfig,
    trained: list[tuple[float, ModelConfig, Any]],
    results: list[dict[str, Any]],
    val: dict[int, Samples],
    prep: _Prep,
) -> tuple[float, ModelConfig, Any, str, str, list[ModelConfig]]:
    """The best servable configuration, or the average of the best ones with its window when
    validation prefers it. Returns score, config, model, family, name and the configurations
    the model is made of."""
    eligible = [t for t in trained if t[1].family in tc.serving_families]
    if not eligible:
        raise ValueError(f"no configuration of a servable family {tc.serving_families} in the grid")
    score, cfg, model = eligible[0]
    family, name, chosen = cfg.family, cfg.name, [cfg]
    members = [t for t in eligible if t[1].window_hours == cfg.window_hours][: tc.ensemble_size]
    if len(members) > 1:
        ens = _ensemble([t[2] for t in members], cfg.window_hours, len(MODEL_FEATURES))
        ens_score, _ = _val_score(tc, prep, ens, val[cfg.window_hours])
        names = [t[1].name for t in members]
        ens_name = "ensemble(" + ", ".join(names) + ")"
        results.append(
            {
                "config": {"ensemble": names},
                "name": ens_name,
                "val_score": round(ens_score, 4),
                "val_rmse": {},
                "seconds": 0.0,
                "servable": True,
            }
        )
        log.info("ensemble of %s: validation mean RMSE %.2f", names, ens_score)
        if ens_score < score:
            score, model, family, name = ens_score, ens, "ensemble", ens_name
            chosen = [t[1] for t in members]
    log.info("selected %s (validation mean RMSE %.2f)", name, score)
    return score, cfg, model, family, name, chosen


def stage_refit(
    tc: TrainConfig,
    stations: list[Series],
    prep: _Prep,
    members: list[ModelConfig],
    results: list[dict[str, Any]],
    train_samples: int,
) -> tuple[Any, dict[str, Any]]:
    """The selected configuration(s) trained again, from the same seed, on every sample before the
    test year with the training split's augmentation, each for the epochs early stopping kept on
    validation (no validation data is left to stop on); the feature scaler stays the training
    split's. Returns the model (an average if several) and what the spec records of the refit."""
    import keras

    from training.models import build_model

    epochs = {r["name"]: r["best_epochs"] for r in results if "best_epochs" in r}
    window = members[0].window_hours
    data = replace(tc.data, val_start=tc.data.test_start)
    all_years = split_samples(
        stations, data, window, HORIZONS, tc.max_gap_hours, MODEL_FEATURES, splits=("train",), seed=tc.seed
    )["train"]
    log.info("refit on %d samples before %s (training and validation years)", len(all_years.y), tc.data.test_start)
    models = []
    for k, cfg in enumerate(members, start=1):
        t0 = time.perf_counter()
        keras.utils.set_random_seed(tc.seed)
        model = build_model(cfg, len(MODEL_FEATURES), HORIZONS)
        model.fit(
            prep.x(all_years),
            prep.y(all_years),
            epochs=epochs[cfg.name],
            batch_size=cfg.batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[_progress_callback(k, len(members), f"refit {cfg.name}")],
        )
        models.append(model)
        log.info(
            "[%d/%d] refit %s: %d epochs (%.0f s)",
            k,
            len(members),
            cfg.name,
            epochs[cfg.name],
            time.perf_counter() - t0,
        )
    info = {
        "before": str(tc.data.test_start),
        "samples": len(all_years.y),
        "train_samples": train_samples,
        "epochs": {cfg.name: epochs[cfg.name] for cfg in members},
    }
    return (models[0] if len(models) == 1 else _ensemble(models, window, len(MODEL_FEATURES))), info


def stage_calibration(prep: _Prep, model: Any, val: Samples) -> dict[str, Any]:
    """Split-conformal 10 % / 90 % quantiles of the validation log1p residuals per horizon: the
    starting intervals, which each station then adapts online (pm25.adapt)."""
    point, _, _ = prep.point(_predict(model, prep.x(val)), val)
    resid = np.log1p(val.y) - np.log1p(point)
    return {
        "method": "split conformal on validation log1p residuals; adapted per station online (quantile tracking)",
        "quantiles": [0.1, 0.9],
        "log_residual_lo": [round(float(np.nanquantile(resid[:, h], 0.1)), 5) for h in range(HORIZONS)],
        "log_residual_hi": [round(float(np.nanquantile(resid[:, h], 0.9)), 5) for h in range(HORIZONS)],
    }


def stage_evaluation(
    tc: TrainConfig, prep: _Prep, model: Any, data: dict[str, Samples], intervals: dict[str, Any], names: list[str]
) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """Model, persistence, seasonal naive and the gradient-boosting yardstick on the same pairs,
    validation and test, over all stations and per station (the model alone, before the stream's
    online adaptation: `pm25 evaluate` scores what the stream publishes)."""
    from training.baselines import GradientBoostingBaseline, baseline_predictions

    log.info("fitting the gradient-boosting yardstick")
    gb = GradientBoostingBaseline(tc.seed, tc.yardstick_iterations).fit(
        data["train"], prep.y(data["train"]), prep.target, _level
    )
    metrics: dict[str, Any] = {}
    test_pred: tuple[Any, ...] = ()
    for split in ("val", "test"):
        s = data[split]
        point, lo, hi = prep.point(_predict(model, prep.x(s)), s, intervals)
        if split == "test":
            test_pred = (point, lo, hi)
        preds = {"model": point, **baseline_predictions(s, gb)}
        metrics[split] = {k: horizon_metrics(s.y, p) for k, p in preds.items()}
        metrics[split]["model"]["coverage_80"] = coverage(s.y, lo, hi)
        per_station = {}
        for k in sorted(set(s.station.tolist())):
            sel = s.station == k
            per_station[names[k]] = {p: horizon_metrics(s.y[sel], v[sel])["rmse"] for p, v in preds.items()}
        metrics[split]["per_station_rmse"] = per_station
    return metrics, test_pred


def train(tc: TrainConfig, store: Path, *, force: bool = False, promote_if_better: bool = True) -> TrainResult:
    import tensorflow as tf

    from training.export import export_onnx

    tf.config.experimental.enable_op_determinism()
    started = time.perf_counter()
    configs = GRIDS[tc.grid]()
    if not any(c.family in tc.serving_families for c in configs):
        raise ValueError(f"no configuration of a servable family {tc.serving_families} in the grid")
    windows = sorted({c.window_hours for c in configs})
    stations, samples = stage_data(tc, windows)
    prep = stage_preprocessing(tc, samples[windows[-1]]["train"])
    log.info("grid '%s': %d configurations", tc.grid, len(configs))
    trained, results = stage_search(tc, configs, samples, prep)
    score, cfg, model, family, name, chosen = stage_ensemble(
        tc, trained, results, {w: s["val"] for w, s in samples.items()}, prep
    )
    data = samples[cfg.window_hours]
    intervals = stage_calibration(prep, model, data["val"])
    refit = None
    if tc.refit:
        model, refit = stage_refit(tc, stations, prep, chosen, results, len(data["train"].y))
    names = [s.station_id for s in stations]
    metrics, test_pred = stage_evaluation(tc, prep, model, data, intervals, names)
    version = tc.version or f"{family}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    onnx_bytes = export_onnx(model, cfg.window_hours, len(MODEL_FEATURES), check_x=prep.x(data["val"])[:256])
    spec = _spec(tc, version, family, name, cfg, prep, intervals, score, results, metrics, stations, started)
    spec["refit"] = refit
    path = stage_packaging(store, spec, onnx_bytes, model, data["test"], test_pred, names)
    promoted, reason = stage_promotion(store, version, score, force, promote_if_better, split_id_of(tc.data))
    log.info("%s", reason)
    return TrainResult(path, version, score, promoted, reason)


def _spec(
    tc: TrainConfig,
    version: str,
    family: str,
    name: str,
    cfg: ModelConfig,
    prep: _Prep,
    intervals: dict[str, Any],
    score: float,
    results: list[dict[str, Any]],
    metrics: dict[str, Any],
    stations: list[Series],
    started: float,
) -> dict[str, Any]:
    d = tc.data
    spec = {
        "version": version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "family": family,
        "model_name": name,
        "config": cfg.to_dict(),
        "window_hours": cfg.window_hours,
        "horizons": list(range(1, HORIZONS + 1)),
        "raw_fields": list(RAW_FIELDS),
        "features": list(MODEL_FEATURES),
        "network": {
            "stations": str(d.stations_csv.name) if d.stations_csv else None,
            "lateness_hours": d.network_lateness_hours,
            "neighbours": NEIGHBOURS,
            "active_hours": ACTIVE_HOURS,
            "dropout": d.network_dropout,
        },
        "max_gap_hours": tc.max_gap_hours,
        "scaler": {
            "kind": "standardisation (mean, std) fitted on the training split, missing values ignored",
            "mean": [float(v) for v in prep.mean],
            "std": [float(v) for v in prep.std],
        },
        "target": prep.target,
        "intervals": intervals,
        "selection": {
            "score": "mean validation RMSE over horizons " + ",".join(map(str, tc.selection_horizons)),
            "val_score": round(score, 4),
            "grid": tc.grid,
            "results": results,
        },
        "metrics": metrics,
        "data": {
            "files": {s.file: s.report.sha256 for s in stations},
            "stations": [s.station_id for s in stations],
            "split_id": split_id_of(d),
            "splits": {
                "train": f"before {d.val_start}"
                + (f"; the served model refit on everything before {d.test_start}" if tc.refit else ""),
                "val": f"{d.val_start} to {d.test_start} (exclusive)"
                + ("; the served model was refit on it: its scores there are in-sample" if tc.refit else ""),
                "test": f"{d.test_start} to {d.test_end} (exclusive)",
            },
            "new_stations": list(d.new_stations),
        },
        "train_config": {k: v for k, v in asdict(replace(tc, data=DataConfig())).items() if k != "data"},
        "seed": tc.seed,
        "code_sha256": _code_fingerprint(),
        "packages": _package_versions(),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return json_safe(spec)


def stage_packaging(
    store: Path,
    spec: dict[str, Any],
    onnx_bytes: bytes,
    model: Any,
    test: Samples,
    test_pred: tuple[Any, ...],
    names: list[str],
) -> Path:
    """The bundle: graph, spec, model card with plots, the Keras model (provenance)."""
    from training.card import card_plots
    from training.export import with_alone_graph

    one = test.station == names.index("Dongsi") if "Dongsi" in names else np.ones(len(test.y), dtype=bool)
    plots = card_plots(spec["metrics"], test.end_hour[one], test.y[one], *(p[one] for p in test_pred))
    extra = {"MODEL_CARD.md": _model_card(spec, list(plots)).encode(), "model.keras": _keras_bytes(model), **plots}
    extra.update(with_alone_graph(spec, onnx_bytes))
    return write_bundle(store, spec, onnx_bytes, extra)


def _keras_bytes(model: Any) -> bytes:
    """The Keras model in the native .keras format (config JSON + weights, no pickle), kept for
    provenance and for the Keras-vs-onnxruntime benchmark; serving never reads it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def _zero_intervals() -> dict[str, list[float]]:
    return {"log_residual_lo": [0.0] * HORIZONS, "log_residual_hi": [0.0] * HORIZONS}


def stage_promotion(
    store: Path, version: str, score: float, force: bool, enabled: bool, split_id: str = SPLIT_ID
) -> tuple[bool, str]:
    """Promote only if the new validation score beats production's (or --force); a production
    bundle scored on another split cannot be compared, so the new one replaces it. A bundle
    trained on a shifted split (an experiment) is never promoted."""
    if not enabled:
        return False, f"bundle {version} written; not promoted (--no-promote)"
    if is_experiment_split(split_id):
        return False, f"bundle {version} written; not promoted: an experiment on another split ({split_id})"
    try:
        current = load_production(store)
        current_score = float(current.spec["selection"]["val_score"])
        current_version = current.version
    except (BundleError, KeyError) as err:
        promote(store, version)
        return True, f"promoted {version}: no usable production bundle ({err})"
    if current.spec.get("data", {}).get("split_id") != SPLIT_ID:
        promote(store, version)
        return True, f"promoted {version}: {current_version} was selected on another split (not comparable)"
    if force:
        promote(store, version)
        return (
            True,
            f"promoted {version} with --force (validation {score:.2f} vs {current_score:.2f} of {current_version})",
        )
    if score < current_score - MIN_IMPROVEMENT:
        promote(store, version)
        return (
            True,
            f"promoted {version}: validation mean RMSE {score:.2f} beats {current_version}'s {current_score:.2f}",
        )
    return False, (
        f"kept {current_version} in production: its validation mean RMSE {current_score:.2f} "
        f"is not beaten by {version}'s {score:.2f} by more than {MIN_IMPROVEMENT} (use --force to promote anyway)"
    )


def _model_card(spec: dict[str, Any], plots: list[str] | None = None) -> str:
    lines = [
        f"# Model card: {spec['version']}",
        "",
        f"- model: {spec['model_name']}, window {spec['window_hours']} h, horizons 1-24 h",
        f"- target: {spec['target']['kind']}; intervals: {spec['intervals']['method']}",
        f"- data: {len(spec['data']['files'])} files, stations {', '.join(spec['data']['stations'])}; "
        f"train {spec['data']['splits']['train']}, validation {spec['data']['splits']['val']}, "
        f"test {spec['data']['splits']['test']}; new stations (never trained on or selected with): "
        f"{', '.join(spec['data']['new_stations'])}",
        "- scores below are the model alone; the stream adapts it per station online "
        "(`pm25 evaluate` scores what it publishes)",
        f"- selected on validation only: {spec['selection']['score']} = {spec['selection']['val_score']}",
    ]
    if spec["train_config"].get("refit"):
        lines.append(
            "- refit: once selected and calibrated, the configuration(s) were trained again on the training "
            "and validation years, each for the epochs early stopping kept; the validation scores below are "
            "in-sample, the selection score and the intervals' calibration are the search's"
        )
    lines.append("")
    for split in ("val", "test"):
        m = {k: v for k, v in spec["metrics"][split].items() if k != "per_station_rmse"}
        lines += [
            f"## {'Validation' if split == 'val' else 'Test'} ({spec['data']['splits'][split]}), "
            "RMSE / MAE / R² (µg/m³)",
            "",
            "| horizon | " + " | ".join(m) + " | 80 % coverage |",
            "|---" * (len(m) + 2) + "|",
        ]
        for h in REPORT_HORIZONS:
            cells = [f"{m[k]['rmse'][h - 1]:.2f} / {m[k]['mae'][h - 1]:.2f} / {m[k]['r2'][h - 1]:.3f}" for k in m]
            lines.append(f"| {h} h | " + " | ".join(cells) + f" | {m['model']['coverage_80'][h - 1]:.1%} |")
        lines.append("")
    per = spec["metrics"]["test"]["per_station_rmse"]
    lines += [
        "## Test year per station: skill against persistence (model alone), 1 / 6 / 12 / 24 h",
        "",
        "| station | model | gradient boosting |",
        "|---|---|---|",
    ]
    for name, rm in per.items():
        mark = " (new station)" if name in spec["data"]["new_stations"] else ""
        cells = [
            " / ".join(f"{100 * (1 - rm[k][h - 1] / rm['persistence'][h - 1]):.1f} %" for h in (1, 6, 12, 24))
            for k in ("model", "gradient_boosting")
        ]
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Grid (validation mean RMSE)",
        "",
        "Only servable families are selected (see `TrainConfig.serving_families`); the others are",
        "trained for comparison.",
        "",
        "| configuration | score | seconds | servable |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['val_score']:.2f} | {r['seconds']} | {'yes' if r.get('servable', True) else 'no'} |"
        for r in spec["selection"]["results"]
    ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    lines += ["", "Package versions: " + json.dumps(spec["packages"]), ""]
    return "\n".join(lines)
