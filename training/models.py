"""Keras model families; each maps a window [W, F] to all 24 horizons at once."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import keras
from keras import layers, ops

__all__ = ["FAMILIES", "ModelConfig", "build_model", "masked_mse"]

FAMILIES = ("mlp", "lstm", "gru", "conv1d")


@dataclass(frozen=True)
class ModelConfig:
    family: str = "mlp"
    window_hours: int = 48
    units: int = 64
    dropout: float = 0.1
    learning_rate: float = 1e-3
    epochs: int = 40
    batch_size: int = 256
    patience: int = 5

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; choose from {FAMILIES}")

    @property
    def name(self) -> str:
        return f"{self.family}-w{self.window_hours}-u{self.units}-d{self.dropout:g}-lr{self.learning_rate:g}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def masked_mse(y_true: Any, y_pred: Any) -> Any:
    """MSE over the targets that exist (NaN = missing hour)."""
    mask = ops.logical_not(ops.isnan(y_true))
    diff = ops.where(mask, ops.nan_to_num(y_true) - y_pred, 0.0)
    n = ops.maximum(ops.sum(ops.cast(mask, "float32")), 1.0)
    return ops.sum(diff * diff) / n


def build_model(cfg: ModelConfig, n_features: int, horizons: int) -> keras.Model:
    inp = keras.Input(shape=(cfg.window_hours, n_features), name="x")
    if cfg.family == "mlp":
        h = layers.Flatten()(inp)
        h = layers.Dense(cfg.units * 2, activation="relu")(h)
        h = layers.Dropout(cfg.dropout)(h)
        h = layers.Dense(cfg.units, activation="relu")(h)
    elif cfg.family == "lstm":
        h = layers.LSTM(cfg.units)(inp)
    elif cfg.family == "gru":
        h = layers.GRU(cfg.units)(inp)
    else:  # conv1d
        h = layers.Conv1D(cfg.units, 5, activation="relu", padding="causal")(inp)
        h = layers.Conv1D(cfg.units, 5, activation="relu", padding="causal", dilation_rate=2)(h)
        h = layers.GlobalAveragePooling1D()(h)
    # The newest hour enters the head directly: short horizons depend on it most.
    last = layers.Flatten(name="last_hour")(layers.Cropping1D((cfg.window_hours - 1, 0))(inp))
    h = layers.Concatenate()([h, last])
    h = layers.Dropout(cfg.dropout)(h)
    h = layers.Dense(cfg.units, activation="relu")(h)
    out = layers.Dense(horizons, name="y")(h)
    # a unique name per configuration, so models can be nested in an ensemble
    model = keras.Model(inp, out, name=re.sub(r"[^A-Za-z0-9_]", "_", cfg.name))
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=masked_mse)
    return model
