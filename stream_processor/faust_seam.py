"""The one seam between the worker and the internals of Faust and aiokafka.

Every use of a private attribute or method of Faust (faust-streaming 0.15.3) or aiokafka (0.14),
both pinned in pyproject.toml, lives in this module; tests/unit/test_faust_seam.py checks that each
one exists with the shape relied on, and that no other module reaches a private attribute of an
object it does not own. An upgrade fails there, in one place.

What the worker needs from the inside, and why:

* :class:`Consumer` (a subclass of Faust's aiokafka consumer): Faust's fetch loop
  (``Consumer._drain_messages``) hands every message to the conductor through
  ``Service.wait_first(deliver(message), suspend_flow.wait())``: four tasks (the delivery, the
  suspend event, the consumer's stopped and crashed events) are created, raced and three of them
  cancelled, for each message. With readings of a few hundred bytes that was about a fifth of the
  worker's event-loop thread, the thread that limits its throughput. :class:`Consumer` runs the same
  loop but awaits the delivery directly while the flow is not suspended, the common case: the
  delivery normally completes without suspending (it only decodes and queues the message), and when
  it does wait (the agent's queue is full) the loop has nothing else to do. While the flow is
  suspended (a rebalance) it takes Faust's path, racing the delivery against the suspension. A
  delivery blocked on a full queue when a rebalance starts completes once the rebalance clears the
  queues (synchronously, right after suspending the flow) and the loop then takes the suspended
  path; Faust's own loop leaves that delivery's queue put running too. Stopping the fetcher cancels
  the loop either way. Everything else is kept as in Faust: read offsets, gap tracking for
  acknowledgements, ``broker_commit_every``, yielding every 100 messages, the fetching flag and the
  stop conditions. Two fixes: a fetch that returns after the flow stopped is given back
  (:meth:`Consumer._getmany`; Faust drops it, and a partition with no committed offset, a
  changelog partition always, lost its records: a table recovery that never ended); and after
  :meth:`Consumer.seek` (and after Faust's seek of every partition to its committed offset), the
  records of that partition still to come from the fetch made before it are dropped (they are not
  at the new position; Faust delivered them, and their read offsets made it drop the re-read: seen
  as a worker that stopped forecasting after re-reading a hole, see stream_processor.offsets).
* The fetch wait (``App(fetch_max_wait_ms=...)``): Faust fixes it at 1.5 s, how long a broker may
  hold a fetch open while waiting for data (see stream_processor.app.FETCH_MAX_WAIT_MS).
* :class:`QuietMonitor` skips Faust's statistics per message and per stream event (only Faust's own
  ``/stats`` pages read them; the worker's metrics are its Prometheus ones).
* :class:`RecoveredTable` (a Faust table): a recovery that reads a key's value from several changelog
  partitions keeps the one a rule prefers (``keep``; the worker's: the newer of a station's states,
  pm25.window.supersedes), where Faust's memory store keeps whichever partition it read last. It
  overrides the table's public ``apply_changelog_batch`` and reads the values held through the
  store's mapping interface.
* :func:`aiokafka_producer`: the aiokafka producer under Faust's, for record-batch sends
  (stream_processor.sending).
* :func:`broker_committed_offset`: a partition's committed offset asked of the broker through the
  consumer's thread (Faust records it only after its seek to the committed offsets; the offset
  guard needs it for a partition's first message, which can come before).
* :func:`committed_offsets` and :func:`withhold_ack`: the consumer's committed offsets (the offset
  guard compares every message with them) and keeping a dropped message out of the commits.
* :func:`consumer_state`: what the consumer holds, for the ``kill -USR1`` diagnostics only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from time import monotonic
from typing import Any, ClassVar, cast

import faust
from aiokafka import TopicPartition
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT

__all__ = [
    "App",
    "Consumer",
    "QuietMonitor",
    "RecoveredTable",
    "aiokafka_producer",
    "broker_committed_offset",
    "committed_offsets",
    "consumer_state",
    "recovered_table",
    "withhold_ack",
]

log = logging.getLogger(__name__)

#: Like Faust's loop: give other tasks a turn after this many messages from one fetch.
YIELD_EVERY = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:  # read by aiokafka when the consumer starts
            consumer._fetch_max_wait_ms = wait_ms
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeks = 0  # seeks so far
        self._seeked_at: dict[TP, int] = {}  # partition -> the number of its latest seek
        self._dropped: dict[TP, int] = {}  # partition -> the lowest offset dropped as stale since its latest seek

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        """One fetch, as Faust's. A fetch that returns after the flow stopped (a rebalance began
        while it waited) is dropped by Faust's ``getmany``, which then seeks every partition to
        its committed offset; aiokafka seeks only partitions with a committed offset above 0, so
        the others (a changelog partition always) had their records taken and never delivered.
        Seen as a table recovery waiting for minutes for changelog records the consumer had
        already read past ("No event received for active tp"): the set of partitions a fetch may
        return is Faust's live set, which the new assignment fills with the changelog partitions
        while the flow is still stopped. Such a fetch is given back: each partition is sought to
        the first record it returned, and nothing is handed to Faust."""
        records = await super()._getmany(active_partitions=active_partitions, timeout=timeout)
        if records and not self.flow_active:
            back = {tp: batch[0].offset for tp, batch in records.items() if batch}
            log.info("fetch returned after the flow stopped: %d partitions read again from %s", len(back), back)
            for tp, offset in back.items():
                await self.seek(tp, offset)
            return {}
        return records

    async def seek(self, partition: TP, offset: int) -> None:
        self._mark_sought({partition})
        await super().seek(partition, offset)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Every assigned partition back to its committed offset (Faust's recovery does this when a
        worker starts or partitions are assigned): what is still to come of the current fetch is
        stale, as after :meth:`seek`. Delivered, it moved the read offsets on, and the re-read
        from the committed offsets was then dropped.

        aiokafka seeks only the partitions with a committed offset above 0; the others keep their
        position, after the records of the current fetch. Those records were not stale, and the
        ones dropped meanwhile would be lost without a trace: the offset guard cannot see a hole
        before a partition's first message when it has no committed offset to compare with (the
        likely cause of a kill -9 test failure on the embedded broker: a worker killed before its
        first commit was restarted, and its successor missed about 1 850 of 4 320 forecasts). So
        such a partition is unmarked, and sought back to the first record dropped, if any."""
        assigned = set(self.assignment())
        before = {tp: self._seeked_at.get(tp, 0) for tp in assigned}
        self._mark_sought(assigned)
        committed = await super().seek_to_committed()
        for tp in assigned:
            if committed.get(tp):  # sought: what was dropped is read again from there
                continue
            self._seeked_at[tp] = before[tp]
            dropped = self._dropped.pop(tp, None)
            if dropped is not None:
                log.info("partition %s: no committed offset; reading again from %d (dropped as stale)", tp, dropped)
                await self.seek(tp, dropped)
        return committed

    def _mark_sought(self, partitions: set[TP]) -> None:
        self._seeks += 1
        for tp in partitions:
            self._seeked_at[tp] = self._seeks
            self._dropped.pop(tp, None)

    def _stale(self, tp: TP, fetched_after: int) -> bool:
        """Whether a record of ``tp`` from a fetch made after ``fetched_after`` seeks was fetched
        before a later seek of ``tp``: it is not at the partition's new position."""
        return self._seeked_at.get(tp, 0) > fetched_after

    def _drop_stale(self, tp: TP, offset: int) -> None:
        """A stale record is not delivered; the lowest such offset is kept (see seek_to_committed)."""
        if offset < self._dropped.get(tp, offset + 1):
            self._dropped[tp] = offset

    async def _drain_messages(self, fetcher: Any) -> None:  # the loop itself runs against a broker
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow.is_set
        consumer_stopped = cast(Any, self)._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        since_yield = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await self.sleep(0)  # getmany can return at once many times in a row
                if self.should_stop:
                    continue
                fetched_after: int | None = None
                async for tp, message in records:
                    # getmany fetches once, before its first record: a partition sought after that
                    # has the rest of its records in this fetch stale. Faust delivers them, and
                    # their read offsets then make it drop the re-read from the seek's offset.
                    if fetched_after is None:
                        fetched_after = self._seeks
                    elif self._stale(tp, fetched_after):
                        self._drop_stale(tp, message.offset)
                        continue
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    await self._deliver(tp, message, callback, read_offset, acks_enabled_for, suspended)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(
        self, tp: TP, message: Any, callback: Any, read_offset: Any, acks_enabled_for: Any, suspended: Any
    ) -> None:
        offset = message.offset
        last = read_offset[tp]
        if last is not None and offset < last:
            return  # read before (a seek back): Faust drops it the same way
        if last and offset - last > 1 and acks_enabled_for(message.topic):
            await self._add_gap(tp, last + 1, offset)  # offsets with no message must not block commits
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()
        if suspended():
            await self.wait_first(callback(message), self.suspend_flow.wait())
        else:
            await callback(message)
        read_offset[tp] = offset


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[Any] = Consumer


