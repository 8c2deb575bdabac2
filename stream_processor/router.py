"""The repartition stage: readings keyed by station, routed to the readings topic keyed by network.

A worker keeps a network's clock beside its stations' windows, so the readings of a network must
reach one worker; with several workers, readings keyed by station would spread a network over them
(docs/regional.md). ``pm25 route`` takes readings from a station-keyed topic
(``pm25.readings.by-station``) and forwards each message's value, headers and timestamp unchanged
to the readings topic, keyed by its station's network (by its station id when the station has no
metadata or is alone in its network), so that each network lands in one partition.

Forwarding must not break what the network step relies on: arrivals *within the lateness bound*
(pm25.network: every reading for hour ``h`` arrives before any reading for ``h + L``). Each input
partition is within the bound, but the router reads several, and one may be far behind the others
(a backlog, a slow producer): forwarding in read order would put a network's hour ``h + L`` before
its hour ``h``. So one router reads every input partition and forwards through an event-time
merge (:class:`EventTimeMerge`): a reading of hour ``h`` goes out only when no partition can still
hold a reading of hour ``h - L`` or older. The router runs as one instance (one consumer group of
one; a second instance would share the partitions and lose the merge across them: it says so);
its at-least-once duplicates after a restart are harmless, since the window and the clock ignore
an identical reading.

The merge is pure and tested alone (tests/unit/test_router.py); :class:`Router` drives it with
kafka-python clients (tests/integration/test_kafka_faults.py runs it on Apache Kafka).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pm25.embedded import kafka_consumer_overrides
from pm25.schema import InvalidReading, parse_reading
from pm25.settings import Settings
from pm25.stations import InvalidStation, Station, station_from_json
from stream_processor.metrics import RouterMetrics
from stream_processor.networks import Networks
from stream_processor.partitions import ACTIVE_S, BEHIND_MAX_S, PartitionActivity, StuckPartitions

__all__ = ["ROUTER_GROUP_SUFFIX", "EventTimeMerge", "Router", "route_of"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The router's consumer group: the application id with this suffix.
ROUTER_GROUP_SUFFIX = "-router"
#: A partition with more readings than this waiting in the merge is paused until half are out.
MAX_WAITING = 20_000
#: Seconds between two progress lines in the log.
PROGRESS_S = 10.0


class EventTimeMerge(Generic[T]):
    """Items of several input partitions, each in its partition's order, released in an order that
    keeps the lateness bound across partitions.

    Each partition is assumed within the bound on its own: after an item of hour ``x``, its later
    items are newer than ``x - L``. The merge releases the oldest head of the partitions' queues,
    hour ``h``, only when every *pending* partition (one that may have unread items) whose queue is
    empty has released an hour ``>= h`` already: its unread items are then newer than ``h - L``,
    and so are the queued items of every other partition (their heads are ``>= h``). So no item of
    hour ``h - L`` or older can follow ``h``: the output is within the bound, whatever the order in
    which the partitions' items were read. An item without an hour (a message that is not a
    reading) goes out when it reaches its queue's head.

    >>> m = EventTimeMerge()
    >>> m.add(0, 10, "a10"); m.add(0, 11, "a11"); m.add(1, 7, "b7")
    >>> [item for _, item in m.release(pending={0, 1})]  # 1 may hold more of hours 7..10
    ['b7']
    >>> m.add(1, 11, "b11")
    >>> [item for _, item in m.release(pending={0, 1})]
    ['a10', 'a11', 'b11']
    """

    def __init__(self) -> None:
        self._queues: dict[int, deque[tuple[int | None, T]]] = {}
        self._newest: dict[int, int] = {}  # partition -> newest hour released

    def add(self, partition: int, hour: int | None, item: T) -> None:
        self._queues.setdefault(partition, deque()).append((hour, item))

    def waiting(self, partition: int) -> int:
        """How many items of ``partition`` wait in the merge."""
        return len(self._queues.get(partition, ()))

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop revoked partitions' waiting items and history (their next owner reads them again)."""
        for p in partitions:
            self._queues.pop(p, None)
            self._newest.pop(p, None)

    def release(self, pending: set[int]) -> list[tuple[int, T]]:
        """The items that may go out now, in order, each with its partition. ``pending``: the
        partitions that may have items not added yet (behind their end, or of unknown position)."""
        out: list[tuple[int, T]] = []
        heads: list[tuple[int, int]] = []
        for p, queue in self._queues.items():
            while queue and queue[0][0] is None:
                out.append((p, queue.popleft()[1]))
            first = queue[0][0] if queue else None  # an hour: the items without one went out above
            if first is not None:
                heads.append((first, p))
        heapq.heapify(heads)
        while heads:
            hour, p = heads[0]
            if any(
                self._newest.get(q, hour - 1) < hour for q in pending if q != p and not self._queues.get(q)
            ):  # an empty pending partition may still hold hour - L or older
                break
            queue = self._queues[p]
            while queue and (queue[0][0] is None or queue[0][0] <= hour):
                h, item = queue.popleft()
                if h is not None:
                    self._newest[p] = max(self._newest.get(p, h), h)
                out.append((p, item))
            nxt = queue[0][0] if queue else None  # newer than ``hour`` (an item without one went out)
            if nxt is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (nxt, p))
        return out


