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
import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.types import TP, EventT, StreamT

from model_store import BundleError, default_store, load_production, production_version
from pm25.embedded import CHANGELOG_END_KEY, WORKER_FETCH_MAX_WAIT_MS, faust_overrides
from pm25.settings import Settings
from pm25.window import StationWindow
from stream_processor.consumer import App, Consumer
from stream_processor.engine import Engine, Request
from stream_processor.inference import Forecaster, OnnxForecaster
from stream_processor.metrics import WorkerMetrics
from stream_processor.offsets import OffsetGuard, TailWatch, Verdict
from stream_processor.processor import DeadLetter, Inference, Observation, Processor
from stream_processor.sending import BatchSender

__all__ = ["BATCH_MAX", "TAKE_WITHIN_S", "Worker", "create_worker"]

log = logging.getLogger(__name__)

#: Micro-batches are self-clocked: a batch starts as soon as the previous batch's graph has run
#: (the inference thread is free) and takes every event that arrived meanwhile, up to BATCH_MAX.
#: An idle worker so starts on a reading at once, and batches grow only while the worker is busy:
#: under load they are as large as the work in progress lets them be, which spreads the per-batch
#: costs (graph calls, broker round trips) over many readings. Faust's take_events hands over what
#: it has buffered every TAKE_WITHIN_S.
BATCH_MAX = 1024
TAKE_WITHIN_S = 0.005
#: Batches between intake and release at once (computing or waiting for the broker's acks). With
#: 1024 / 2 the worker's peak RSS was 201-207 MB in five runs, with 2048 / 3 it was 216-259 MB, at
#: the same throughput.
MAX_IN_FLIGHT = 2
#: Bytes fetched per input partition at a time (Kafka's default is 1 MB): about 1000 readings, and a
#: bound on what a backlog holds in memory before the worker takes it.
FETCH_BYTES_PER_PARTITION = 256 * 1024
#: How long the broker may hold the worker's fetch open waiting for data (Faust fixes 1 500 ms).
#: aiokafka leaves out of a fetch every partition it still holds unconsumed records of (or that
#: flow control paused), and sends no other fetch to that broker until the fetch returns: after a
#: burst of readings the busy partitions were left out, the fetch waited the full 1.5 s on the
#: others, and readings queued behind it (measured on Apache Kafka at 1000 readings/s: a sawtooth of
#: 0.7-1.8 s latency that, once started, never ended). An idle worker sends about 50 small fetches a
#: second instead of one.
FETCH_MAX_WAIT_MS = 20
MODEL_POLL_S = 2.0
#: How often the input partitions are checked for a hole at their end (see TailWatch).
TAIL_CHECK_S = 1.0
#: The cyclic garbage collector's young-generation threshold while the agent runs (Python's default
#: is 700 allocations). The worker allocates many short-lived containers per reading, nearly all
#: freed by reference counting; measured over a full-load run (about 20 s of processing), the
#: collections took 0.82 s of the event loop with the defaults (a full one about 90 ms: it scans
#: every object of Faust, aiokafka and numpy), 0.35 s with the start-up objects frozen out of the
#: scans, and 0.085 s with this threshold as well.
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