class QuietMonitor(Monitor):
    """Faust's monitor without the bookkeeping it does for every message and stream event (counters,
    timestamps and a dict per event: a few microseconds each, on the thread that limits the
    worker). Commits, sends, rebalances and table statistics are kept."""

    def on_message_in(self, tp: TP, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: Any, event: Any) -> None:
        # kept: Faust's liveness check (Consumer.verify_event_path) reads it, and without it logs
        # "Stream has not started processing" for a healthy worker after stream_processing_timeout
        self.stream_inbound_time[tp] = monotonic()

    def on_stream_event_out(self, tp: TP, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Any) -> None:
        pass


class RecoveredTable(faust.Table):
    """A table whose changelog recovery applies a value only where ``keep(incoming, held)`` says so
    (``held``: the value the table holds for its key, or an earlier one of the same batch)."""

    keep: Callable[[Any, Any], bool] = staticmethod(lambda incoming, held: True)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        super().apply_changelog_batch(self._kept(batch))

    def _kept(self, batch: Iterable[Any]) -> Iterator[Any]:
        held: dict[Any, Any] = {}  # values of this batch applied so far (the store sees them after)
        data = self.data
        skipped = 0
        for event in batch:
            key, value = event.key, event.value
            if self.keep(value, held[key] if key in held else data.get(key)):
                held[key] = value
                yield event
            else:
                skipped += 1
        if skipped:
            log.info("table %s: %d older values read back at recovery were not applied", self.name, skipped)


