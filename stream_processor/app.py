"""The Faust worker: readings in, forecasts out, dead letters for everything else.

One agent consumes ``pm25.readings`` (raw bytes, keyed by station) in micro-batches
(``take_events``), keeps each station's event-time window in a table (one compact bytes value,
one write per reading), runs one batched ONNX inference per micro-batch and publishes the
forecasts keyed by station. Processing is at-least-once; outputs are deterministic, so a replay
republishes identical bytes. A timer watches the model store and hot-swaps a new production
bundle after verifying it. HTTP: ``/health`` (liveness), ``/ready`` (after table recovery),
``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.types import TP, EventT, StreamT

from model_store import BundleError, default_store, load_production, production_version
from pm25.embedded import CHANGELOG_END_KEY, WORKER_FETCH_MAX_WAIT_MS, faust_overrides
from pm25.schema import Reading, own_size
from pm25.settings import Settings
from pm25.window import StationWindow, supersedes
from stream_processor.delivery import DeliveryCore, Input, Outputs
from stream_processor.engine import Engine
from stream_processor.faust_seam import (
    App,
    Consumer,
    aiokafka_producer,
    broker_committed_offset,
    committed_offsets,
    consumer_state,
    recovered_table,
    withhold_ack,
)
from stream_processor.inference import OnnxForecaster
from stream_processor.metrics import WorkerMetrics
from stream_processor.networks import Networks
from stream_processor.offsets import OffsetGuard, TailWatch, Verdict
from stream_processor.partitions import ACTIVE_S, BEHIND_MAX_S, PartitionActivity, StuckPartitions
from stream_processor.processor import DeadLetter, Processor
from stream_processor.sending import BatchSender
from stream_processor.stations_feed import follow_stations

__all__ = ["BATCH_MAX", "CHECKPOINT_S", "TAKE_WITHIN_S", "Worker"]

log = logging.getLogger(__name__)

#: Micro-batches are self-clocked: a batch starts as soon as the previous batch's graph has run
#: (the inference thread is free) and takes every event that arrived meanwhile, up to BATCH_MAX.
#: An idle worker so starts on a reading at once, and batches grow only while the worker is busy:
#: under load they are as large as the work in progress lets them be, which spreads the per-batch
#: costs (graph calls, broker round trips) over many readings. Faust's take_events hands over what
#: it has buffered every TAKE_WITHIN_S. 1536 (from 18:59Z on 2026-12-04) wrote fewer station states
#: per reading while every batch saved its states; since the checkpoints (CHECKPOINT_S) 1024 and
#: 1536 give the same throughput and 1024 a peak RSS about 30 MB lower on the embedded broker
#: (docs/benchmarks.md, "The worker's settings").
BATCH_MAX = 1024
TAKE_WITHIN_S = 0.005
#: At most this long between two checkpoints while batches follow each other (an idle worker
#: saves at once): each station's state is written once per checkpoint, not once per batch
#: (stream_processor.delivery). Under load a state then covers several batches' readings; a crash
#: replays at most about this long of readings. Faust commits every 2.8 s.
CHECKPOINT_S = 2.0
#: Batches between intake and release at once (computing or waiting for the broker's acks): more
#: costs memory without adding throughput (measurements: docs/benchmarks.md, "The worker's settings").
MAX_IN_FLIGHT = 2
#: Bytes fetched per input partition at a time (Kafka's default is 1 MB): about 1000 readings, and a
#: bound on what a backlog holds in memory before the worker takes it.
FETCH_BYTES_PER_PARTITION = 256 * 1024
#: Bytes of one record batch the worker produces (one per topic partition; a larger message gets a
#: batch of its own). aiokafka puts one batch of every ready partition in a produce request and
#: copies them while encoding it, so a micro-batch's forecasts and states (about 12 KB a reading)
#: made requests of several MB held several times over for a moment: with 1 MB batches the peak
#: RSS was 13-18 MB higher (medians, both brokers) at the same throughput (docs/benchmarks.md).
PRODUCE_BATCH_BYTES = 256 * 1024
#: How long the broker may hold the worker's fetch open waiting for data (Faust fixes 1 500 ms).
#: aiokafka leaves out of a fetch every partition it still holds unconsumed records of (or that
#: flow control paused), and sends no other fetch to that broker until the fetch returns: after a
#: burst of readings the busy partitions were left out, the fetch waited the full 1.5 s on the
#: others, and readings queued behind it (docs/benchmarks.md, "The worker's settings"). An idle worker
#: sends about 50 small fetches a second instead of one.
FETCH_MAX_WAIT_MS = 20
MODEL_POLL_S = 2.0
#: How often readings held back, or a watermark held by partitions behind, are looked at again
#: when no new event arrives.
HELD_RETRY_S = 0.05
#: How often the worker checks that it can reach a broker (for /ready and its log).
BROKER_CHECK_S = 2.0
#: How often the input partitions are checked for a hole at their end (see TailWatch).
TAIL_CHECK_S = 1.0
#: How often the input lag gauge is updated between batches (each batch updates it too).
LAG_CHECK_S = 5.0
#: The cyclic garbage collector's young-generation threshold while the agent runs (Python's default
#: is 700 allocations). The worker allocates many short-lived containers per reading, nearly all
#: freed by reference counting; the collections cost the event loop about a tenth as much with the
#: start-up objects frozen and this threshold (docs/benchmarks.md, "The worker's settings").
GC_YOUNG_THRESHOLD = 20_000


def _faust_credentials(settings: Settings) -> dict[str, Any]:
    if settings.security_protocol == "PLAINTEXT":
        return {}
    import ssl

    ctx = ssl.create_default_context(cafile=settings.ssl_cafile) if "SSL" in settings.security_protocol else None
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_username is not None and settings.sasl_password is not None
        return {
            "broker_credentials": faust.SASLCredentials(
                username=settings.sasl_username,
                password=settings.sasl_password.reveal(),
                mechanism=settings.sasl_mechanism or "PLAIN",
                ssl_context=ctx,
            )
        }
    return {"broker_credentials": faust.SSLCredentials(ctx)}


class Worker:
    """Builds the Faust app around a Processor; everything is reachable for tests."""

    def __init__(self, settings: Settings, *, copartitioned: bool = False) -> None:
        self.settings = settings
        # forecasts go to the partition of their reading when both topics have the same count
        # (saves hashing every key in Python); otherwise the producer partitions by key
        self.copartitioned = copartitioned
        self.store = settings.model_store or default_store()
        self.metrics = WorkerMetrics()
        bundle = load_production(self.store)
        self._bundle_key = (bundle.version, bundle.manifest_sha256)
        self.engine = Engine(
            OnnxForecaster(bundle),
            lateness_hours=settings.lateness_hours,
            buffer_hours=settings.buffer_hours,
            networks=Networks(lateness_hours=settings.network_lateness_hours),
        )
        #: set once the station metadata topic was read to its end (the agent waits for it)
        self.stations_loaded = asyncio.Event()
        self.metrics.set_model(bundle.version)
        self.processor = Processor(self.engine, self.metrics, partitions=settings.partitions)
        self.offsets = OffsetGuard()
        self._tails = TailWatch()
        self._stream: faust.Stream | None = None
        self._waiting = True  # no micro-batch is being taken in
        self.broker_ok = True  # a broker answered the last check (see _watch_broker)
        self._queue: deque[EventT] = deque()  # events taken from Faust, not yet in a batch
        #: readings a batch held back (a partition too far ahead of another; DeliveryCore.intake)
        self._held: list[tuple[Input, Reading]] = []
        self._activity = PartitionActivity(ACTIVE_S)  # the input partitions counted as active
        self._stuck = StuckPartitions(BEHIND_MAX_S)  # partitions behind that stopped moving
        self._queued = asyncio.Event()  # set while the queue holds events
        self._room = asyncio.Event()  # set while the queue holds fewer than BATCH_MAX events
        self._taken = 0  # input messages taken in so far
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pm25-inference")
        conf: dict[str, Any] = {
            "broker": f"kafka://{settings.bootstrap_servers}",
            "store": "memory://",
            "topic_partitions": settings.partitions,
            "web_port": settings.web_port,
            "web_host": "0.0.0.0",  # noqa: S104 - health checks come from outside the container
            "producer_linger": 0.005,
            "consumer_max_fetch_size": FETCH_BYTES_PER_PARTITION,
            "producer_max_batch_size": PRODUCE_BATCH_BYTES,
            "consumer_auto_offset_reset": "earliest",
            "topic_allow_declare": True,
            "table_standby_replicas": 0,  # no use with the memory store, and a hang risk: docs/regional.md
            "stream_processing_timeout": settings.stream_timeout_s,
            **_faust_credentials(settings),
        }
        conf["fetch_max_wait_ms"] = FETCH_MAX_WAIT_MS
        if settings.embedded_broker:
            conf.update(faust_overrides())
            conf["fetch_max_wait_ms"] = WORKER_FETCH_MAX_WAIT_MS
        self.app = App(settings.app_id, **conf)  # faust.App with a cheaper fetch loop (see .consumer)
        raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.readings = self.app.topic(settings.readings_topic, **raw)
        self.forecasts = self.app.topic(settings.forecasts_topic, **raw)
        self.dlq = self.app.topic(settings.dlq_topic, **raw)
        self.scores = self.app.topic(settings.scores_topic, **raw)
        self._changelog_keys: dict[str, bytes] = {}
        self._partitions: dict[tuple[str, bytes], int] = {}
        self.windows = recovered_table(  # a station's newer state wins at recovery (pm25.window.supersedes)
            self.app, "station-windows", supersedes, key_type=str, value_type=bytes, partitions=settings.partitions
        )
        self.table = cast(MutableMapping[str, bytes], self.windows.data)  # the delivery core's view (Port.table)
        self.core = DeliveryCore(
            self.processor, self, self._inference, max_in_flight=MAX_IN_FLIGHT, checkpoint_s=CHECKPOINT_S
        )
        self.app.agent(self.readings, name="forecast")(self._agent)
        self.app.timer(MODEL_POLL_S)(self._watch_model)
        self.app.timer(TAIL_CHECK_S)(self._watch_tails)
        self.app.timer(LAG_CHECK_S)(self._measure_lag)
        self.app.timer(BROKER_CHECK_S)(self._watch_broker)
        self.app.task(self._install_task_dump)
        self.app.task(self._follow_stations)
        self.app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        self.app.on_partitions_assigned.connect(cast(Any, self._on_assigned))
        self._pages()

    # -- the agent -------------------------------------------------------------------------
    async def _agent(self, stream: StreamT) -> None:
        """Takes events from Faust into the queue; :meth:`_dispatch` cuts the micro-batches. The
        queue is bounded: while it holds a full batch, Faust's buffer (and then the consumer) waits."""
        # take_events lives on the concrete Stream, not on StreamT
        concrete = self._stream = cast(faust.Stream, stream)
        _tune_gc()
        self._room.set()
        dispatcher = asyncio.ensure_future(self._dispatch())
        dispatcher.add_done_callback(_log_failure)
        try:
            async for events in concrete.take_events(BATCH_MAX, within=TAKE_WITHIN_S):
                for event in events:  # take_events acknowledges them when this loop comes back:
                    event.message.incref()  # held until released (or withheld) in handle_batch's delivery
                self._queue.extend(events)
                self._queued.set()
                if len(self._queue) >= BATCH_MAX:
                    self._room.clear()
                    room = asyncio.ensure_future(self._room.wait())
                    await asyncio.wait([dispatcher, room], return_when=asyncio.FIRST_COMPLETED)
                    room.cancel()
                if dispatcher.done():
                    dispatcher.result()  # a failed batch fails the agent (Faust restarts or stops it)
        finally:
            dispatcher.cancel()

    async def _dispatch(self) -> None:
        """Cut micro-batches from the queue: the next one once the previous batch's graph has run."""
        queue = self._queue
        await self.stations_loaded.wait()  # the first forecasts already see the networks
        while True:
            if self._held or self.processor.lagging or self.processor.active or self.core.unsaved:
                # readings held back, or a watermark held by partitions that were behind: look
                # again soon even if nothing arrives (their messages may all be in by now); inputs
                # waiting for a checkpoint: an empty batch makes one once the core is idle
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), HELD_RETRY_S)
            else:
                await self._queued.wait()
            self._give_back_held()
            graph = self.core.graph
            if graph is not None and not graph.done():
                await asyncio.wait([graph])  # its failure is raised by the batch's own stages
            events = [queue.popleft() for _ in range(min(len(queue), BATCH_MAX))]
            if not queue:
                self._queued.clear()
            self._room.set()
            idle_checkpoint = self.core.unsaved and not self.core.busy()
            if not (events or self._held or self.processor.lagging or self.processor.active or idle_checkpoint):
                continue
            self._waiting = False
            await self.handle_batch(events)
            self._waiting = not queue

    def _give_back_held(self) -> None:
        """A rebalance began (or the worker stops): Faust waits for every message taken to be
        acknowledged before it revokes partitions (or stops), and the partitions held back cannot
        catch up while the consumer is paused. The held readings are given back unacknowledged
        instead: after the rebalance Faust seeks every partition to its committed offset, so they
        are read again (applied readings among them are recognised as replays). Only while the flow
        is stopped: Faust counts a rebalance on until its recovery ends, after that seek, and
        readings given back then would never be read again (most likely how a two-worker kill -9
        test lost 660 readings of a taken-over network, 2026-12-03). Should that order ever change, the
        offset guard is rewound to the first reading given back (OffsetGuard.rewind): the partition
        is read again from there."""
        if not self._held or cast(Consumer, self.app.consumer).flow_active:
            return
        if not (self.app.rebalancing or self.app.should_stop):
            return  # no revocation nor shutdown under way (their wait for acknowledgements stops the flow first)
        why = "rebalance" if self.app.rebalancing else "stop"
        log.info("%s: %d readings held back are given back to be read again", why, len(self._held))
        first: dict[int, int] = {}
        for item, _ in self._held:
            withhold_ack(self.app, item.handle)
            first[item.partition] = min(item.offset, first.get(item.partition, item.offset))
        for partition, offset in first.items():  # read again even if the rebalance's seek is past
            self.offsets.rewind(partition, offset)
        self._held = []

    async def handle_batch(self, events: Sequence[EventT]) -> None:
        """One micro-batch: the offset guard, then the delivery core (stream_processor.delivery:
        intake now, delivery pipelined; an input's offset is committed only once its outputs and
        its station's state are acknowledged by the broker). Faust's own table write
        (``table[key] = value``) cannot give that order: it hands the changelog record to a buffer
        that its commit does not wait for, so a kill -9 could commit offsets whose states were
        never written; the worker writes the changelog itself (:meth:`send_states`).

        Messages the consumer skipped (a Faust race at recovery, see stream_processor.offsets) are
        read again: the partition is sought back and what arrived past the hole is dropped unacked.
        """
        inputs: list[Input] = []
        seeks: dict[int, int] = {}
        # before this batch: the partitions it reads from, and those with readings held back, lag;
        # those that delivered lately are active (a partition may look caught up while messages
        # produced before another partition's are still on their way)
        now = time.monotonic()
        self._activity.delivered({event.message.partition for event in events}, now)
        unread = self._lagging_partitions()
        lagging = unread | {item.partition for item, _ in self._held}
        # only a partition with messages not taken in can be stuck (one whose readings are held
        # back is waiting for the others)
        stuck = self._stuck.stuck({p: self.offsets.expected(p) for p in unread}, now)
        if stuck:
            # no progress from them for this long: forecast rather than wait (the final forecasts
            # of the hours they delay may then differ from the backtest's)
            fresh = stuck - self._stuck.reported
            if fresh and not self._recovering():  # (a recovery pauses partitions on purpose)
                log.warning(
                    "partitions %s behind and not moving for over %.0f s (%d readings held back): not waiting",
                    sorted(stuck),
                    BEHIND_MAX_S,
                    len(self._held),
                )
                self.metrics.held_released.inc()
                await self._kick(fresh)
                self._stuck.reported |= fresh
            lagging -= stuck
        self.processor.lagging = lagging
        self.processor.active = self._activity.active(self._input_partitions(), now)
        committed = self._committed_offsets()
        for event in events:
            msg = event.message
            start = committed.get(msg.tp)
            if start is None and self.offsets.expected(msg.partition) is None:
                start = await self._first_offset(msg.tp)
            verdict = self.offsets.check(msg.partition, msg.offset, start)
            if verdict is Verdict.PROCESS:
                inputs.append(Input(event, msg.partition, msg.offset, msg.key, event.value, msg.timestamp))
                continue
            withhold_ack(self.app, event)  # it will be read again
            if verdict is Verdict.SEEK:
                seeks[msg.partition] = self.offsets.seek_target(msg.partition)
        batch = self.core.intake(inputs, self.engine.model, self._held)
        self._held = batch.deferred  # unacknowledged until a later batch applies them
        self._taken += len(events)
        if events:
            self.metrics.batch_size.observe(len(events))
        for partition, offset in seeks.items():
            log.warning("partition %d: the consumer skipped offsets from %d; reading them again", partition, offset)
            self.metrics.input_seeks.inc()
            await self.app.consumer.seek(TP(self.settings.readings_topic, partition), offset)
        await self.core.submit(batch)

    async def _kick(self, partitions: set[int]) -> None:
        """Input partitions behind that stopped moving: log what the consumer holds, let Faust's
        flow control fetch them again (it can leave a partition out of its fetches: paused in a
        recovery, or "buffered" when a stream's buffer filled), and read them again from the next
        offset expected. Once per stall. Why: a restarted worker (kill -9 test, embedded broker,
        2026-12-03) once read the last messages of every partition, delivered none of them, and
        after the end-of-partition check sought them back fetched nothing more for three minutes;
        the cause was not found (the log had no consumer state)."""
        if self._recovering():
            return  # a recovery pauses partitions on purpose
        log.warning("consumer state: %s", consumer_state(self.app, self.readings))
        consumer = self.app.consumer
        topic = self.settings.readings_topic
        tps = {tp for tp in consumer.assignment() if tp.topic == topic and tp.partition in partitions}
        consumer.resume_partitions(tps)
        for tp in sorted(tps):
            expected = self.offsets.expected(tp.partition)
            if expected is not None:
                self.metrics.input_seeks.inc()
                await consumer.seek(tp, expected)

    def _recovering(self) -> bool:
        return bool(self.app.rebalancing or self.app.in_recovery)

    def _input_partitions(self) -> set[int]:
        topic = self.settings.readings_topic
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    def _lagging_partitions(self) -> set[int]:
        """The input partitions with messages not taken into a batch yet (or not known to have
        none): the networks' watermark waits for them (Processor.watermark). Sets the input lag
        gauge: the messages known to be waiting (each partition's high watermark, as of the
        consumer's last fetch, less the next offset to take)."""
        consumer = self.app.consumer
        committed = self._committed_offsets()
        out = set()
        waiting = 0
        for tp in consumer.assignment():
            if tp.topic != self.settings.readings_topic:
                continue
            expected = self.offsets.expected(tp.partition)
            if expected is None:  # nothing delivered yet: from where the group left it
                expected = committed.get(tp) or 0
            high = consumer.highwater(tp)
            if high is None or expected < high:
                out.add(tp.partition)
                waiting += high - expected if high is not None else 0
        self.metrics.input_lag.set(waiting)
        return out

    async def _measure_lag(self) -> None:
        """The input lag gauge between batches too (a worker that takes nothing in runs no batch)."""
        if self._stream is not None:
            self._lagging_partitions()

    # -- the delivery core's port (stream_processor.delivery.Port) ----------------------------
    async def send_outputs(self, outputs: Outputs) -> list[Awaitable[Any]]:
        delivered = [await self._dead_letter(item.handle, letter) for item, letter in outputs.dead]
        sender = BatchSender(self._aiokafka_producer())
        topic = self.settings.forecasts_topic
        pending = outputs.forecasts  # taken off the list one by one (in order): each message is freed
        pending.reverse()  # once its producer batch holds a copy, so a batch is not in memory twice
        while pending:
            key, value, input_partition = pending.pop()
            partition = input_partition if self.copartitioned else await self._partition(topic, key)
            sender.add(topic, partition, key, value)
        scores_topic = self.settings.scores_topic
        for key, value in outputs.scores:
            sender.add(scores_topic, await self._partition(scores_topic, key), key, value)
        return [*delivered, *await sender.submit()]

    async def send_states(self, states: list[tuple[str, int, bytes]]) -> list[Awaitable[Any]]:
        changelog = self.windows.changelog_topic.get_topic_name()
        sender = BatchSender(self._aiokafka_producer())
        partitions = set()
        states.reverse()  # taken off the list one by one, in order: each state is freed once its
        while states:  # producer batch holds a copy (a batch's states are about 10 KB a station)
            sid, partition, state = states.pop()
            sender.add(changelog, partition, self._changelog_key(sid), state)
            partitions.add(partition)
        sent: list[Awaitable[Any]] = list(await sender.submit())
        if self.settings.embedded_broker and partitions:
            await asyncio.gather(*sent)
            await self._end_changelog_batches(partitions)
        return sent

    def release(self, inputs: list[Input]) -> None:
        consumer, sensors = self.app.consumer, self.app.sensors
        for item in inputs:
            msg = item.handle.message
            if msg.ack(consumer):
                sensors.on_message_out(msg.tp, msg.offset, msg)

    async def _end_changelog_batches(self, partitions: set[int]) -> None:
        """Embedded broker only (see pm25.embedded.CHANGELOG_END_KEY): one record alone in the last
        batch of each changelog partition written, so that table recovery reads every state."""
        name = self.windows.changelog_topic.get_topic_name()
        key = self._changelog_key(CHANGELOG_END_KEY)
        producer = self.app.producer
        await asyncio.gather(*[await producer.send(name, key, b"", p, None, None) for p in partitions])

    def _aiokafka_producer(self) -> Any:
        return aiokafka_producer(self.app)

    async def _partition(self, topic: str, key: bytes) -> int:
        """The partition the producer's default partitioner gives ``key`` (cached per key)."""
        cached = self._partitions.get((topic, key))
        if cached is None:
            await self._aiokafka_producer().partitions_for(topic)  # the topic's metadata, once
            cached = self._partitions[(topic, key)] = self.app.producer.key_partition(topic, key).partition
        return cached

    async def _on_assigned(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned: set[TP] = args[0] if args else kwargs.get("assigned", set())
        held = {tp.partition for tp in assigned if tp.topic == self.settings.readings_topic}
        self.metrics.input_partitions.set(len(held))
        self.processor.split.hold(held)  # networks keyed by station that other workers share

    async def _on_revoked(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        if self._queue:  # not taken in yet: the partitions' next owner reads them again
            kept = [e for e in self._queue if e.message.tp not in revoked]
            self._queue.clear()
            self._queue.extend(kept)
            if not kept:
                self._queued.clear()
            self._room.set()
        await self.core.drain()  # what is already taken in is delivered before the partitions go
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.readings_topic}
        self._held = [(item, r) for item, r in self._held if item.partition not in partitions]  # never acked
        self.core.forget(partitions)  # (Faust waited for the acks, so this is empty unless that timed out)
        self._activity.forget(partitions)
        # the adaptations go back into the table beside their windows: the table is what a
        # station's next owner (this worker again, or another after the changelog) starts from
        store = self.windows.data
        for sid, adaptation in self.processor.forget().items():
            window = store.get(sid)
            if window is not None:
                store[sid] = StationWindow.split(window)[0].to_bytes() + adaptation
        self.offsets.forget(partitions)
        self._tails.forget(partitions)

    async def _watch_tails(self) -> None:
        """Seek back an input partition whose last messages the consumer read but never delivered
        (a hole at its end: nothing arrives after it for the offset guard to notice, see
        stream_processor.offsets.TailWatch)."""
        consumer = cast(Consumer, self.app.consumer)
        stream = self._stream
        if stream is None or not self.ready() or not consumer.flow_active:
            return
        idle = self._waiting and not self._queue and cast(faust.Channel, stream.channel).empty()
        now = time.monotonic()
        for tp in consumer.assignment():
            if tp.topic != self.settings.readings_topic:
                continue
            expected = self.offsets.expected(tp.partition)
            try:
                if expected is None:  # nothing delivered since the assignment: from where it started
                    expected = await self._start_offset(tp)
                position = await consumer.position(tp)
            except KafkaError as err:  # e.g. revoked meanwhile: the next check sees the new assignment
                log.info("partition %d: not checked for a hole (%r)", tp.partition, err)
                continue
            if self._tails.lost(tp.partition, expected, position, taken=self._taken, idle=idle, now=now):
                log.warning(
                    "partition %d: the consumer read up to offset %s but delivered nothing from %d; reading them again",
                    tp.partition,
                    position,
                    expected,
                )
                self.metrics.input_seeks.inc()
                await consumer.seek(tp, expected)

    async def _watch_broker(self) -> None:
        """A worker that loses its broker keeps retrying (the clients do), says so once in its log
        and answers 503 on /ready until a broker answers again."""
        ok = await self.broker_reachable()
        if ok != self.broker_ok:
            if ok:
                log.info("broker reachable again at %s", self.settings.bootstrap_servers)
            else:
                log.warning("broker unreachable at %s; retrying", self.settings.bootstrap_servers)
        self.broker_ok = ok

    async def broker_reachable(self, timeout: float = 1.5) -> bool:
        """Whether the producer's client reaches a broker of the cluster now (it connects if needed)."""
        client = self._aiokafka_producer().client
        try:
            async with asyncio.timeout(timeout):
                for broker in client.cluster.brokers():
                    if await client.ready(broker.nodeId):
                        return True
        except (TimeoutError, KafkaError, OSError):
            return False
        return False

    def _committed_offsets(self) -> Mapping[TP, int | None]:
        return committed_offsets(self.app)

    async def _start_offset(self, tp: TP) -> int:
        """Where the consumer started ``tp`` at its assignment: the committed offset (Faust's
        record of it, or the broker's before Faust has one: Faust fills it after its seek to the
        committed offsets and keeps 0 as none), or the earliest offset when nothing was committed
        (the consumer resets to it)."""
        committed = self._committed_offsets().get(tp)
        if committed is not None:
            return int(committed)
        committed = await broker_committed_offset(self.app, tp)
        if committed:
            return committed
        return int((await self.app.consumer.earliest_offsets(tp))[tp])

    async def _first_offset(self, tp: TP) -> int | None:
        """:meth:`_start_offset` for the offset guard, which checks a partition's first message
        against it: without the broker's answer a hole before that message went unseen when nothing
        had been committed (a worker killed before its first commit, then restarted; Faust's
        recovery race delivers messages before its seek). None when the broker cannot be asked: the
        guard then takes the first message as the start."""
        try:
            return await self._start_offset(tp)
        except KafkaError as err:  # e.g. revoked meanwhile
            log.info("partition %d: start offset unknown (%r)", tp.partition, err)
            return None

    def _changelog_key(self, station_id: str) -> bytes:
        """The changelog key exactly as Faust's own table writes serialise it (recovery reads it)."""
        key = self._changelog_keys.get(station_id)
        if key is None:
            table = cast(Any, self.windows)
            key = table.changelog_topic.prepare_key(station_id, table.key_serializer)[0]
            key = self._changelog_keys[station_id] = own_size(key)  # Faust's JSON is orjson's
        return key

    async def _dead_letter(self, event: EventT, letter: DeadLetter) -> Awaitable[Any]:
        """Queue a dead letter; returns its delivery future."""
        msg = event.message
        headers: list[tuple[str, bytes]] = [
            ("pm25.reason", letter.reason.encode()),
            ("pm25.detail", letter.detail.encode()[:1000]),
            ("pm25.source.topic", str(msg.topic).encode()),
            ("pm25.source.partition", str(msg.partition).encode()),
            ("pm25.source.offset", str(msg.offset).encode()),
        ]
        original = msg.headers.items() if isinstance(msg.headers, Mapping) else (msg.headers or [])
        for k, v in original:  # keep the producer's own headers, except ours
            if not str(k).startswith("pm25."):
                headers.append((str(k), v if isinstance(v, bytes) else str(v).encode()))
        # The original bytes travel untouched (a too-large value is kept too: nothing is lost).
        producer = self.app.producer
        return await producer.send(self.settings.dlq_topic, msg.key, event.value, None, None, headers)

    async def _follow_stations(self) -> None:
        await follow_stations(self.settings, self._apply_stations, self.stations_loaded)

    def _apply_stations(self, stations: list[Any]) -> None:
        """New or changed metadata: applies from each station's next reading (between batches:
        the event loop runs no intake meanwhile)."""
        self.engine.networks.update(stations)
        self.metrics.stations_known.set(len(self.engine.networks))

    # -- diagnostics -------------------------------------------------------------------------
    async def _install_task_dump(self) -> None:
        """``kill -USR1 <pid>`` logs the stack of every asyncio task (what a stalled worker awaits)."""
        if hasattr(signal, "SIGUSR1"):
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._dump_state)

    def _dump_state(self) -> None:
        dump_tasks()
        state = consumer_state(self.app, self.readings)
        log.warning("consumer state: %s", state)

    # -- model hot swap --------------------------------------------------------------------
    async def _watch_model(self) -> None:
        try:
            key = production_version(self.store)
        except BundleError as err:
            log.warning("model store: %s; keeping %s", err, self.engine.model.version)
            return
        if key == self._bundle_key:
            return
        self._bundle_key = key  # try each new pointer once; a fixed bundle gets a new pointer
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(None, self._load_model)
            self.engine.check_model(model)
        except (BundleError, ValueError) as err:
            self.metrics.model_swaps.labels(result="refused").inc()
            log.error("model swap to %s refused: %s; %s keeps serving", key[0], err, self.engine.model.version)
            return
        old = self.engine.model.version
        self.engine.model = model  # atomic: batches run between awaits, never across this line
        self.metrics.set_model(model.version)
        self.metrics.model_swaps.labels(result="swapped").inc()
        log.info("model swapped: %s -> %s", old, model.version)

    def _load_model(self) -> OnnxForecaster:
        return OnnxForecaster(load_production(Path(self.store)))

    # -- HTTP ------------------------------------------------------------------------------
    def ready(self) -> bool:
        recovery = cast(Any, self.app.tables).recovery
        recovered = recovery.completed.is_set() and not recovery.in_recovery and not self.app.rebalancing
        return bool(recovered and self.stations_loaded.is_set())

    def _pages(self) -> None:
        worker = self

        @self.app.page("/health")
        async def health(view: Any, request: Any) -> Any:
            return view.json({"status": "alive", "model_version": worker.engine.model.version})

        @self.app.page("/ready")
        async def ready(view: Any, request: Any) -> Any:
            recovered, broker = worker.ready(), worker.broker_ok
            ok = recovered and broker
            return view.json({"ready": ok, "recovered": recovered, "broker": broker}, status=200 if ok else 503)

        @self.app.page("/metrics")
        async def metrics(view: Any, request: Any) -> Any:
            return view.text(worker.metrics.render().decode(), content_type="text/plain; version=0.0.4")


