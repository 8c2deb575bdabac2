"""Inference behind a small protocol, and its onnxruntime implementation.

``Forecaster.predict(raw_windows, end_hours)`` takes raw windows (the station buffer rows, NaN =
missing) and returns point forecasts and the 80 % interval in µg/m³. Preprocessing is the shared
feature code with the bundle's fitted parameters, so training and serving cannot drift.

``predict`` is three steps that a caller may run apart: ``prepare`` (features, in Python and numpy),
``infer`` (the graph alone: it releases the GIL) and ``finish`` (the outputs in µg/m³). The worker
and the backtest call ``run_windows``: features and graph one chunk of windows after the other, in
the worker's inference thread, so a micro-batch waiting for the graph holds its raw windows, not
their scaled features (about 5 KB per window; measured 2026-12-03 on Apache Kafka, three runs each,
interleaved: worker peak RSS 245-250 MB against 252-277 MB with the features computed on the
event loop, and no loss of throughput: 2880-3764 against 2931-3403 readings/s).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from model_store import Bundle, BundleError
from pm25.features import (
    FEATURES,
    NETWORK_COLUMNS,
    RAW_FIELDS,
    make_features,
    network_features_alone,
    postprocess,
    scale,
    scaled_without_network,
)

__all__ = ["Forecaster", "GraphOut", "ModelInput", "OnnxForecaster", "Prediction"]

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]

#: Windows per feature pass and graph run: memory grows with the batch (numpy temporaries, and the
#: graph's working memory: one block of about 50 KB per row that glibc, once it has freed such a
#: block, serves from the heap, where it stays resident), so a large micro-batch runs in chunks;
#: onnxruntime's rows/s is highest at 64 rows of those measured (docs/benchmarks.md).
GRAPH_ROWS_MAX = 64


@dataclass(frozen=True, slots=True)
class Prediction:
    usable: npt.NDArray[np.bool_]  # [B]
    point: F32  # [B, H] µg/m³
    lo: F32  # [B, H] 10th percentile
    hi: F32  # [B, H] 90th percentile
    last_pm25: F32  # [B] last observed PM2.5 (persistence)
    gap_hours: npt.NDArray[np.int64]  # [B] hours since the last PM2.5 observation
    mean_pm25: F32  # [B] the window's mean observed PM2.5


@dataclass(frozen=True, slots=True)
class ModelInput:
    usable: npt.NDArray[np.bool_]  # [B] windows that can be forecast (the others skip the graph)
    last_pm25: F32  # [B] last PM2.5 of each window after imputation (NaN where not usable)
    gap_hours: npt.NDArray[np.int64]  # [B] hours since the last PM2.5 observation
    level: F32  # [B] the window's PM2.5 level (the unit of a level_delta target)
    mean_pm25: F32  # [B] the window's mean observed PM2.5
    observed: F32  # [B] the PM2.5 of the window's last hour as stored (NaN: not observed)
    observations: npt.NDArray[np.int64]  # [B] the PM2.5 observations in the window
    x: list[F32]  # scaled graph input of the usable windows, in chunks of <= GRAPH_ROWS_MAX rows


class GraphOut(NamedTuple):
    """The graph's output for the usable windows of a batch, as read and with the network's
    columns missing (the adaptation's ``model_alone`` expert; the same array object where no window
    was run without them)."""

    network: F32
    alone: F32


class Forecaster(Protocol):
    version: str
    window_hours: int
    max_gap_hours: int
    horizons: tuple[int, ...]
    intervals: dict[str, list[float]]  # the bundle's calibrated log1p residual quantiles

    def prepare(self, raw: F32, end_hours: npt.NDArray[np.int64]) -> ModelInput: ...

    def infer(self, inp: ModelInput) -> F32: ...

    def run_windows(self, raws: Sequence[F32], end_hours: Sequence[int]) -> tuple[ModelInput, GraphOut]: ...

    def finish(self, inp: ModelInput, out: F32) -> Prediction: ...

    def predict(self, raw: F32, end_hours: npt.NDArray[np.int64]) -> Prediction: ...


class OnnxForecaster:
    """A verified bundle in onnxruntime (one intra-op thread: faster on small shared cores)."""

    def __init__(self, bundle: Bundle) -> None:
        spec = bundle.spec
        self.bundle = bundle
        self.version = bundle.version
        self.window_hours = int(spec["window_hours"])
        self.horizons = tuple(int(h) for h in spec["horizons"])
        self.max_gap_hours = int(spec["max_gap_hours"])
        names = list(spec["features"])
        unknown = [n for n in names if n not in FEATURES]
        raw_fields = list(spec.get("raw_fields", RAW_FIELDS))  # an older bundle's: a prefix of ours
        if unknown or raw_fields != list(RAW_FIELDS[: len(raw_fields)]):
            raise BundleError(f"bundle {self.version}: features not supported by this code: {unknown}")
        self._names = names
        self._selected = list(range(len(names)))
        self._mean = np.asarray(spec["scaler"]["mean"], dtype=np.float32)
        self._std = np.asarray(spec["scaler"]["std"], dtype=np.float32)
        if self._mean.shape != (len(names),) or self._std.shape != (len(names),):
            raise BundleError(f"bundle {self.version}: scaler does not match the feature list")
        self._target = dict(spec["target"])
        self._intervals = dict(spec["intervals"])
        self.intervals = {k: list(spec["intervals"][k]) for k in ("log_residual_lo", "log_residual_hi")}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No memory arena: the arena keeps the graph's largest working set for good (measured on
        # the production ensemble, chunks of 256 windows: +61 MB resident with it, +20 MB without,
        # for about a fifth more time per graph run, on the inference thread, not the event loop)
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        try:
            self._session = ort.InferenceSession(bundle.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own untyped errors on a bad graph
            raise BundleError(f"bundle {self.version}: onnxruntime cannot load the graph: {err}") from err
        self._network_alone = network_features_alone(names, self._mean, self._std, self.max_gap_hours)
        self._alone_session = self._session
        if bundle.alone_onnx_bytes is not None:  # an ensemble's smallest member (training.export.alone_graph)
            try:
                self._alone_session = ort.InferenceSession(
                    bundle.alone_onnx_bytes, opts, providers=["CPUExecutionProvider"]
                )
            except Exception as err:  # onnxruntime raises its own untyped errors on a bad graph
                raise BundleError(
                    f"bundle {self.version}: onnxruntime cannot load the model_alone graph: {err}"
                ) from err
        graph_in = self._session.get_inputs()[0]
        self._input = graph_in.name
        expected = [self.window_hours, len(names)]
        if list(graph_in.shape[1:]) != expected:
            raise BundleError(
                f"bundle {self.version}: graph input {graph_in.shape} does not match the spec "
                f"[batch, {expected[0]}, {expected[1]}]"
            )
        self._smoke_test()

    def run_graph(self, x: npt.NDArray[np.float32]) -> list[Any]:
        """The ONNX graph alone on scaled input rows [batch, window, features] (benchmarks time it)."""
        return list(self._session.run(None, {self._input: x}))

    def _smoke_test(self) -> None:
        """Run two windows through the graph and check the shapes and that outputs are finite."""
        raw = np.zeros((2, self.window_hours, len(RAW_FIELDS)), dtype=np.float32)
        raw[:, :, 0] = 50.0
        try:
            _, out = self.run_windows(list(raw), [400_000, 400_001])  # network columns 0: both run alone too
        except Exception as err:  # onnxruntime raises untyped errors for a graph it cannot run
            raise BundleError(f"bundle {self.version}: smoke inference failed: {err}") from err
        for what, y in (("graph", out.network), ("model_alone graph", out.alone)):
            if y.shape != (2, len(self.horizons)) or not np.isfinite(y).all():
                raise BundleError(
                    f"bundle {self.version}: smoke inference of the {what} gave shape {y.shape} "
                    f"or non-finite values; expected (2, {len(self.horizons)})"
                )

    def predict(self, raw: F32, end_hours: npt.NDArray[np.int64]) -> Prediction:
        inp = self.prepare(raw, end_hours)
        return self.finish(inp, self.infer(inp))

    def prepare(self, raw: F32, end_hours: npt.NDArray[np.int64]) -> ModelInput:
        """Features and scaling in chunks of GRAPH_ROWS_MAX windows: a micro-batch of thousands
        would otherwise hold tens of MB of numpy temporaries at once."""
        return _joined(
            [
                self._prepare_chunk(raw[start : start + GRAPH_ROWS_MAX], end_hours[start : start + GRAPH_ROWS_MAX])
                for start in range(0, raw.shape[0], GRAPH_ROWS_MAX)
            ]
        )

    def run_windows(self, raws: Sequence[F32], end_hours: Sequence[int]) -> tuple[ModelInput, GraphOut]:
        """Features, scaling and the graph, one chunk of GRAPH_ROWS_MAX windows after the other:
        only one chunk's graph input exists at a time (the worker runs this in its inference
        thread, so a micro-batch in flight holds its windows, not their scaled features). Returns
        the windows' statistics (``x`` empty) and the graph's output for the usable ones. The
        windows that hold network columns also run without them through the
        model_alone graph (:func:`pm25.features.scaled_without_network`: the input a lone
        station's window gives); the others' output stands for it."""
        parts, outs, alones = [], [], []
        for start in range(0, len(raws), GRAPH_ROWS_MAX):
            stop = start + GRAPH_ROWS_MAX
            raw = np.stack(raws[start:stop])
            chunk = self._prepare_chunk(raw, np.asarray(end_hours[start:stop], dtype=np.int64))
            out = self.infer(chunk)
            result = out
            if len(out):
                holds = np.asarray(~np.isnan(raw[:, :, NETWORK_COLUMNS]).all(axis=(1, 2)))  # [B]
                linked = holds[chunk.usable]
                if linked.any():
                    result = out.copy()
                    result[linked] = self.infer_alone(chunk.x[0][linked])
            outs.append(out)
            alones.append(result)
            parts.append(chunk)
        empty = np.zeros((0, len(self.horizons)), dtype=np.float32)
        network = np.concatenate(outs) if outs else empty
        same = all(a is o for a, o in zip(alones, outs, strict=True))
        return _joined(parts, keep_x=False), GraphOut(network, network if same else np.concatenate(alones))

    def infer_alone(self, x: F32) -> F32:
        """The model_alone expert's graph output for scaled input rows, read without the network's
        columns."""
        return self.run_alone_graph(scaled_without_network(x, *self._network_alone))

    def run_alone_graph(self, x: F32) -> F32:
        """The model_alone expert's graph (the bundle's ``alone_graph``, else the whole graph) on
        scaled input rows [batch, window, features]."""
        return np.asarray(self._alone_session.run(None, {self._input: x})[0], dtype=np.float32)

    def _prepare_chunk(self, raw: F32, end_hours: npt.NDArray[np.int64]) -> ModelInput:
        batch = make_features(raw, end_hours, self.max_gap_hours, self._names)
        rows = np.flatnonzero(batch.usable)
        x = [scale(batch.features[rows], self._selected, self._mean, self._std)] if len(rows) else []
        return ModelInput(
            batch.usable,
            batch.last_pm25,
            batch.gap_hours,
            batch.level,
            batch.mean_pm25,
            batch.observed,
            batch.observations,
            x,
        )

    def infer(self, inp: ModelInput) -> F32:
        """The graph's output for the usable windows (thread-safe: onnxruntime sessions are)."""
        outs = [np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float32) for x in inp.x]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.horizons)), dtype=np.float32)

    def finish(self, inp: ModelInput, out: F32) -> Prediction:
        full = np.zeros((inp.usable.shape[0], len(self.horizons)), dtype=np.float32)
        full[inp.usable] = out
        last = np.nan_to_num(inp.last_pm25, nan=0.0)
        point, lo, hi = postprocess(full, last, self._target, self._intervals, inp.level)
        return Prediction(
            usable=inp.usable,
            point=point,
            lo=lo,
            hi=hi,
            last_pm25=inp.last_pm25,
            gap_hours=inp.gap_hours,
            mean_pm25=inp.mean_pm25,
        )


def _joined(parts: list[ModelInput], keep_x: bool = True) -> ModelInput:
    """Chunks' inputs as one, in order (``keep_x=False``: without the graph input)."""
    if not parts:
        empty = np.zeros(0, dtype=np.float32)
        count = np.zeros(0, dtype=np.int64)
        return ModelInput(np.zeros(0, dtype=bool), empty, count, empty, empty, empty, count, [])
    return ModelInput(
        np.concatenate([p.usable for p in parts]),
        np.concatenate([p.last_pm25 for p in parts]),
        np.concatenate([p.gap_hours for p in parts]),
        np.concatenate([p.level for p in parts]),
        np.concatenate([p.mean_pm25 for p in parts]),
        np.concatenate([p.observed for p in parts]),
        np.concatenate([p.observations for p in parts]),
        [x for p in parts for x in p.x] if keep_x else [],
    )
