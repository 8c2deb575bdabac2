"""The worker's first layer, the station step, free of Faust so it is tested without a broker.

``Processor.parse`` validates a message (errors become :class:`DeadLetter` data, never
exceptions); ``Processor.apply`` moves a station's state forward and returns what that causes as
data (:class:`Applied`: the new state, the forecasts to issue, the observation to score with);
``Processor.score`` turns observations into score messages. The second layer, the batch
forecaster (stream_processor.forecaster), turns a batch's forecast requests into messages with
one model for the whole batch; stream_processor.delivery drives both.
"""

from __future__ import annotations

import functools
import heapq
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.partitioner import murmur2

from pm25.adapt import AdaptFormatError, StationAdaptation
from pm25.network import ClockFormatError, NetworkClock
from pm25.schema import InvalidReading, Reading, parse_reading
from pm25.window import StateFormatError, StationWindow, TooLate
from stream_processor.engine import Engine, Request
from stream_processor.forecaster import BatchForecaster, Observation
from stream_processor.hindcast import HindcastScorer
from stream_processor.metrics import WorkerMetrics
from stream_processor.networks import LEGACY_NETWORK_KEY_PREFIX, NETWORK_KEY_PREFIX, Networks

__all__ = [
    "Applied",
    "DeadLetter",
    "Observation",
    "Processor",
    "SplitNetworks",
    "key_partition",
    "wall_clock_hour",
]

log = logging.getLogger(__name__)