@dataclass(slots=True)
class _Batch:
    """What a micro-batch's intake hands to its delivery."""

    model: Forecaster  # the model the requests' windows were cut for
    held: list[EventT] = field(default_factory=list)  # acknowledgement held until delivered
    requests: list[Request] = field(default_factory=list)
    observed: list[Observation] = field(default_factory=list)
    dead: list[tuple[EventT, DeadLetter]] = field(default_factory=list)
    states: dict[str, bytes] = field(default_factory=dict)  # the newest state per station
    partition_of: dict[str, int] = field(default_factory=dict)
    arrived: list[float] = field(default_factory=list)  # input timestamps of readings forecast
    seeks: dict[int, int] = field(default_factory=dict)  # partition -> offset to read again from


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
            OnnxForecaster(bundle), lateness_hours=settings.lateness_hours, buffer_hours=settings.buffer_hours
        )
        self.metrics.set_model(bundle.version)
        self.processor = Processor(self.engine, self.metrics)
        self.offsets = OffsetGuard()
        self._tails = TailWatch()
        self._stream: faust.Stream | None = None
        self._waiting = True  # no micro-batch is being taken in
        self._queue: deque[EventT] = deque()  # events taken from Faust, not yet in a batch
        self._queued = asyncio.Event()  # set while the queue holds events
        self._room = asyncio.Event()  # set while the queue holds fewer than BATCH_MAX events
        self._graph: asyncio.Future[Any] | None = None  # the newest batch's graph (in the thread)
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
            "producer_max_batch_size": 1 << 20,
            "consumer_auto_offset_reset": "earliest",
            "topic_allow_declare": True,
            **_faust_credentials(settings),
        }
        conf["fetch_max_wait_ms"] = FETCH_MAX_WAIT_MS
        if settings.embedded_broker:
            conf.update(faust_overrides())
            conf["fetch_max_wait_ms"] = WORKER_FETCH_MAX_WAIT_MS
        self.app = App(settings.app_id, **conf)  # faust.App with a cheaper fetch loop (see .consumer)
        self.readings = self.app.topic(
            settings.readings_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        self.forecasts = self.app.topic(
            settings.forecasts_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        self.dlq = self.app.topic(
            settings.dlq_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        self.scores = self.app.topic(
            settings.scores_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        self._changelog_keys: dict[str, bytes] = {}
        self._computing: asyncio.Future[list[Awaitable[Any]]] | None = None
        self._in_flight: deque[asyncio.Future[None]] = deque()
        self._partitions: dict[tuple[str, bytes], int] = {}
        self.windows = self.app.Table("station-windows", key_type=str, value_type=bytes, partitions=settings.partitions)
        self.app.agent(self.readings, name="forecast")(self._agent)
        self.app.timer(MODEL_POLL_S)(self._watch_model)
        self.app.timer(TAIL_CHECK_S)(self._watch_tails)
        self.app.task(self._install_task_dump)
        self.app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
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
        try:
            async for events in concrete.take_events(BATCH_MAX, within=TAKE_WITHIN_S):
                for event in events:  # take_events acknowledges them when this loop comes back:
                    event.message.incref()  # held until _release (or withheld, see _intake)
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
        while True:
            await self._queued.wait()
            if self._graph is not None and not self._graph.done():
                await asyncio.wait([self._graph])  # its failure is raised by the batch's own stages
            events = [queue.popleft() for _ in range(min(len(queue), BATCH_MAX))]
            if not queue:
                self._queued.clear()
            self._room.set()
            if not events:
                continue
            self._waiting = False
            await self.handle_batch(events)
            self._waiting = not queue

    async def handle_batch(self, events: Sequence[EventT]) -> None:
        """One micro-batch, pipelined: its intake (parse, apply, new states) runs on the event loop
        while earlier batches are still computing or waiting for the broker.

        At least once without transactions: every event taken in holds its message's
        acknowledgement (``Message.incref``) until the broker has acknowledged, in this order,

        1. the batch's dead letters, forecasts and scores (:meth:`_compute` sends them);
        2. then, after every earlier batch has been released, its new station states in the
           changelog (one per station per batch), each recording the input offset it has applied
           (:meth:`_release`);

        and only then are the messages released, so Faust can commit their offsets. A crash at any
        point leaves the committed input offset at or behind the saved states, never ahead of them:
        a replayed message at or before its station's recorded offset is recognised and skipped
        (its forecasts were delivered before its state was saved), and a message after it is
        processed as new. Faust's own table write (``table[key] = value``) cannot give this order:
        it hands the changelog record to a buffer that its commit does not wait for, so a kill -9
        could commit offsets whose states were never written.

        Messages the consumer skipped (a Faust race at recovery, see stream_processor.offsets) are
        read again: the partition is sought back and what arrived past the hole is dropped unacked.
        """
        batch = self._intake(events)
        for partition, offset in batch.seeks.items():
            log.warning("partition %d: the consumer skipped offsets from %d; reading them again", partition, offset)
            self.metrics.input_seeks.inc()
            await self.app.consumer.seek(TP(self.settings.readings_topic, partition), offset)
        while len(self._in_flight) >= MAX_IN_FLIGHT:  # bounded memory; a failed batch raises here
            await self._in_flight.popleft()
        # features now, and the graph queued at once in the inference thread (graphs run one at a
        # time, in batch order): a batch's graph overlaps the previous batch's encoding
        job = self.processor.prepare(batch.requests, batch.model)
        graph = self._graph = asyncio.get_running_loop().run_in_executor(self._inference, job.run)
        batch.requests = []  # the job holds them
        computing = asyncio.ensure_future(self._compute(batch, job, graph, after=self._computing))
        releasing = asyncio.ensure_future(
            self._release(batch, computing, after=self._in_flight[-1] if self._in_flight else None)
        )
        self._computing = computing
        self._in_flight.append(releasing)

    def _intake(self, events: Sequence[EventT]) -> _Batch:
        """Stage 1, on the event loop: parse and apply every event; the new states go into the
        table's memory at once (the next batch builds on them) and are saved by :meth:`_release`."""
        proc = self.processor
        store = self.windows.data
        batch = _Batch(model=self.engine.model)
        pending = batch.states
        committed = self._committed_offsets()
        for event in events:
            msg = event.message
            verdict = self.offsets.check(msg.partition, msg.offset, committed.get(msg.tp))
            if verdict is not Verdict.PROCESS:
                _withhold_ack(self.app.consumer, event)  # it will be read again
                if verdict is Verdict.SEEK:
                    batch.seeks[msg.partition] = self.offsets.seek_target(msg.partition)
                continue
            batch.held.append(event)  # released by _release once all it caused is acknowledged
            parsed = proc.parse(event.value, msg.key)
            if isinstance(parsed, DeadLetter):
                batch.dead.append((event, parsed))
                continue
            sid = parsed.station_id
            result = proc.apply(store.get(sid), parsed, msg.offset)
            if isinstance(result, DeadLetter):
                batch.dead.append((event, result))
                continue
            state, reqs = result
            if state is not None:
                store[sid] = pending[sid] = state
            batch.partition_of[sid] = msg.partition
            if reqs:
                batch.requests.extend(reqs)
                batch.arrived.append(msg.timestamp)
        batch.observed = proc.take_observed()
        self._taken += len(events)
        self.metrics.batch_size.observe(len(events))
        return batch

    async def _compute(
        self, batch: _Batch, job: Inference, graph: asyncio.Future[Any], after: asyncio.Future[Any] | None
    ) -> list[Awaitable[Any]]:
        """Stage 2, in batch order: once the batch's graph has run (in a thread: onnxruntime
        releases the GIL, so it overlaps the loop's work on other batches) and the previous batch is
        encoded, encode this one on the loop (numpy in a thread would fight the loop for the GIL at
        every call) and send its dead letters, forecasts and scores; returns their delivery
        futures."""
        out = await graph
        if after is not None:
            await after
        proc = self.processor
        delivered = [await self._dead_letter(event, letter) for event, letter in batch.dead]
        forecasts, scores = proc.finish(job, out, batch.observed)
        for sid, window in batch.states.items():  # saved with the adaptation this batch left
            batch.states[sid] = proc.state_value(sid, window)
        del job, out
        batch.observed, batch.dead = [], []  # not needed while it waits for acks
        sender = BatchSender(self._aiokafka_producer())
        topic = self.settings.forecasts_topic
        for key, value in forecasts:
            partition = batch.partition_of[key.decode()] if self.copartitioned else await self._partition(topic, key)
            sender.add(topic, partition, key, value)
        scores_topic = self.settings.scores_topic
        for key, value in scores:
            sender.add(scores_topic, await self._partition(scores_topic, key), key, value)
        return [*delivered, *await sender.submit()]

    async def _release(
        self, batch: _Batch, computing: asyncio.Future[list[Awaitable[Any]]], after: asyncio.Future[Any] | None
    ) -> None:
        """Stage 3: once the batch's outputs are acknowledged and every earlier batch is released,
        save its states, then release its messages (their offsets may be committed)."""
        await asyncio.gather(*await computing)  # 1. the outputs, acknowledged by the broker ...
        if after is not None:
            await after
        changelog = self.windows.changelog_topic.get_topic_name()
        states = BatchSender(self._aiokafka_producer())
        for sid, state in batch.states.items():  # 2. ... then the states
            states.add(changelog, batch.partition_of[sid], self._changelog_key(sid), state)
        await asyncio.gather(*await states.submit())
        if self.settings.embedded_broker and batch.states:
            await self._end_changelog_batches({batch.partition_of[sid] for sid in batch.states})
        consumer, sensors = self.app.consumer, self.app.sensors
        for event in batch.held:  # 3. ... then the input offsets may be committed
            msg = event.message
            if msg.ack(consumer):
                sensors.on_message_out(msg.tp, msg.offset, msg)
        now = time.time()
        for ts in batch.arrived:
            self.metrics.reading_to_forecast_seconds.observe(max(now - ts, 0.0))

    async def _end_changelog_batches(self, partitions: set[int]) -> None:
        """Embedded broker only (see pm25.embedded.CHANGELOG_END_KEY): one record alone in the last
        batch of each changelog partition written, so that table recovery reads every state."""
        name = self.windows.changelog_topic.get_topic_name()
        key = self._changelog_key(CHANGELOG_END_KEY)
        producer = self.app.producer
        await asyncio.gather(*[await producer.send(name, key, b"", p, None, None) for p in partitions])

    def _aiokafka_producer(self) -> Any:
        """The aiokafka producer under Faust's (started with the app): for batch sends."""
        return cast(Any, self.app.producer)._ensure_producer()

    async def _partition(self, topic: str, key: bytes) -> int:
        """The partition the producer's default partitioner gives ``key`` (cached per key)."""
        cached = self._partitions.get((topic, key))
        if cached is None:
            await self._aiokafka_producer().partitions_for(topic)  # the topic's metadata, once
            cached = self._partitions[(topic, key)] = self.app.producer.key_partition(topic, key).partition
        return cached

    async def _on_revoked(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        if self._queue:  # not taken in yet: the partitions' next owner reads them again
            kept = [e for e in self._queue if e.message.tp not in revoked]
            self._queue.clear()
            self._queue.extend(kept)
            if not kept:
                self._queued.clear()
            self._room.set()
        if self._in_flight:  # what is already taken in is delivered before the partitions go
            await asyncio.wait(list(self._in_flight))  # a failure stays in its task: the agent raises it
        partitions = {tp.partition for tp in revoked if tp.topic == self.settings.readings_topic}
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

    def _committed_offsets(self) -> Mapping[TP, int | None]:
        """Each partition's committed offset as the consumer knows it: where it was sought to at its
        assignment until the worker's first commit of it. Faust keeps 0 (and none yet) as None."""
        return cast(Any, self.app.consumer)._committed_offset  # Faust internals

    async def _start_offset(self, tp: TP) -> int:
        """Where the consumer started ``tp`` at its assignment: the committed offset, or the
        earliest offset when it is not known."""
        committed = self._committed_offsets().get(tp)
        if committed is not None:
            return int(committed)
        return int((await self.app.consumer.earliest_offsets(tp))[tp])

    def _changelog_key(self, station_id: str) -> bytes:
        """The changelog key exactly as Faust's own table writes serialise it (recovery reads it)."""
        key = self._changelog_keys.get(station_id)
        if key is None:
            table = cast(Any, self.windows)
            key = self._changelog_keys[station_id] = table.changelog_topic.prepare_key(
                station_id, table.key_serializer
            )[0]
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

    # -- diagnostics -------------------------------------------------------------------------
    async def _install_task_dump(self) -> None:
        """``kill -USR1 <pid>`` logs the stack of every asyncio task (what a stalled worker awaits)."""
        if hasattr(signal, "SIGUSR1"):
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._dump_state)

    def _dump_state(self) -> None:
        dump_tasks()
        # Faust and aiokafka internals, for diagnostics only: a failure here must never hurt the worker.
        try:
            consumer = cast(Any, self.app.consumer)
            fields = ("_active_partitions", "_buffered_partitions", "_paused_partitions", "flow_active")
            state: dict[str, Any] = {f: getattr(consumer, f, "?") for f in fields}
            state["assignment"] = consumer.assignment()
            state["in_recovery"] = self.app.in_recovery
            queue = cast(Any, self.readings).queue
            state["queue"] = (queue.qsize(), queue.maxsize)
            client = consumer._thread._ensure_consumer()
            state["positions"] = {
                str(tp): (st.position, st.paused)
                for tp, st in client._subscription.subscription.assignment._tp_state.items()
            }
        except Exception as err:  # any internal change: report it, never raise
            state = {"unavailable": repr(err)}
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
        return bool(recovery.completed.is_set() and not recovery.in_recovery and not self.app.rebalancing)

    def _pages(self) -> None:
        worker = self

        @self.app.page("/health")
        async def health(view: Any, request: Any) -> Any:
            return view.json({"status": "alive", "model_version": worker.engine.model.version})

        @self.app.page("/ready")
        async def ready(view: Any, request: Any) -> Any:
            ok = worker.ready()
            return view.json({"ready": ok}, status=200 if ok else 503)

        @self.app.page("/metrics")
        async def metrics(view: Any, request: Any) -> Any:
            return view.text(worker.metrics.render().decode(), content_type="text/plain; version=0.0.4")


def _tune_gc() -> None:
    """Objects that exist when the agent starts (modules, the app, the model) live as long as the
    process: they are left out of every collection; young collections happen less often."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _withhold_ack(consumer: Any, event: EventT) -> None:
    """Keep a dropped message out of the committed offsets (take_events acknowledges every event
    it yielded): marked as already acknowledged, the consumer's ack skips it. Faust internals."""
    event.message.acked = True
    consumer._unacked_messages.discard(event.message)


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


def create_worker(settings: Settings) -> Worker:
    return Worker(settings)
