"""The processing core shared by the Faust worker and ``pm25 backtest``.

``ingest`` applies one validated reading to a station's state and returns the forecast requests
it causes; ``forecast`` runs one batched inference over many requests. The worker calls them per
micro-batch of Kafka events; the backtest calls them over a file. Same code, same output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pm25.aqi import us_aqi
from pm25.schema import Forecast, HorizonForecast, Reading, hour_to_iso
from pm25.window import StationWindow, TooLate, apply_reading
from stream_processor.inference import Forecaster

__all__ = ["Engine", "Request", "run_offline"]


@dataclass(frozen=True, slots=True)
class Request:
    station_id: str
    end_hour: int
    raw: np.ndarray  # [W, n_raw] copy of the buffer rows


class Engine:
    """Holds the model and the window parameters; the state itself lives with the caller."""

    def __init__(self, model: Forecaster, *, lateness_hours: int, buffer_hours: int) -> None:
        self.model = model
        self.lateness_hours = lateness_hours
        self.buffer_hours = buffer_hours
        self.check_model(model)

    def check_model(self, model: Forecaster) -> None:
        if model.window_hours + self.lateness_hours > self.buffer_hours:
            raise ValueError(
                f"model window {model.window_hours} h + lateness {self.lateness_hours} h exceeds "
                f"the station buffer of {self.buffer_hours} h"
            )

    def ingest(self, state: StationWindow | None, reading: Reading) -> tuple[StationWindow, bool, list[Request]]:
        """Apply a reading (raises pm25.window.TooLate); return state, changed, requests."""
        w = self.model.window_hours
        state, changed, hours = apply_reading(
            state,
            reading,
            capacity=self.buffer_hours,
            lateness_hours=self.lateness_hours,
            window_hours=w,
        )
        requests = [Request(reading.station_id, h, state.window(h, w).copy()) for h in hours]
        return state, changed, requests

    def forecast(self, requests: list[Request]) -> list[Forecast | None]:
        """One batched inference, aligned with ``requests``; None where the window is not usable
        (a PM2.5 gap longer than the model's ``max_gap_hours``): that forecast is suspended."""
        if not requests:
            return []
        model = self.model
        raw = np.stack([r.raw for r in requests])
        ends = np.array([r.end_hour for r in requests], dtype=np.int64)
        pred = model.predict(raw, ends)
        point, lo, hi = pred.point.tolist(), pred.lo.tolist(), pred.hi.tolist()
        return [
            _build(req, model, point[i], lo[i], hi[i]) if pred.usable[i] else None for i, req in enumerate(requests)
        ]


def _build(req: Request, model: Forecaster, point: list[float], lo: list[float], hi: list[float]) -> Forecast:
    horizons = []
    for k, h in enumerate(model.horizons):
        p = round(point[k], 1)
        aqi, cat = us_aqi(p)
        horizons.append(
            HorizonForecast(
                h=h,
                target_time=hour_to_iso(req.end_hour + h),
                pm25=p,
                pm25_lo=round(lo[k], 1),
                pm25_hi=round(hi[k], 1),
                aqi_us=aqi,
                aqi_us_category=cat,
            )
        )
    return Forecast(
        station_id=req.station_id,
        issued_at=hour_to_iso(req.end_hour),
        model_version=model.version,
        horizons=tuple(horizons),
    )


def run_offline(
    engine: Engine,
    readings: Iterable[Reading],
    batch_size: int = 256,
    on_reject: Callable[[Reading, TooLate], None] | None = None,
) -> Iterator[Forecast]:
    """The backtest: readings in the given order, state in a dict, one inference per
    ``batch_size`` readings, the forecasts exactly as the worker publishes them."""
    states: dict[str, StationWindow] = {}
    pending: list[Request] = []
    for n, reading in enumerate(readings, start=1):
        try:
            state, _, requests = engine.ingest(states.get(reading.station_id), reading)
        except TooLate as err:
            if on_reject is not None:
                on_reject(reading, err)
            continue
        states[reading.station_id] = state
        pending.extend(requests)
        if n % batch_size == 0:
            yield from (f for f in engine.forecast(pending) if f is not None)
            pending = []
    yield from (f for f in engine.forecast(pending) if f is not None)
