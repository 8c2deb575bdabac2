"""`pm25 backtest`: the stream's window and inference code run offline over a readings file."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from model_store import default_store, load_version
from pm25.schema import Reading
from pm25.settings import Settings
from pm25.stations import Station
from pm25.window import TooLate
from stream_processor.engine import Engine, run_offline
from stream_processor.inference import OnnxForecaster
from stream_processor.networks import Networks

__all__ = ["make_engine", "run_backtest"]

log = logging.getLogger(__name__)


def make_engine(settings: Settings, stations: Iterable[Station] = (), version: str | None = None) -> Engine:
    """The production model (or the store's bundle ``version``) with the worker's window settings;
    ``stations``: the metadata (stream_processor.networks: none, every station forecast alone)."""
    return Engine(
        OnnxForecaster(load_version(settings.model_store or default_store(), version)),
        lateness_hours=settings.lateness_hours,
        buffer_hours=settings.buffer_hours,
        networks=Networks(stations, lateness_hours=settings.network_lateness_hours),
    )


def run_backtest(
    settings: Settings,
    readings: Iterable[Reading],
    out: Path,
    *,
    progress: bool = True,
    stations: Iterable[Station] = (),
) -> tuple[int, int]:
    """Write one forecast per line (the exact bytes the worker would publish, re-issues included:
    the last line of a station and hour is its final forecast); returns (forecasts written,
    readings rejected as too late). ``stations``: the metadata giving the networks."""
    from tqdm import tqdm

    engine = make_engine(settings, stations)
    rejected = 0

    def reject(reading: Reading, err: TooLate) -> None:
        nonlocal rejected
        rejected += 1
        log.warning("rejected %s %s: %s", reading.station_id, reading.timestamp, err)

    n = 0
    with open(out, "wb") as fh:
        stream = tqdm(readings, unit="reading", disable=not progress, file=sys.stderr, mininterval=0.5)
        for f in run_offline(engine, stream, on_reject=reject):
            fh.write(f.value + b"\n")
            n += 1
    return n, rejected
