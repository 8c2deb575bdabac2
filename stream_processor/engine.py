"""The processing core shared by the Faust worker and ``pm25 backtest``.

``ingest`` applies one validated reading to its station's window and, for a station in a network,
to its network's clock (stream_processor.networks), and returns the forecast requests it causes;
``forecast`` runs one batched inference over many requests. The worker calls them per micro-batch
of Kafka events; the backtest calls them over a file. Same code, same output.

A station forecast alone gets its forecast on its reading (and again when an out-of-order reading
changes its window). A station in a network gets its forecast for hour ``u`` when the network's
hour ``u`` closes, with the neighbour features of ``u`` written into its window's row at that
moment: the final forecast of every station and hour is the same for every arrival order within
the lateness bound (pm25.network).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from pm25.adapt import Adapter, StationAdaptation
from pm25.aqi import CATEGORIES, us_aqi_array
from pm25.network import ClosedHour, NetworkClock
from pm25.schema import Forecast, Reading, encode_forecasts, forecast_from_json, hour_to_iso
from pm25.window import StationWindow, TooLate, apply_reading
from stream_processor.inference import Forecaster, GraphOut, ModelInput
from stream_processor.networks import Networks, fill_row

__all__ = ["EncodedForecast", "Engine", "Ingested", "Request", "run_offline"]


@dataclass(slots=True)
class EncodedForecast:
    """A forecast as published: its key fields, the message bytes and the point values."""

    station_id: str
    end_hour: int
    value: bytes
    point: list[float]  # µg/m³ per horizon, in the model's horizon order

    @property
    def issued_at(self) -> str:
        return hour_to_iso(self.end_hour)

    def decode(self) -> Forecast:
        return forecast_from_json(self.value)


@dataclass(frozen=True, slots=True)
class Request:
    station_id: str
    end_hour: int
    raw: np.ndarray  # [W, n_raw] copy of the buffer rows


#: Each station's adaptation state (pm25.adapt), kept by the caller beside its window.
Adaptations = MutableMapping[str, StationAdaptation]


class Windows(Protocol):
    """Where the caller keeps the stations' windows (the worker's decodes stored ones on demand)."""

    def get(self, station_id: str) -> StationWindow | None: ...

    def __setitem__(self, station_id: str, window: StationWindow) -> None: ...


class Clocks(Protocol):
    """Where the caller keeps the networks' clocks, by network."""

    def get(self, network: str) -> NetworkClock | None: ...

    def __setitem__(self, network: str, clock: NetworkClock) -> None: ...


class Ingested(NamedTuple):
    """What one reading did."""

    changed: bool  # its station's window changed
    touched: list[str]  # stations whose network columns were written (their windows changed)
    requests: list[Request]  # forecasts to issue, in order
    network: str | None  # the network whose clock it was offered to (the clock changed)