def route_of(value: bytes | None, key: bytes | None, networks: Networks) -> tuple[int | None, bytes | None]:
    """A message's event hour and the key it is forwarded with: its station's network, or its
    station id (no metadata, or alone in its network). A message that is not a valid reading, or
    whose key the worker would refuse (:meth:`Networks.key_mismatch`), keeps its key and has no
    hour: the worker dead-letters it with its reason."""
    try:
        reading = parse_reading(value)
    except InvalidReading:
        return None, key
    if networks.key_mismatch(reading.station_id, key) is not None:
        return None, key
    network = networks.network_of(reading.station_id)
    return reading.hour, (network or reading.station_id).encode()


@dataclass
class _Progress:
    forwarded: int = 0
    since: float = field(default_factory=time.monotonic)
    last_count: int = 0


class Router:
    """``pm25 route``: the merge driven by kafka-python clients (a consumer of the station-keyed
    topic in the group ``{app_id}-router``, a consumer of the station topic in no group, an
    idempotent producer). Offsets are committed only for readings the broker has acknowledged on
    the readings topic (at least once)."""

    def __init__(
        self, settings: Settings, source_topic: str, networks: Networks | None = None, *, max_records: int = 4000
    ) -> None:
        self.settings = settings
        self.source = source_topic
        self.max_records = max_records  # taken per poll
        self.networks = networks or Networks(lateness_hours=settings.network_lateness_hours)
        self.merge: EventTimeMerge[Any] = EventTimeMerge()
        self._released: dict[Any, int] = {}  # partition -> next offset to commit
        self._activity = PartitionActivity(ACTIVE_S)
        self._stuck = StuckPartitions(BEHIND_MAX_S)
        self._paused: set[Any] = set()
        self._progress = _Progress()
        self._consumer: Any = None
        self._producer: Any = None
        self._stations: Any = None
        self._stations_looked = float("-inf")  # when the station topic was last looked for
        self.metrics = RouterMetrics()

    def run(self, stop: Callable[[], bool]) -> int:
        """Route until ``stop()`` is true; returns how many readings were forwarded."""
        self._open()
        try:
            self._load_stations(wait_for_end=True)
            while not stop():
                self.step()
        finally:
            self._close()
        return self._progress.forwarded

    def step(self, timeout_ms: int = 200) -> None:
        """One poll: take what came, forward what the merge releases, commit it."""
        from kafka.structs import TopicPartition

        batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        now = time.monotonic()
        self._activity.delivered({tp.partition for tp, records in batch.items() if records}, now)
        for tp, records in batch.items():
            for rec in records:
                hour, key = route_of(rec.value, rec.key, self.networks)
                if hour is None:
                    self.metrics.kept_key.inc()
                self.merge.add(tp.partition, hour, (rec, key))
        self._load_stations(wait_for_end=False)
        out = self.merge.release(self._pending(now))
        for p, (rec, key) in out:
            self._producer.send(
                self.settings.readings_topic,
                key=key,
                value=rec.value,
                headers=list(rec.headers or []),
                timestamp_ms=rec.timestamp,
            )
            self._released[TopicPartition(self.source, p)] = rec.offset + 1
        if out:
            self._commit()
        self._progress.forwarded += len(out)
        self.metrics.routed.inc(len(out))
        self._flow_control()
        self._report()

    def _pending(self, now: float) -> set[int]:
        """The assigned partitions that may have readings not taken yet: those behind their end as
        last fetched (or not fetched yet), unless stuck there for ``BEHIND_MAX_S``, and those that
        delivered within ``ACTIVE_S`` (a producer's writes to the partitions do not land at once:
        a partition that looks caught up may have readings on their way), as the worker counts its
        input partitions for the networks' watermark."""
        assigned = {tp.partition: tp for tp in self._consumer.assignment()}
        behind: dict[int, int | None] = {}
        for p, tp in assigned.items():
            high = self._consumer.highwater(tp)
            position = self._consumer.position(tp)
            if high is None or position is None or position < high:
                behind[p] = position
        stuck = self._stuck.stuck(behind, now)
        for p in stuck - self._stuck.reported:
            log.warning("partition %d of %s has not moved for %.0f s: not waited for", p, self.source, BEHIND_MAX_S)
        self._stuck.reported |= stuck
        pending = (set(behind) - stuck) | self._activity.active(set(assigned), now)
        m = self.metrics
        m.partitions.set(len(assigned))
        m.pending.set(len(pending))
        m.stuck.set(len(stuck))
        m.waiting.set(sum(self.merge.waiting(p) for p in assigned))
        return pending

    def _commit(self) -> None:
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata

        self._producer.flush()  # acknowledged by the broker before their offsets are committed
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._released.items()}
        self._released.clear()
        try:
            self._consumer.commit(offsets)
        except CommitFailedError as err:  # the group rebalanced meanwhile: the next owner forwards
            # these readings again (duplicates, which the worker ignores); nothing is lost
            log.warning("offsets of forwarded readings not committed (%s): they will be forwarded again", err)

    def _flow_control(self) -> None:
        """Pause a partition with too many readings waiting in the merge (the others are behind it);
        resume it once half are out."""
        for tp in list(self._consumer.assignment()):
            waiting = self.merge.waiting(tp.partition)
            if tp not in self._paused and waiting > MAX_WAITING:
                self._consumer.pause(tp)
                self._paused.add(tp)
            elif tp in self._paused and waiting <= MAX_WAITING // 2:
                self._consumer.resume(tp)
                self._paused.discard(tp)

    def _report(self) -> None:
        now = time.monotonic()
        pr = self._progress
        if now - pr.since < PROGRESS_S:
            return
        if pr.forwarded == pr.last_count:  # idle: nothing to say
            pr.since = now
            return
        rate = (pr.forwarded - pr.last_count) / (now - pr.since)
        waiting = sum(self.merge.waiting(tp.partition) for tp in self._consumer.assignment())
        log.info("routed %d readings (%.0f/s), %d waiting in the merge", pr.forwarded, rate, waiting)
        pr.since, pr.last_count = now, pr.forwarded

    # -- clients ------------------------------------------------------------------------------

    def _open(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        router = self
        s = self.settings

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                router.revoked(revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                router.assigned(assigned)

        self._producer = KafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,  # a retried batch neither doubles nor reorders readings
            linger_ms=5,
            client_id="pm25-router",
            **s.kafka_python_security(),
        )
        self._consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.app_id + ROUTER_GROUP_SUFFIX,
            client_id="pm25-router",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **s.kafka_python_security(),
            # a router killed is out of the group 10 s later (its successor waits for that)
            **{"session_timeout_ms": 10_000, "heartbeat_interval_ms": 3_000, **self._embedded},
        )
        self._consumer.subscribe([self.source], listener=Listener())
        self._stations = KafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=None,
            client_id="pm25-router-stations",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **s.kafka_python_security(),
            **self._embedded,
        )

    def revoked(self, revoked: Any) -> None:
        """Before a rebalance takes ``revoked`` partitions: commit what went out, drop what waits
        (their next owner reads it again)."""
        if self._released:
            self._commit()
        self.merge.forget(tp.partition for tp in revoked)
        self._paused.difference_update(revoked)

    @property
    def _embedded(self) -> dict[str, Any]:
        """The embedded broker's consumer settings when it is the broker (pm25.embedded)."""
        return kafka_consumer_overrides() if self.settings.embedded_broker else {}

    def assigned(self, assigned: Any) -> None:
        partitions = self._consumer.partitions_for_topic(self.source) or set()
        mine = sorted(tp.partition for tp in assigned)
        log.info("routing partitions %s of %s to %s", mine, self.source, self.settings.readings_topic)
        if mine and len(mine) < len(partitions):
            log.warning(
                "this router has %d of the %d partitions of %s: another router shares them, and readings "
                "of one network read by two routers may reach the worker outside the lateness bound "
                "(run one router)",
                len(mine),
                len(partitions),
                self.source,
            )

    def _load_stations(self, *, wait_for_end: bool) -> None:
        """Apply the station topic's new records; at start, read it to its end first."""
        from kafka.structs import TopicPartition

        consumer = self._stations
        if not consumer.assignment():
            now = time.monotonic()
            if now - self._stations_looked < PROGRESS_S:
                return
            self._stations_looked = now
            parts = consumer.partitions_for_topic(self.settings.stations_topic)
            if not parts:
                log.info("no station topic %s yet: readings keep their station key", self.settings.stations_topic)
                return
            consumer.assign([TopicPartition(self.settings.stations_topic, p) for p in parts])
        end = consumer.end_offsets(list(consumer.assignment())) if wait_for_end else {}
        while True:
            batch = consumer.poll(timeout_ms=200 if wait_for_end else 0)
            self._apply_stations(rec.value for records in batch.values() for rec in records)
            if all(consumer.position(tp) >= offset for tp, offset in end.items()):
                return

    def _apply_stations(self, values: Iterable[bytes]) -> None:
        stations: list[Station] = []
        for value in values:
            try:
                stations.append(station_from_json(value))
            except InvalidStation as err:
                log.warning("station record skipped: %s", err)
        if stations:
            self.networks.update(stations)
            self.metrics.stations_known.set(len(self.networks))
            log.info("station metadata: %d stations", len(self.networks))

    def _close(self) -> None:
        try:
            if self._released:
                self._commit()
        finally:
            for client in (self._consumer, self._stations, self._producer):
                if client is not None:
                    client.close()
