"""The network step: which stations form a network, their neighbours, and one clock per network.

A station with metadata (pm25.stations) in a network of at least two stations is forecast when
its network's hour closes (pm25.network), with the neighbour features of that hour written into
its window row (pm25.neighbours); a station without metadata, or alone in its network, is forecast
on its own reading as before (its neighbour columns stay missing). The engine
(stream_processor.engine) drives this for the worker and the backtest alike; the clocks are state
that the caller keeps, like the stations' windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from pm25.features import OWN_FIELDS
from pm25.neighbours import MAX_NEIGHBOUR_KM, MAX_NEIGHBOURS, Neighbour, nearest_of, row_features
from pm25.network import NetworkClock
from pm25.schema import Reading
from pm25.stations import Station

__all__ = [
    "ACTIVE_HOURS",
    "LEGACY_NETWORK_KEY_PREFIX",
    "NEIGHBOURS",
    "NETWORK_KEY_PREFIX",
    "Networks",
    "fill_row",
    "network_columns",
]

_NB = len(OWN_FIELDS)

#: How many nearest stations of its network a station's features look at.
NEIGHBOURS = 11
#: A station that reported within this many hours is a member its network's hours wait for.
ACTIVE_HOURS = 24
#: The table key of a network's clock (station ids cannot contain a NUL).
NETWORK_KEY_PREFIX = "\x00clock:"
#: The key a network's clock had before 2026-12-03, when it was kept in the partition a checksum of
#: the network id gave (not the one its readings keyed by network land in). Read, never written: a
#: worker upgraded with such clocks starts from them, and the stale copies under the old key can
#: never win over the new ones at recovery (which reads partitions in no set order).
LEGACY_NETWORK_KEY_PREFIX = "\x00network:"


class Networks:
    """The station metadata as the step needs it; replaced whole when the metadata changes."""

    def __init__(
        self,
        stations: Iterable[Station] = (),
        *,
        lateness_hours: int,
        neighbours: int = NEIGHBOURS,
        active_hours: int = ACTIVE_HOURS,
        max_km: float = MAX_NEIGHBOUR_KM,
    ) -> None:
        if not 1 <= neighbours <= MAX_NEIGHBOURS:
            raise ValueError(f"neighbours must be 1..{MAX_NEIGHBOURS}")
        self.lateness_hours = lateness_hours
        self.k = neighbours
        self.max_km = max_km
        self.active_hours = active_hours
        self.stations: dict[str, Station] = {}
        #: counts the metadata updates (what a caller caches about the networks is stale after one)
        self.version = 0
        self._members: dict[str, list[Station]] = {}
        self._near: dict[str, tuple[Neighbour, ...]] = {}
        self.update(stations)

    def update(self, stations: Iterable[Station]) -> None:
        """Add or replace stations' metadata (the newest record of a station wins)."""
        for s in stations:
            self.stations[s.station_id] = s
        self._members = {}
        for s in sorted(self.stations.values(), key=lambda s: s.station_id):
            self._members.setdefault(s.network, []).append(s)
        self._near = {}
        self.version += 1

    def __len__(self) -> int:
        return len(self.stations)

    def is_network(self, key: bytes) -> bool:
        """Whether ``key`` (a message key) is the id of a network some station's metadata names."""
        try:
            return key.decode() in self._members
        except UnicodeDecodeError:
            return False

    def key_mismatch(self, station_id: str, key: bytes | None) -> str | None:
        """Why a message key does not fit its reading's station (None: it fits). The input topic is
        keyed by station, or by network (so that several workers can share the networks): any
        other key would split a station's or a network's state. A station whose metadata is not in
        yet may come keyed by any known network."""
        if key is None or key == station_id.encode():
            return None
        meta = self.stations.get(station_id)
        if meta is None:
            if self.is_network(key):
                return None
            return f"message key {key[:64]!r} is neither station_id {station_id!r} nor a known network"
        if key != meta.network.encode():
            return f"message key {key[:64]!r} is neither station_id {station_id!r} nor its network {meta.network!r}"
        return None

    def network_of(self, station_id: str) -> str | None:
        """The station's network, or None when it is forecast alone (no metadata, or no other
        station in its network)."""
        meta = self.stations.get(station_id)
        if meta is None or len(self._members.get(meta.network, ())) < 2:
            return None
        return meta.network

    def member_ids(self, network: str) -> list[str]:
        """The ids of the stations whose metadata names ``network``, in id order."""
        return [s.station_id for s in self._members.get(network, ())]

    def neighbours(self, station_id: str) -> tuple[Neighbour, ...]:
        """The station's nearest stations of its network within ``max_km`` (pm25.neighbours); none
        in range: its network columns stay missing, as for a station alone (it still waits for its
        network's hours, whose members it is)."""
        near = self._near.get(station_id)
        if near is None:
            meta = self.stations[station_id]
            near = self._near[station_id] = nearest_of(meta, self._members[meta.network], self.k, self.max_km)
        return near

    def new_clock(self) -> NetworkClock:
        # the features look 3 hours back from an hour up to ``lateness`` behind the newest
        return NetworkClock(self.lateness_hours, self.active_hours, keep_hours=self.lateness_hours + 4)

    @staticmethod
    def key(network: str) -> str:
        return NETWORK_KEY_PREFIX + network


def fill_row(row: npt.NDArray[np.float32], station_id: str, hour: int, networks: Networks, clock: NetworkClock) -> None:
    """Write a station's network columns of ``hour`` into its raw row (in place), from the
    clock's closed hours: what the engine does when the hour closes."""
    row[_NB:] = row_features(row, hour, networks.neighbours(station_id), clock.content)


def network_columns(
    readings: Iterable[Reading],
    row_of: Callable[[str, int], npt.NDArray[np.float32] | None],
    networks: Networks,
) -> dict[str, NetworkClock]:
    """Training's side of the engine's network step: offer the readings, in the given order, to
    their networks' clocks and fill each reported row's network columns when the engine would
    (when its hour closes, or on arrival for an hour closed already). ``row_of(station, hour)``:
    the station's raw row of that hour (a view written in place), None when it has none. Returns
    the clocks. A test compares the rows with the engine's windows (tests/contract)."""
    clocks: dict[str, NetworkClock] = {}
    for r in readings:
        network = networks.network_of(r.station_id)
        if network is None:
            continue
        clock = clocks.get(network)
        if clock is None:
            clock = clocks[network] = networks.new_clock()
        was_closed = clock.closed_through is not None and r.hour <= clock.closed_through
        for closed in clock.offer(r).closed:
            for t in closed.reported:
                row = row_of(t, closed.hour)
                if row is not None:
                    fill_row(row, t, closed.hour, networks, clock)
        if was_closed:
            row = row_of(r.station_id, r.hour)
            if row is not None:
                fill_row(row, r.station_id, r.hour, networks, clock)
    return clocks
