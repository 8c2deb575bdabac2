"""Replay readings to Kafka in event-time order, paced or as fast as possible, keyed by station or,
for stations with metadata, by network (:func:`network_keys`: a network's readings then share one
input partition, so several workers can share the networks).

Sources: the bundled UCI datasets or a canonical readings CSV. Rows that are not valid readings
are counted and reported with their line numbers (and optionally written to a file), never
silently dropped.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pm25.adapters import RowError, multisite_files, read_canonical_csv, read_multisite, read_single_site
from pm25.schema import Reading, reading_to_json

__all__ = ["ReplayReport", "event_time_order", "load_source", "network_keys", "replay", "station_key"]

log = logging.getLogger(__name__)


@dataclass
class ReplayReport:
    sent: int = 0
    invalid: list[RowError] = field(default_factory=list)
    stations: set[str] = field(default_factory=set)
    first_hour: str | None = None
    last_hour: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        return (
            f"sent {self.sent} readings for {len(self.stations)} stations "
            f"({self.first_hour} .. {self.last_hour}) in {self.seconds:.1f} s ({rate:.0f}/s); "
            f"invalid rows: {len(self.invalid)}"
        )


def _split(items: Iterable[Reading | RowError], invalid: list[RowError]) -> Iterator[Reading]:
    for item in items:
        if isinstance(item, RowError):
            invalid.append(item)
        else:
            yield item


def event_time_order(streams: list[Iterator[Reading]]) -> Iterator[Reading]:
    """Merge per-station streams (each already in time order) by (hour, station)."""
    return heapq.merge(*streams, key=lambda r: (r.hour, r.station_id))


def load_source(
    source: str | Path,
    invalid: list[RowError],
    stations: set[str] | None = None,
    start_hour: int | None = None,
    hours: int | None = None,
) -> Iterator[Reading]:
    """Readings of a bundled dataset name or a canonical CSV path, in event-time order."""
    if str(source) == "multisite":
        streams = [
            _split(read_multisite(p), invalid)
            for p in multisite_files()
            if stations is None or p.name.split("_")[2] in stations
        ]
        readings: Iterator[Reading] = event_time_order(streams)
    elif str(source) == "single-site":
        readings = _split(read_single_site(), invalid)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such readings file: {path}")
        # A file may be in any order: sort by event time (stable for equal keys).
        readings = iter(sorted(_split(read_canonical_csv(path), invalid), key=lambda r: (r.hour, r.station_id)))
    if stations is not None:
        readings = (r for r in readings if r.station_id in stations)
    if start_hour is not None:
        readings = itertools.dropwhile(lambda r: r.hour < start_hour, readings)
    if hours is not None:
        first: list[int] = []

        def within(r: Reading) -> bool:
            if not first:
                first.append(r.hour)
            return r.hour < first[0] + hours

        readings = itertools.takewhile(within, readings)
    return readings


def station_key(reading: Reading) -> bytes:
    return reading.station_id.encode()


def network_keys(network_of: Mapping[str, str]) -> Callable[[Reading], bytes]:
    """Message keys by network (``network_of``: station id -> network id); a station without
    metadata is keyed by its own id."""
    encoded = {sid: net.encode() for sid, net in network_of.items()}

    def key(reading: Reading) -> bytes:
        return encoded.get(reading.station_id) or reading.station_id.encode()

    return key


def replay(
    producer: Any,
    topic: str,
    readings: Iterable[Reading],
    report: ReplayReport,
    *,
    speedup: float | None = None,
    rate: float | None = None,
    progress: bool = True,
    total: int | None = None,
    key: Callable[[Reading], bytes] = station_key,
) -> ReplayReport:
    """Send readings with ``producer`` (kafka-python). ``speedup`` = simulated hours per real hour
    (3600 = one data hour per second); ``rate`` = readings per second; neither = flat out.
    ``key``: each message's key (the station id by default; :func:`network_keys`)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="reading", disable=not progress, file=sys.stderr, mininterval=0.5)
    started = time.monotonic()
    first_hour: int | None = None
    try:
        for r in readings:
            if first_hour is None:
                first_hour = r.hour
                report.first_hour = r.timestamp
            if speedup:
                due = started + (r.hour - first_hour) * 3600.0 / speedup
            elif rate:
                due = started + report.sent / rate
            else:
                due = 0.0
            delay = due - time.monotonic()
            if delay > 0:
                producer.flush()
                time.sleep(delay)
            producer.send(topic, key=key(r), value=reading_to_json(r))
            report.sent += 1
            report.stations.add(r.station_id)
            report.last_hour = r.timestamp
            bar.update(1)
        producer.flush()
    finally:
        bar.close()
        report.seconds = time.monotonic() - started
    return report
