"""`pm25 train`: grid search on the validation year, export to ONNX, write a bundle, gate promotion.

Split by time (CST years): train 2010-2012, validation 2013, test 2014. Every choice (early
stopping, configuration, interval calibration) uses validation only; the test year is scored
once, at the end, for the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
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
from pm25.features import FEATURES, RAW_FIELDS, postprocess, scale
from training.dataset import DataConfig, Samples, Series, load_series, make_samples, split_indices
from training.metrics import REPORT_HORIZONS, coverage, horizon_metrics
from training.models import ModelConfig

__all__ = ["GRIDS", "TrainConfig", "TrainResult", "train"]

log = logging.getLogger(__name__)
HORIZONS = 24
#: A new bundle must beat production's validation score by more than this (µg/m³) to be promoted.
MIN_IMPROVEMENT = 0.05
#: Features the model reads (precipitation is not in the single-site data, so it is left out).
MODEL_FEATURES = tuple(f for f in FEATURES if f != "log_precipitation")


def _grid(
    families: tuple[str, ...],
    windows: tuple[int, ...],
    units: tuple[int, ...],
    lrs: tuple[float, ...],
    dropouts: tuple[float, ...],
    epochs: int,
) -> list[ModelConfig]:
    return [
        ModelConfig(family=f, window_hours=w, units=u, learning_rate=lr, dropout=d, epochs=epochs)
        for f in families
        for w in windows
        for u in units
        for lr in lrs
        for d in dropouts
    ]


GRIDS: dict[str, Callable[[], list[ModelConfig]]] = {
    # CI: one small model, a few epochs (< 2 minutes with export).
    "quick": lambda: [ModelConfig(family="mlp", window_hours=24, units=32, epochs=4, patience=2)],
    # The default grid: 4 families x 2 windows x 2 widths (dropout, learning rate per family).
    "default": lambda: (
        _grid(("mlp",), (24, 48), (64, 128), (1e-3,), (0.1,), 40)
        + _grid(("conv1d",), (24, 48), (32, 64), (1e-3,), (0.1,), 30)
        + _grid(("gru",), (24, 48), (32, 64), (2e-3,), (0.0,), 20)
        + _grid(("lstm",), (24, 48), (32, 64), (2e-3,), (0.0,), 20)
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    grid: str = "default"
    target_kind: str = "delta"  # "delta" (change in µg/m³, scaled per horizon) or "log_delta"
    ensemble_size: int = 3
    max_gap_hours: int = 6
    seed: int = 42
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


def _targets(s: Samples, target: dict[str, Any]) -> npt.NDArray[np.float32]:
    last = s.last_pm25[:, None]
    if target["kind"] == "delta":
        return ((s.y - last) / np.asarray(target["scale"], dtype=np.float32)).astype(np.float32)
    return (np.log1p(s.y) - np.log1p(last)).astype(np.float32)


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


class _Progress:
    """One line per epoch: configuration k of n, epoch, validation loss."""

    def __init__(self, k: int, n: int, name: str) -> None:
        import keras

        class CB(keras.callbacks.Callback):
            def on_epoch_end(cb_self, epoch: int, logs: dict[str, float] | None = None) -> None:  # noqa: N805
                logs = logs or {}
                print(
                    f"  [{k}/{n}] {name} epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f} "
                    f"val_loss {logs.get('val_loss', float('nan')):.4f}",
                    file=sys.stderr,
                    flush=True,
                )

        self.callback = CB()


def _fit_one(
    cfg: ModelConfig,
    data: dict[str, Samples],
    sel: list[int],
    mean: npt.NDArray[np.float32],
    std: npt.NDArray[np.float32],
    tc: TrainConfig,
    target: dict[str, Any],
    k: int,
    n: int,
) -> Any:
    import keras

    from training.models import build_model

    keras.utils.set_random_seed(tc.seed)
    xs = {name: scale(s.x, sel, mean, std) for name, s in data.items() if name != "test"}
    ys = {name: _targets(data[name], target) for name in xs}
    model = build_model(cfg, len(sel), HORIZONS)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
    model.fit(
        xs["train"],
        ys["train"],
        validation_data=(xs["val"], ys["val"]),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[stop, _Progress(k, n, cfg.name).callback],
    )
    return model


def _predict(model: Any, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(model.predict(x, batch_size=4096, verbose=0), dtype=np.float32)


def _common(samples: dict[int, dict[str, Samples]]) -> dict[int, dict[str, Samples]]:
    """Keep, for every window length, only the issue times usable under all of them, so every
    configuration is scored on exactly the same pairs."""
    out: dict[int, dict[str, Samples]] = {w: {} for w in samples}
    for split in next(iter(samples.values())):
        common = set.intersection(*(set(s[split].end_index.tolist()) for s in samples.values()))
        for w, s in samples.items():
            keep = np.isin(s[split].end_index, sorted(common))
            x = s[split]
            out[w][split] = Samples(x=x.x[keep], y=x.y[keep], last_pm25=x.last_pm25[keep], end_index=x.end_index[keep])
    return out


def _ensemble(models: list[Any], window_hours: int, n_features: int) -> Any:
    import keras

    inp = keras.Input(shape=(window_hours, n_features), name="x")
    out = keras.layers.Average(name="y")([m(inp) for m in models])
    return keras.Model(inp, out, name="ensemble")


def train(tc: TrainConfig, store: Path, *, force: bool = False, promote_if_better: bool = True) -> TrainResult:
    import tensorflow as tf
    from sklearn.preprocessing import StandardScaler

    from training.baselines import GradientBoostingBaseline, baseline_predictions
    from training.card import card_plots
    from training.export import export_onnx

    tf.config.experimental.enable_op_determinism()
    started = time.perf_counter()
    series: Series = load_series(tc.data)
    splits = split_indices(series, tc.data, HORIZONS)
    configs = GRIDS[tc.grid]()
    sel = [FEATURES.index(f) for f in MODEL_FEATURES]
    windows = sorted({c.window_hours for c in configs})
    samples = _common(
        {
            w: {name: make_samples(series, idx, w, HORIZONS, tc.max_gap_hours) for name, idx in splits.items()}
            for w in windows
        }
    )
    # Preprocessing fitted on the training split only: feature scaler (shared by all windows,
    # fitted on the longest) and the per-horizon target scale.
    train_longest = samples[windows[-1]]["train"]
    sc = StandardScaler().fit(train_longest.x[:, :, sel].reshape(-1, len(sel)))
    mean, std = sc.mean_.astype(np.float32), np.maximum(sc.scale_, 1e-6).astype(np.float32)
    delta = train_longest.y - train_longest.last_pm25[:, None]
    target: dict[str, Any] = {"kind": tc.target_kind, "scale": 1.0}
    if tc.target_kind == "delta":
        target["scale"] = [round(float(v), 4) for v in np.nanstd(delta, axis=0)]
    print(
        f"grid '{tc.grid}': {len(configs)} configurations; {len(train_longest.y)} training, "
        f"{len(samples[windows[-1]]['val'].y)} validation samples",
        file=sys.stderr,
        flush=True,
    )

    def val_score(model: Any, w: int) -> tuple[float, dict[str, list[float]]]:
        val = samples[w]["val"]
        point, _, _ = postprocess(
            _predict(model, scale(val.x, sel, mean, std)), val.last_pm25, target, _zero_intervals()
        )
        m = horizon_metrics(val.y, point)
        return _selection_score(m, tc.selection_horizons), m

    results: list[dict[str, Any]] = []
    trained: list[tuple[float, ModelConfig, Any]] = []
    for k, cfg in enumerate(configs, start=1):
        t0 = time.perf_counter()
        model = _fit_one(cfg, samples[cfg.window_hours], sel, mean, std, tc, target, k, len(configs))
        score, m = val_score(model, cfg.window_hours)
        trained.append((score, cfg, model))
        results.append(
            {
                "config": cfg.to_dict(),
                "name": cfg.name,
                "val_score": round(score, 4),
                "val_rmse": {h: m["rmse"][h - 1] for h in REPORT_HORIZONS},
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"[{k}/{len(configs)}] {cfg.name}: validation mean RMSE {score:.2f} ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    trained.sort(key=lambda t: t[0])
    eligible = [t for t in trained if t[1].family in tc.serving_families]
    if not eligible:
        raise ValueError(f"no configuration of a servable family {tc.serving_families} in the grid")
    for r in results:
        r["servable"] = r["config"].get("family") in tc.serving_families
    score, cfg, model = eligible[0]
    w = cfg.window_hours
    family, name = cfg.family, cfg.name
    # An average of the best configurations with the same window, kept only if validation says so.
    members = [t for t in eligible if t[1].window_hours == w][: tc.ensemble_size]
    if len(members) > 1:
        ens = _ensemble([t[2] for t in members], w, len(sel))
        ens_score, _ = val_score(ens, w)
        names = [t[1].name for t in members]
        results.append(
            {
                "config": {"ensemble": names},
                "name": "ensemble(" + ", ".join(names) + ")",
                "val_score": round(ens_score, 4),
                "val_rmse": {},
                "seconds": 0.0,
                "servable": True,
            }
        )
        print(f"ensemble of {names}: validation mean RMSE {ens_score:.2f}", file=sys.stderr, flush=True)
        if ens_score < score:
            score, model, family = ens_score, ens, "ensemble"
            name = "ensemble(" + ", ".join(names) + ")"
    data = samples[w]
    print(f"selected {name} (validation mean RMSE {score:.2f})", file=sys.stderr, flush=True)

    # Interval calibration on validation residuals (log1p space), then test scored once.
    val_out = _predict(model, scale(data["val"].x, sel, mean, std))
    val_point, _, _ = postprocess(val_out, data["val"].last_pm25, target, _zero_intervals())
    resid = np.log1p(data["val"].y) - np.log1p(val_point)
    intervals = {
        "method": "split conformal on validation log1p residuals",
        "quantiles": [0.1, 0.9],
        "log_residual_lo": [round(float(np.nanquantile(resid[:, h], 0.1)), 5) for h in range(HORIZONS)],
        "log_residual_hi": [round(float(np.nanquantile(resid[:, h], 0.9)), 5) for h in range(HORIZONS)],
    }
    print("fitting the gradient-boosting baseline", file=sys.stderr, flush=True)
    gb = GradientBoostingBaseline(tc.seed).fit(data["train"])
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        s = data[split]
        point, lo, hi = postprocess(_predict(model, scale(s.x, sel, mean, std)), s.last_pm25, target, intervals)
        if split == "test":
            test_pred = (point, lo, hi)
        metrics[split] = {"model": horizon_metrics(s.y, point) | {"coverage_80": coverage(s.y, lo, hi)}}
        for base_name, pred in baseline_predictions(series, s, gb).items():
            metrics[split][base_name] = horizon_metrics(s.y, pred)

    version = tc.version or f"{family}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    onnx_bytes = export_onnx(model, w, len(sel), check_x=scale(data["val"].x[:256], sel, mean, std))
    spec = {
        "version": version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "family": family,
        "model_name": name,
        "config": cfg.to_dict(),
        "window_hours": w,
        "horizons": list(range(1, HORIZONS + 1)),
        "raw_fields": list(RAW_FIELDS),
        "features": list(MODEL_FEATURES),
        "max_gap_hours": tc.max_gap_hours,
        "scaler": {
            "kind": "sklearn.preprocessing.StandardScaler (fitted on the training split)",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
        "target": target,
        "intervals": intervals,
        "selection": {
            "score": "mean validation RMSE over horizons " + ",".join(map(str, tc.selection_horizons)),
            "val_score": round(score, 4),
            "grid": tc.grid,
            "results": results,
        },
        "metrics": metrics,
        "data": {
            "file": Path(tc.data.path).name,
            "sha256": series.report.sha256,
            "rows": series.report.rows,
            "splits": {"train": list(tc.data.train_years), "val": tc.data.val_year, "test": tc.data.test_year},
        },
        "train_config": {k: v for k, v in asdict(replace(tc, data=DataConfig())).items() if k != "data"},
        "seed": tc.seed,
        "code_sha256": _code_fingerprint(),
        "packages": _package_versions(),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    spec = _json_safe(spec)
    plots = card_plots(metrics, series.hours[data["test"].end_index], data["test"].y, *test_pred)
    extra = {"MODEL_CARD.md": _model_card(spec, list(plots)).encode(), "model.keras": _keras_bytes(model), **plots}
    path = write_bundle(store, spec, onnx_bytes, extra)
    promoted, reason = _gate(store, version, score, force, promote_if_better)
    print(reason, file=sys.stderr, flush=True)
    return TrainResult(path, version, score, promoted, reason)


def _keras_bytes(model: Any) -> bytes:
    """The Keras model in the native .keras format (config JSON + weights, no pickle), kept for
    provenance and for the Keras-vs-onnxruntime benchmark; serving never reads it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return path.read_bytes()


def _json_safe(value: Any) -> Any:
    """NaN (a horizon a baseline does not forecast) becomes null: the spec is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _zero_intervals() -> dict[str, list[float]]:
    return {"log_residual_lo": [0.0] * HORIZONS, "log_residual_hi": [0.0] * HORIZONS}


def _gate(store: Path, version: str, score: float, force: bool, enabled: bool) -> tuple[bool, str]:
    """Promote only if the new validation score beats production's (or --force)."""
    if not enabled:
        return False, f"bundle {version} written; not promoted (--no-promote)"
    try:
        current = load_production(store)
        current_score = float(current.spec["selection"]["val_score"])
        current_version = current.version
    except (BundleError, KeyError) as err:
        promote(store, version)
        return True, f"promoted {version}: no usable production bundle ({err})"
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
        f"- data: {spec['data']['file']} (sha256 {spec['data']['sha256'][:12]}...), "
        f"train {spec['data']['splits']['train']}, validation {spec['data']['splits']['val']}, "
        f"test {spec['data']['splits']['test']}",
        f"- selected on validation only: {spec['selection']['score']} = {spec['selection']['val_score']}",
        "",
    ]
    for split in ("val", "test"):
        m = spec["metrics"][split]
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
    lines += [
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