class Engine:
    """Holds the model, the window parameters and the networks; the state lives with the caller."""

    def __init__(
        self, model: Forecaster, *, lateness_hours: int, buffer_hours: int, networks: Networks | None = None
    ) -> None:
        self.model = model
        self.lateness_hours = lateness_hours
        self.buffer_hours = buffer_hours
        self.networks = networks if networks is not None else Networks(lateness_hours=min(2, max(lateness_hours, 1)))
        self._adapters: dict[str, Adapter] = {}
        self.check_model(model)

    def adapter(self, model: Forecaster) -> Adapter:
        """The adaptation rules for ``model`` (its horizons and calibrated starting intervals)."""
        adapter = self._adapters.get(model.version)
        if adapter is None:
            adapter = Adapter.for_spec(model.intervals, model.horizons, self.lateness_hours)
            self._adapters = {model.version: adapter}  # one model at a time (a swap replaces it)
        return adapter

    def check_model(self, model: Forecaster) -> None:
        if model.window_hours + self.lateness_hours > self.buffer_hours:
            raise ValueError(
                f"model window {model.window_hours} h + lateness {self.lateness_hours} h exceeds "
                f"the station buffer of {self.buffer_hours} h"
            )

    def ingest(
        self,
        windows: Windows,
        clocks: Clocks,
        reading: Reading,
        *,
        replayed: bool = False,
        watermark: int | None = None,
    ) -> Ingested:
        """Apply a reading (raises pm25.window.TooLate) to its station's window in ``windows`` and
        to its network's clock in ``clocks`` (keyed by network). ``replayed``: the window has
        applied it already (a replay after a restart): only the clock is offered it again, which
        changes nothing it has seen (the clock may have been saved before the window was).
        ``watermark``: the event hour every source of readings has reached (pm25.network; by
        default the network's newest hour: one ordered source)."""
        w = self.model.window_hours
        sid = reading.station_id
        changed, hours = False, list[int]()
        if not replayed:
            state, changed, hours = apply_reading(
                windows.get(sid),
                reading,
                capacity=self.buffer_hours,
                lateness_hours=self.lateness_hours,
                window_hours=w,
            )
            windows[sid] = state
        network = self.networks.network_of(sid)
        if network is None:
            if replayed:
                return Ingested(False, [], [], None)
            return Ingested(changed, [], [Request(sid, h, state.window(h, w).copy()) for h in hours], None)
        clock = clocks.get(network)
        if clock is None:
            clock = clocks[network] = self.networks.new_clock()
        was_closed = clock.closed_through is not None and reading.hour <= clock.closed_through
        offered = clock.offer(reading, watermark)
        requests: list[Request] = []
        touched: list[str] = []
        self._issue(offered.closed, windows, clock, requests, touched)
        if was_closed and not replayed:
            # its hour closed before it arrived (a new station, or arrivals out of the bound): its
            # features from the closed content, its forecasts re-issued for the closed hours
            window = windows.get(sid)
            assert window is not None
            if changed:
                self._fill(window, sid, reading.hour, clock)
            assert clock.closed_through is not None
            requests += [Request(sid, h, window.window(h, w).copy()) for h in hours if h <= clock.closed_through]
        return Ingested(changed, touched, requests, network)

    def advance(
        self, windows: Windows, clocks: Mapping[str, NetworkClock], watermark: int
    ) -> tuple[Ingested, list[str]]:
        """Close the hours a moved watermark allows in every network of ``clocks`` (the worker
        calls it after each batch: a network whose own readings are all in would otherwise wait
        for its next reading); what ingest gives, for all of them, and the networks whose clock
        changed."""
        requests: list[Request] = []
        touched: list[str] = []
        changed = []
        for network, clock in clocks.items():
            closed = clock.advance(watermark)
            if closed:
                changed.append(network)
                self._issue(closed, windows, clock, requests, touched)
        return Ingested(False, touched, requests, None), changed

    def _issue(
        self,
        closed_hours: list[ClosedHour],
        windows: Windows,
        clock: NetworkClock,
        requests: list[Request],
        touched: list[str],
    ) -> None:
        """Every station that reported a closed hour: its network columns, then its forecast."""
        w = self.model.window_hours
        for closed in closed_hours:
            for t in closed.reported:
                window = windows.get(t)
                if window is not None and self._fill(window, t, closed.hour, clock):
                    touched.append(t)
                    requests.append(Request(t, closed.hour, window.window(closed.hour, w).copy()))

    def _fill(self, window: StationWindow, station_id: str, hour: int, clock: NetworkClock) -> bool:
        """Write the station's neighbour features of ``hour`` into its row; False when the row is
        not in the window or not reported (nothing to forecast)."""
        i = window.index_of(hour)
        if i < self.model.window_hours - 1 or i >= window.capacity or not window.present[i]:
            return False
        fill_row(window.rows[i], station_id, hour, self.networks, clock)
        return True

    def forecast(
        self, requests: list[Request], adaptations: Adaptations, model: Forecaster | None = None
    ) -> list[EncodedForecast | None]:
        """One batched inference, aligned with ``requests``; None where the window is not usable
        (a PM2.5 gap longer than the model's ``max_gap_hours``): that forecast is suspended.
        ``model``: the one the requests' windows were cut for, when a hot swap may have happened
        since (default: the engine's). The worker runs the three steps apart (the graph in a thread).
        """
        if not requests:
            return []
        model = model or self.model
        inp, out = self.run_model(requests, model)
        return self.encode(requests, model, inp, out, adaptations)

    @staticmethod
    def run_model(requests: list[Request], model: Forecaster) -> tuple[ModelInput, GraphOut]:
        """Features and the graph of the requests' windows (the worker runs this in its inference
        thread): the windows' statistics and the graph's output for :meth:`encode`. The windows
        that hold network columns also run without them (the station as if alone: the
        adaptation's ``model_alone`` expert)."""
        return model.run_windows([r.raw for r in requests], [r.end_hour for r in requests])

    def encode(
        self,
        requests: list[Request],
        model: Forecaster,
        inp: ModelInput,
        out: GraphOut,
        adaptations: Adaptations,
    ) -> list[EncodedForecast | None]:
        """The forecast messages from the graph's output, through each station's online adaptation
        (pm25.adapt: the requests are recorded one by one, in order; the combination is computed on
        whole arrays). Rounding (0.1 µg/m³) and the AQI are computed on whole arrays, and the messages
        serialised for the whole batch at once (pm25.schema.encode_forecasts: no per-forecast
        objects on the hot path)."""
        pred = model.finish(inp, out.network)
        alone = pred.point if out.alone is out.network else model.finish(inp, out.alone).point
        usable = np.flatnonzero(pred.usable)
        adapter = self.adapter(model)
        rows = []
        ok = pred.usable.tolist()
        persistence = pred.last_pm25.tolist()
        gaps = pred.gap_hours.tolist()
        mean48 = pred.mean_pm25.tolist()
        observed = inp.observed.tolist()
        observations = inp.observations.tolist()
        for i, req in enumerate(requests):
            st = adaptations.get(req.station_id)
            if st is None:
                st = adaptations[req.station_id] = adapter.new_state(req.station_id)
            row = adapter.record(
                st,
                req.end_hour,
                observed=observed[i],
                persistence=persistence[i] if ok[i] else math.nan,
                model=pred.point[i] if ok[i] else None,
                mean=mean48[i],
                gap_hours=gaps[i],
                observations=observations[i],
                model_alone=alone[i] if ok[i] else None,
            )
            if ok[i]:
                rows.append(row)
        comb = adapter.combine(rows, pred.point[usable], alone[usable])
        amounts = np.round(np.stack([comb.point, comb.lo, comb.hi], axis=-1).astype(np.float64), 1)
        point = amounts[:, :, 0]
        aqi, cat = us_aqi_array(point)
        kept = [requests[i] for i in usable.tolist()]
        messages = encode_forecasts(
            [r.station_id for r in kept],
            [r.end_hour for r in kept],
            model.version,
            model.horizons,
            amounts,
            aqi,
            cat,
            CATEGORIES,
        )
        result: list[EncodedForecast | None] = [None] * len(requests)
        for i, req, value, p in zip(usable.tolist(), kept, messages, point.tolist(), strict=True):
            result[i] = EncodedForecast(req.station_id, req.end_hour, value, p)
        return result


def run_offline(
    engine: Engine,
    readings: Iterable[Reading],
    batch_size: int = 256,
    on_reject: Callable[[Reading, TooLate], None] | None = None,
    adaptations: Adaptations | None = None,
) -> Iterator[EncodedForecast]:
    """The backtest: readings in the given order, state in dicts, one inference per
    ``batch_size`` readings, the forecasts exactly as the worker publishes them. ``adaptations``:
    where the stations' adaptation states are kept (a fresh dict by default)."""
    windows: dict[str, StationWindow] = {}
    clocks: dict[str, NetworkClock] = {}
    if adaptations is None:
        adaptations = {}
    pending: list[Request] = []
    for n, reading in enumerate(readings, start=1):
        try:
            pending += engine.ingest(windows, clocks, reading).requests
        except TooLate as err:
            if on_reject is not None:
                on_reject(reading, err)
            continue
        if n % batch_size == 0:
            yield from (f for f in engine.forecast(pending, adaptations) if f is not None)
            pending = []
    yield from (f for f in engine.forecast(pending, adaptations) if f is not None)