#: A watermark no hour reaches (nothing closes by the watermark).
NO_WATERMARK = -(2**62)


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def wall_clock_hour() -> int:
    return int(time.time()) // 3600


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2: the Java client's,
    kafka-python's and aiokafka's)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class SplitNetworks:
    """Networks of which this worker sees only part. A network's clock and neighbour features need
    every station's readings in one worker. Keyed by network, a network's readings land in one
    input partition; keyed by station (or not keyed) they spread over the partitions: right while
    one worker holds every partition, wrong once several workers share them (each one's clock then
    sees the stations of its own partitions, and its forecasts differ from a backtest of the whole
    network). :meth:`hold` records the worker's input partitions at each assignment;
    :meth:`elsewhere` tells, of a network whose readings come keyed by station, the partitions its
    stations' keys land in that this worker does not hold."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        #: the input partitions held, or None while the worker holds every one (or none yet)
        self.held: frozenset[int] | None = None
        self.logged: set[str] = set()  # networks already logged as split since the assignment
        self._elsewhere: dict[str, tuple[int, ...]] = {}
        self._version = -1  # the metadata version the cache is of

    def hold(self, partitions: set[int]) -> None:
        whole = not partitions or len(partitions) >= self.partitions
        self.held = None if whole else frozenset(partitions)
        self._elsewhere.clear()
        self.logged.clear()

    def elsewhere(self, networks: Networks, network: str) -> tuple[int, ...]:
        if self.held is None:
            return ()
        if networks.version != self._version:
            self._elsewhere.clear()
            self._version = networks.version
        found = self._elsewhere.get(network)
        if found is None:
            landing = {key_partition(sid.encode(), self.partitions) for sid in networks.member_ids(network)}
            found = self._elsewhere[network] = tuple(sorted(landing - self.held))
        return found


class Applied(NamedTuple):
    """What applying one reading gives (the station step's events as data)."""

    #: the table keys whose state changed (stations' windows, a network's clock): their bytes
    #: come from :meth:`Processor.take_states`, once per batch
    changed: list[str]
    requests: list[Request]  # the forecasts to issue
    observed: Observation | None  # the reading, to score earlier forecasts with; None for a replay


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str


class _Windows:
    """The engine's view of the stations' windows: the processor's objects, a stored one decoded
    from the table on first use."""

    def __init__(self, processor: Processor, table: Mapping[str, bytes]) -> None:
        self.processor, self.table = processor, table
        self.tried: set[str] = set()  # decoded (or found unreadable) once per reading

    def get(self, station_id: str) -> StationWindow | None:
        windows = self.processor.windows
        window = windows.get(station_id)
        if window is None and station_id not in self.tried:
            self.tried.add(station_id)
            window = self.processor.decode(self.table.get(station_id), station_id)
            if window is not None:
                windows[station_id] = window
        return window

    def __setitem__(self, station_id: str, window: StationWindow) -> None:
        self.processor.windows[station_id] = window


class _Clocks:
    """The networks' clocks: the processor's objects, a stored one decoded on first use."""

    def __init__(self, processor: Processor, table: Mapping[str, bytes]) -> None:
        self.processor, self.table = processor, table

    def get(self, network: str) -> NetworkClock | None:
        clocks = self.processor.clocks
        clock = clocks.get(network)
        if clock is None:
            data = self.table.get(self.processor.engine.networks.key(network))
            if data is None:  # saved by a worker before 2026-12-03 (stream_processor.networks)
                data = self.table.get(LEGACY_NETWORK_KEY_PREFIX + network)
            if data is not None:
                try:
                    clock = clocks[network] = NetworkClock.from_bytes(data)
                except ClockFormatError as err:
                    log.error("network %s: stored clock unreadable (%s); it starts afresh", network, err)
                    self.processor.metrics.states_unreadable.inc()
        return clock

    def __setitem__(self, network: str, clock: NetworkClock) -> None:
        self.processor.clocks[network] = clock


class Processor:
    def __init__(
        self,
        engine: Engine,
        metrics: WorkerMetrics,
        now_hour: Callable[[], int] = wall_clock_hour,
        partitions: int = 1,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.now_hour = now_hour
        #: the input topic's partition count (a network's clock is stored in a fixed one of them)
        self.partitions = partitions
        #: networks whose readings, keyed by station, other workers share (logged and counted)
        self.split = SplitNetworks(partitions)
        self.scorer = HindcastScorer()
        #: each station's online adaptation (pm25.adapt), authoritative while the worker owns the
        #: station; saved after the window in the station's state value
        self.adaptations: dict[str, StationAdaptation] = {}
        #: each station's window as an object, authoritative while the worker owns the station (the
        #: stored bytes are decoded once, not for every reading)
        self.windows: dict[str, StationWindow] = {}
        #: each network's clock (pm25.network), authoritative while the worker owns it
        self.clocks: dict[str, NetworkClock] = {}
        #: the newest event hour read from each input partition, and the partitions with messages
        #: not read yet (None: unknown; the worker sets it per batch): the networks' watermark
        self.newest_by_partition: dict[int, int] = {}
        self.lagging: set[int] | None = None
        #: the partitions that delivered a message lately (the worker sets it per batch)
        self.active: set[int] = set()
        self._dirty: dict[str, None] = {}  # keys whose state changed since take_states (ordered)
        self._moved: set[str] = set()  # stations whose move to another input partition was logged
        #: the second layer, sharing the adaptations (a batch's encoding records in them, in order)
        self.forecaster = BatchForecaster(engine, metrics, self.adaptations, self.scorer)

    def parse(self, raw: bytes | None, key: bytes | None) -> Reading | DeadLetter:
        self.metrics.readings_in.inc()
        try:
            reading = parse_reading(raw, self.now_hour())
        except InvalidReading as err:
            return self._dead(err.reason, err.detail)
        if key is not None and key != reading.station_id.encode():
            why = self.engine.networks.key_mismatch(reading.station_id, key)  # keyed by network, or not
            if why is not None:
                return self._dead("key_mismatch", why)
        elif self.split.held is not None:  # keyed by station while other workers share the topic
            self._check_split(reading.station_id)
        return reading

    def _check_split(self, station_id: str) -> None:
        networks = self.engine.networks
        network = networks.network_of(station_id)
        if network is None:
            return
        elsewhere = self.split.elsewhere(networks, network)
        if not elsewhere:
            return
        self.metrics.split_network_readings.inc()
        if network not in self.split.logged:
            self.split.logged.add(network)
            log.warning(
                "network %s: readings keyed by station, and its stations' keys also land in input "
                "partitions %s, which this worker does not hold: its forecasts of the network see only "
                "part of it (they differ from a backtest of the whole network); when several workers "
                "share the topic, key the readings by network (pm25 produce --key network), or publish them "
                "keyed by station to the router's topic and run pm25 route",
                network,
                list(elsewhere),
            )

    def apply(
        self, table: Mapping[str, bytes], reading: Reading, offset: int | None = None, partition: int = 0
    ) -> Applied | DeadLetter:
        """The station step: the new states (the station's window, the windows of its network's
        stations whose hour closed, the network's clock), the forecast requests and the observation
        to score with, or a DeadLetter. ``table``: the stored states, by key.

        ``offset`` is the message's input offset. A message at or before the offset the station's
        state has already applied is a replay after a restart (the worker saves a state only after
        the batch's forecasts were delivered): its window does not change and its own forecasts
        were delivered; only its network's clock is offered it again (idempotent)."""
        sid = reading.station_id
        windows = _Windows(self, table)
        window = windows.get(sid)
        was_in = window.partition if window is not None else -1
        moved = was_in >= 0 and was_in != partition
        if moved and offset is not None and sid not in self._moved:
            # its key or the topic's partition count changed: offsets of another partition say
            # nothing about what this station has applied (logged once per station)
            self._moved.add(sid)
            log.warning("station %s: readings now in input partition %d (were in %d)", sid, partition, was_in)
        replayed = window is not None and offset is not None and not moved and offset <= window.last_offset
        newest = window.newest_hour if window is not None else None
        seen = self.newest_by_partition.get(partition)
        if seen is None or reading.hour > seen:
            self.newest_by_partition[partition] = reading.hour
        try:
            done = self.engine.ingest(
                windows, _Clocks(self, table), reading, replayed=replayed, watermark=self.watermark()
            )
        except TooLate as err:
            return self._dead("too_late", str(err))
        changed = list(done.touched)
        if done.network is not None:
            changed.append(self.engine.networks.key(done.network))
        if replayed:
            self.metrics.replayed.inc()
            self._dirty.update(dict.fromkeys(changed))
            return Applied(changed, done.requests, None)
        window = self.windows[sid]
        self.metrics.readings_valid.inc()
        if not done.changed:
            self.metrics.duplicates.inc()
        elif newest is not None and reading.hour < newest:
            self.metrics.out_of_order.inc()
        if offset is not None:
            window.last_offset = offset
        window.partition = partition
        changed.append(sid)
        self._dirty.update(dict.fromkeys(changed))
        return Applied(changed, done.requests, (sid, reading.hour, reading.pm25))

    def advance(self, table: Mapping[str, bytes]) -> list[Request]:
        """After a batch: close the networks' hours the watermark now allows (their forecast
        requests; the states they change are taken with :meth:`take_states`)."""
        if not self.clocks:
            return []
        done, networks = self.engine.advance(_Windows(self, table), self.clocks, self.watermark())
        self._dirty.update(dict.fromkeys(done.touched))
        self._dirty.update(dict.fromkeys(self.engine.networks.key(n) for n in networks))
        return done.requests

    def take_states(self) -> dict[str, tuple[int, bytes]]:
        """The states changed since the last call, by table key: (changelog partition, bytes). A
        station's goes to its readings' partition, a network's clock to a fixed one."""
        out: dict[str, tuple[int, bytes]] = {}
        prefix = len(NETWORK_KEY_PREFIX)
        for key in self._dirty:
            if key.startswith(NETWORK_KEY_PREFIX):
                network = key[prefix:]
                out[key] = (self.home_partition(network), self.clocks[network].to_bytes())
            else:
                window = self.windows[key]
                out[key] = (max(window.partition, 0), window.to_bytes())
        self._dirty.clear()
        return out

    def aligned(self, items: list[tuple[Any, Reading]]) -> Iterator[tuple[Any, Reading, bool]]:
        """The batch's readings in event-time order across input partitions (a merge: each
        partition's own order is kept), each with whether to hold it back: a network station's
        reading more than ``align_hours`` ahead of a partition still behind (its newest applied
        hour, or its first reading in the batch; one that has neither holds every network reading
        back), and everything after it in its partition. Evaluated lazily: the readings applied
        meanwhile move the partitions on. Items: (input with a ``partition``, reading)."""
        by_partition: dict[int, list[tuple[Any, Reading]]] = {}
        for item in items:
            by_partition.setdefault(item[0].partition, []).append(item)
        merged = heapq.merge(*by_partition.values(), key=lambda item: item[1].hour)
        blocked: set[int] = set()
        networks = self.engine.networks
        # where a partition that has applied nothing yet starts: its first reading in the batch
        first = {p: min(r.hour for _, r in rows) for p, rows in by_partition.items()}
        for item, reading in merged:
            p = item.partition
            if (
                p not in blocked
                and networks.network_of(reading.station_id) is not None
                and self._ahead(p, reading, first)
            ):
                blocked.add(p)
            yield item, reading, p in blocked

    def _ahead(self, partition: int, reading: Reading, first: dict[int, int]) -> bool:
        """Whether the reading is too far ahead of a partition the watermark waits for (still
        behind, or active: one with nothing applied nor in the batch may hold any hour: wait for
        it)."""
        counted = (self.lagging or set()) | self.active  # those the watermark waits for
        if not counted:
            return False
        # a partition's position: the newest hour it applied, or the hour of its next reading in
        # the batch if that is later (it holds nothing older back: the batch's earliest reading
        # always goes through, so the worker never holds everything)
        behind = [_latest(self.newest_by_partition.get(q), first.get(q)) for q in counted if q != partition]
        if any(h is None for h in behind):
            return True
        return bool(behind) and reading.hour > min(h for h in behind if h is not None) + self.align_hours

    @property
    def align_hours(self) -> int:
        """How far a network station's readings may run ahead of the partitions still behind: the
        station buffer must still hold the window of every hour its network has not closed."""
        engine = self.engine
        spare = engine.buffer_hours - engine.model.window_hours - engine.networks.lateness_hours - 2
        return max(spare, 1)

    def watermark(self) -> int:
        """The event hour every input partition has reached: the least newest hour of the
        partitions still behind or still receiving readings (each partition is in event-time order
        within the bound, so what is older than this minus the lateness has arrived from it; a
        partition that looks caught up may have messages on their way); when every partition is
        caught up and idle, the newest hour read. A partition counted that has applied nothing yet
        holds it back entirely."""
        hours = self.newest_by_partition
        if not hours:
            return NO_WATERMARK
        if self.lagging is None:
            return min(hours.values())
        counted = self.lagging | self.active
        behind = [hours.get(p) for p in counted]
        if any(h is None for h in behind):
            return NO_WATERMARK
        return min(h for h in behind if h is not None) if behind else max(hours.values())

    def home_partition(self, network: str) -> int:
        """The partition a network's clock is stored in: fixed, so recovery finds its newest, and
        the one Kafka's default partitioner (murmur2, the Java client's and ours) gives the network's
        id, so that when the readings are keyed by network the clock is kept, and recovered, with
        its stations' windows by the worker that reads them."""
        return key_partition(network.encode(), self.partitions)

    def decode(self, state: bytes | None, station_id: str) -> StationWindow | None:
        if state is None:
            return None
        try:
            window, tail = StationWindow.split(state)
        except StateFormatError as err:  # never crash on stored state: start the station afresh
            log.error("station %s: stored state unreadable (%s); starting its window afresh", station_id, err)
            self.metrics.states_unreadable.inc()
            return None
        if tail and station_id not in self.adaptations:
            try:
                self.adaptations[station_id] = StationAdaptation.from_bytes(tail)
            except AdaptFormatError as err:
                log.error("station %s: stored adaptation unreadable (%s); it starts afresh", station_id, err)
                self.metrics.states_unreadable.inc()
        return window

    def state_value(self, station_id: str, window: bytes) -> bytes:
        """The value saved for a station: its window bytes, then its adaptation's."""
        adaptation = self.adaptations.get(station_id)
        return window if adaptation is None else window + adaptation.to_bytes()

    def forget(self, station_ids: set[str] | None = None) -> dict[str, bytes]:
        """Stop holding these stations' windows and adaptations (all when None: partitions were
        revoked); returns each adaptation's bytes so the caller can keep them with the station's
        window bytes."""
        if station_ids is None:
            self.windows.clear()
            self.clocks.clear()
            self.newest_by_partition.clear()
            self._dirty.clear()
        else:
            for sid in station_ids:
                self.windows.pop(sid, None)
        ids = set(self.adaptations) if station_ids is None else station_ids & set(self.adaptations)
        return {sid: self.adaptations.pop(sid).to_bytes() for sid in ids}

    def score(self, observed: list[Observation]) -> list[tuple[bytes, bytes]]:
        """Score the forecasts the observed readings are the targets of; the score messages."""
        scores = []
        for station, hour, pm25 in observed:
            msg = self.scorer.observe(station, hour, pm25, functools.partial(self._adaptation_view, station))
            if msg is not None:
                scores.append((station.encode(), msg))
        if observed:
            for h, skill in self.scorer.total.items():
                if skill.n:
                    self.metrics.hindcast_rmse.labels(model="forecast", horizon=str(h)).set(skill.mse**0.5)
                    self.metrics.hindcast_rmse.labels(model="persistence", horizon=str(h)).set(skill.p_mse**0.5)
                    self.metrics.hindcast_pairs.labels(horizon=str(h)).set(skill.n)
        return scores

    def _adaptation_view(self, station_id: str) -> dict[str, Any]:
        """How the station's adaptation weighs the model against its references now (for the
        score messages the dashboard shows)."""
        st = self.adaptations.get(station_id)
        if st is None or st.newest < 0:
            return {}
        return {"adaptation": self.engine.adapter(self.engine.model).current_weights(st)}

    def _dead(self, reason: str, detail: str) -> DeadLetter:
        self.metrics.dead_letters.labels(reason=reason).inc()
        return DeadLetter(reason, detail)