def _log_failure(task: asyncio.Future[Any]) -> None:
    """A failed batch fails the agent when it takes its next events; say so at once (the worker
    may be idle, with no next events)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("batch processing failed: %r", task.exception(), exc_info=task.exception())


#: glibc malloc arenas for the worker process (see limit_malloc_arenas).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX`` does, unless that variable is set: each
    thread that allocates (Faust's consumer thread, the inference thread, the producer's) otherwise
    gets its own arena, and memory freed by another thread stays in it. Measured with the
    1000-station benchmark: peak RSS about 8 MB lower on Kafka, 10-27 MB embedded (docs/benchmarks.md). Call it before
    threads start; True when applied (glibc only: elsewhere nothing is done)."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def _tune_gc() -> None:
    """Objects that exist when the agent starts (modules, the app, the model) live as long as the
    process: they are left out of every collection; young collections happen less often."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def dump_tasks() -> None:
    """Log every pending asyncio task with its whole await chain (coroutines and async generators)."""
    lines: list[str] = []
    tasks = asyncio.all_tasks()
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        for frame in _await_chain(task.get_coro()):
            lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
    log.warning("%d asyncio tasks:\n%s", len(tasks), "\n".join(lines))


def _await_chain(obj: Any, depth: int = 40) -> list[Any]:
    frames: list[Any] = []
    while obj is not None and depth > 0:
        depth -= 1
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)
        if nxt is None and type(obj).__name__ in {"async_generator_asend", "async_generator_athrow"}:
            nxt = next((r for r in gc.get_referents(obj) if hasattr(r, "ag_frame")), None)
        obj = nxt
    return frames