def recovered_table(app: faust.App, name: str, keep: Callable[[Any, Any], bool], **options: Any) -> RecoveredTable:
    """``app.Table(name, **options)``, as a :class:`RecoveredTable` applying ``keep`` at recovery."""
    table = RecoveredTable(app, name=name, beacon=app.tables.beacon, **options)
    table.keep = keep
    return cast(RecoveredTable, app.tables.add(table))


class App(faust.App):
    """A Faust app whose consumer is :class:`Consumer`; ``fetch_max_wait_ms`` replaces Faust's
    fixed fetch wait for the worker's consumer (None keeps it)."""

    def __init__(self, id: str, *, fetch_max_wait_ms: int | None = None, **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(id, **{"Monitor": QuietMonitor, **options})

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)


def aiokafka_producer(app: faust.App) -> Any:
    """The started aiokafka producer under Faust's (started with the app): for batch sends."""
    return cast(Any, app.producer)._ensure_producer()


def committed_offsets(app: faust.App) -> Mapping[TP, int | None]:
    """Each partition's committed offset as the consumer knows it: where it was sought to at its
    assignment until the worker's first commit of it. Faust keeps 0 (and none yet) as None."""
    return cast(Mapping[TP, "int | None"], cast(Any, app.consumer)._committed_offset)


async def broker_committed_offset(app: faust.App, tp: TP) -> int | None:
    """The group's committed offset of ``tp`` as the broker has it now (None: nothing committed).
    Faust's own record of it (:func:`committed_offsets`) is filled only once its seek to the
    committed offsets is done, and keeps 0 as None."""
    thread = cast(Any, app.consumer)._thread
    offset = await thread.call_thread(thread._ensure_consumer().committed, TopicPartition(tp.topic, tp.partition))
    return None if offset is None else int(offset)


def withhold_ack(app: faust.App, event: Any) -> None:
    """Keep a dropped message out of the committed offsets (take_events acknowledges every event
    it yielded): marked as already acknowledged, the consumer's ack skips it."""
    event.message.acked = True
    cast(Any, app.consumer)._unacked_messages.discard(event.message)


def consumer_state(app: faust.App, topic: Any) -> dict[str, Any]:
    """What the consumer holds (diagnostics only: any failure is reported, never raised)."""
    try:
        consumer = cast(Any, app.consumer)
        fields = ("_active_partitions", "_buffered_partitions", "_paused_partitions", "flow_active")
        state: dict[str, Any] = {f: getattr(consumer, f, "?") for f in fields}
        state["assignment"] = consumer.assignment()
        state["in_recovery"] = app.in_recovery
        recovery = cast(Any, app.tables).recovery  # each changelog partition recovered: (applied, highwater)
        state["recovery"] = {
            str(tp): (recovery.active_offsets.get(tp), recovery.active_highwaters.get(tp)) for tp in recovery.active_tps
        }
        queue = topic.queue
        state["queue"] = (queue.qsize(), queue.maxsize)
        client = consumer._thread._ensure_consumer()
        state["positions"] = {
            str(tp): (st.position, st.paused)
            for tp, st in client._subscription.subscription.assignment._tp_state.items()
        }
    except Exception as err:  # any internal change: report it, never raise
        state = {"unavailable": repr(err)}
    return state
