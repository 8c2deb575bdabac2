"""Per-message logic of the worker, free of Faust so it is tested without a broker.

``Processor.parse`` validates a message (errors become :class:`DeadLetter` data, never
exceptions); ``Processor.apply`` moves a station state forward; ``Processor.forecast`` runs the
batched inference and serialises the forecasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pm25.schema import InvalidReading, Reading, hour_to_iso, parse_reading
from pm25.window import StateFormatError, StationWindow, TooLate
from stream_processor.engine import Engine, Request
from stream_processor.hindcast import HindcastScorer
from stream_processor.metrics import WorkerMetrics

__all__ = ["DeadLetter", "Processor", "wall_clock_hour"]

log = logging.getLogger(__name__)


def wall_clock_hour() -> int:
    return int(time.time()) // 3600


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str


class Processor:
    def __init__(self, engine: Engine, metrics: WorkerMetrics, now_hour: Callable[[], int] = wall_clock_hour) -> None:
        self.engine = engine
        self.metrics = metrics
        self.now_hour = now_hour
        self._suspended: set[str] = set()
        self.scorer = HindcastScorer()
        self._observed: list[tuple[str, int, float | None]] = []
        self._scores: list[tuple[bytes, bytes]] = []

    def parse(self, raw: bytes | None, key: bytes | None) -> Reading | DeadLetter:
        self.metrics.readings_in.inc()
        try:
            reading = parse_reading(raw, self.now_hour())
        except InvalidReading as err:
            return self._dead(err.reason, err.detail)
        if key is not None and key != reading.station_id.encode():
            # The input topic is keyed by station: a wrong key would split a station's state.
            return self._dead("key_mismatch", f"message key {key[:64]!r} != station_id {reading.station_id!r}")
        return reading

    def apply(
        self, state: bytes | None, reading: Reading, offset: int | None = None
    ) -> tuple[bytes | None, list[Request]] | DeadLetter:
        """New state bytes (None when unchanged) and the forecast requests, or a DeadLetter.

        ``offset`` is the message's input offset. A message at or before the offset the state has
        already applied is a replay after a restart (the worker saves a state only after the
        batch's forecasts were delivered), so it changes nothing and needs no forecast."""
        window = self._decode(state, reading.station_id)
        if window is not None and offset is not None and offset <= window.last_offset:
            self.metrics.replayed.inc()
            return None, []
        newest = window.newest_hour if window is not None else None
        try:
            window, changed, requests = self.engine.ingest(window, reading)
        except TooLate as err:
            return self._dead("too_late", str(err))
        self.metrics.readings_valid.inc()
        self._observed.append((reading.station_id, reading.hour, reading.pm25))
        if not changed:
            self.metrics.duplicates.inc()
        elif newest is not None and reading.hour < newest:
            self.metrics.out_of_order.inc()
        if offset is not None:
            window.last_offset = offset
            changed = True
        return (window.to_bytes() if changed else None), requests

    def _decode(self, state: bytes | None, station_id: str) -> StationWindow | None:
        if state is None:
            return None
        try:
            return StationWindow.from_bytes(state)
        except StateFormatError as err:  # never crash on stored state: start the station afresh
            log.error("station %s: stored state unreadable (%s); starting its window afresh", station_id, err)
            self.metrics.states_unreadable.inc()
            return None

    def forecast(self, requests: list[Request]) -> list[tuple[bytes, bytes]]:
        """(key, value) of every forecast the requests produce; logs suspensions and resumptions.
        Then scores the forecasts whose target hours the batch's readings observed."""
        out = self._forecast(requests) if requests else []
        self._score()
        return out

    def drain_scores(self) -> list[tuple[bytes, bytes]]:
        """Hindcast score messages produced since the last call, keyed by station."""
        scores, self._scores = self._scores, []
        return scores

    def _score(self) -> None:
        for station, hour, pm25 in self._observed:
            msg = self.scorer.observe(station, hour, pm25)
            if msg is not None:
                self._scores.append((station.encode(), msg))
        if self._observed:
            for h, skill in self.scorer.total.items():
                if skill.n:
                    self.metrics.hindcast_rmse.labels(model="forecast", horizon=str(h)).set(skill.mse**0.5)
                    self.metrics.hindcast_rmse.labels(model="persistence", horizon=str(h)).set(skill.p_mse**0.5)
                    self.metrics.hindcast_pairs.labels(horizon=str(h)).set(skill.n)
        self._observed = []

    def _forecast(self, requests: list[Request]) -> list[tuple[bytes, bytes]]:
        started = time.perf_counter()
        results = self.engine.forecast(requests)
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        out = []
        for req, f in zip(requests, results, strict=True):
            if f is None:
                self.metrics.suspended.inc()
                if req.station_id not in self._suspended:
                    self._suspended.add(req.station_id)
                    log.warning(
                        "station %s: forecasts suspended at %s (PM2.5 gap longer than %d h)",
                        req.station_id,
                        hour_to_iso(req.end_hour),
                        self.engine.model.max_gap_hours,
                    )
                continue
            if req.station_id in self._suspended:
                self._suspended.discard(req.station_id)
                log.info("station %s: forecasts resumed at %s", req.station_id, f.issued_at)
            out.append((f.station_id.encode(), f.value))
            observed = req.raw[:, 0][~np.isnan(req.raw[:, 0])]
            persistence = float(observed[-1]) if len(observed) else f.point[0]
            self.scorer.record(f.station_id, f.end_hour, self.engine.model.horizons, f.point, persistence)
        self.metrics.forecasts_out.inc(len(out))
        return out

    def _dead(self, reason: str, detail: str) -> DeadLetter:
        self.metrics.dead_letters.labels(reason=reason).inc()
        return DeadLetter(reason, detail)
