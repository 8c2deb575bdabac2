"""The worker's second layer: one batch of forecast requests -> forecast messages.

A batch takes the model once (:meth:`BatchForecaster.start`: the model fixed for the batch even if
a hot swap happens meanwhile), computes its features and runs the graph in a thread
(:meth:`Inference.run`: onnxruntime releases the GIL) and is encoded through each station's online
adaptation (:meth:`BatchForecaster.complete`, in batch order). The offline backtest
(stream_processor.engine.run_offline) uses the same engine steps in one call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pm25.adapt import StationAdaptation
from pm25.schema import hour_to_iso
from stream_processor.engine import Engine, Request
from stream_processor.hindcast import HindcastScorer
from stream_processor.inference import Forecaster, GraphOut, ModelInput
from stream_processor.metrics import WorkerMetrics

__all__ = ["BatchForecaster", "Inference", "Observation"]

log = logging.getLogger(__name__)

#: A valid reading applied: (station, epoch hour, PM2.5 or None), scored against earlier forecasts.
Observation = tuple[str, int, float | None]
#: What :meth:`Inference.run` gives :meth:`BatchForecaster.complete` (None: the batch had no requests).
Computed = tuple[ModelInput, GraphOut] | None


@dataclass(frozen=True, slots=True)
class Inference:
    """A batch's forecasts between :meth:`BatchForecaster.start` and :meth:`BatchForecaster.complete`."""

    requests: list[Request]
    model: Forecaster
    started: float

    def run(self) -> Computed:
        """Features and the graph (the worker runs this in a thread: onnxruntime releases the GIL,
        and only one chunk's scaled features exist at a time); None: no requests."""
        return Engine.run_model(self.requests, self.model) if self.requests else None


class BatchForecaster:
    def __init__(
        self,
        engine: Engine,
        metrics: WorkerMetrics,
        adaptations: dict[str, StationAdaptation],
        scorer: HindcastScorer,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.adaptations = adaptations
        self.scorer = scorer
        self._suspended: set[str] = set()

    def start(self, requests: list[Request], model: Forecaster | None = None) -> Inference:
        """The batch's job, fixed to ``model`` (default: the engine's now); its features and graph
        run later, in :meth:`Inference.run`."""
        return Inference(requests, model or self.engine.model, time.perf_counter())

    def complete(self, job: Inference, computed: Computed) -> list[tuple[bytes, bytes]]:
        """(key, value) of every forecast the batch issues; logs stations suspended or resumed (a
        PM2.5 gap longer than the model bridges) and records the forecasts for scoring."""
        if computed is None:
            return []
        inp, graph_out = computed
        requests, model = job.requests, job.model
        results = self.engine.encode(requests, model, inp, graph_out, self.adaptations)
        self.metrics.inference_seconds.observe(time.perf_counter() - job.started)
        out = []
        last_pm25 = inp.last_pm25.tolist()  # persistence: the last observation of each window
        for req, f, persistence in zip(requests, results, last_pm25, strict=True):
            if f is None:
                self.metrics.suspended.inc()
                if req.station_id not in self._suspended:
                    self._suspended.add(req.station_id)
                    log.warning(
                        "station %s: forecasts suspended at %s (PM2.5 gap longer than %d h)",
                        req.station_id,
                        hour_to_iso(req.end_hour),
                        model.max_gap_hours,
                    )
                continue
            if req.station_id in self._suspended:
                self._suspended.discard(req.station_id)
                log.info("station %s: forecasts resumed at %s", req.station_id, f.issued_at)
            out.append((f.station_id.encode(), f.value))
            self.scorer.record(f.station_id, f.end_hour, model.horizons, f.point, persistence)
        self.metrics.forecasts_out.inc(len(out))
        return out
