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
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import TP, EventT, StreamT

from model_store import BundleError, default_store, load_production, production_version
from pm25.embedded import CHANGELOG_END_KEY, faust_overrides
from pm25.settings import Settings
from stream_processor.engine import Engine, Request
from stream_processor.inference import OnnxForecaster
from stream_processor.metrics import WorkerMetrics
from stream_processor.offsets import OffsetGuard, Verdict
from stream_processor.processor import DeadLetter, Processor
from stream_processor.sending import BatchSender

__all__ = ["BATCH_MAX", "BATCH_WITHIN_S", "Worker", "create_worker"]

log = logging.getLogger(__name__)

#: Micro-batch: up to this many events, or whatever arrived within this many seconds.
BATCH_MAX = 512
BATCH_WITHIN_S = 0.05
MODEL_POLL_S = 2.0


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
            OnnxForecaster(bundle), lateness_hours=settings.lateness_hours, buffer_hours=settings.buffer_hours
        )
        self.metrics.set_model(bundle.version)
        self.processor = Processor(self.engine, self.metrics)
        self.offsets = OffsetGuard()
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pm25-inference")
        conf: dict[str, Any] = {
            "broker": f"kafka://{settings.bootstrap_servers}",
            "store": "memory://",
            "topic_partitions": settings.partitions,
            "web_port": settings.web_port,
            "web_host": "0.0.0.0",  # noqa: S104 - health checks come from outside the container
            "producer_linger": 0.005,
            "producer_max_batch_size": 1 << 20,
            "consumer_auto_offset_reset": "earliest",
            "topic_allow_declare": True,
            **_faust_credentials(settings),
        }
        if settings.embedded_broker:
            conf.update(faust_overrides())
        self.app = faust.App(settings.app_id, **conf)
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
        self._partitions: dict[tuple[str, bytes], int] = {}
        self.windows = self.app.Table("station-windows", key_type=str, value_type=bytes, partitions=settings.partitions)
        self.app.agent(self.readings, name="forecast")(self._agent)
        self.app.timer(MODEL_POLL_S)(self._watch_model)
        self.app.task(self._install_task_dump)
        self.app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        self._pages()

    # -- the agent -------------------------------------------------------------------------
    async def _agent(self, stream: StreamT) -> None:
        # take_events lives on the concrete Stream, not on StreamT
        concrete = cast(faust.Stream, stream)
        async for events in concrete.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await self.handle_batch(events)

    async def handle_batch(self, events: Sequence[EventT]) -> None:
        """One micro-batch, at least once without transactions.

        Faust commits a batch's input offsets only after this returns, so everything the batch
        produced is acknowledged by the broker before it returns, in this order:

        1. dead letters, forecasts and scores;
        2. then the new station states (one per station per batch), each recording the input
           offset it has applied.

        A crash at any point leaves the committed input offset at or behind the saved states, never
        ahead of them: a replayed message at or before its station's recorded offset is recognised
        and skipped (its forecasts were delivered before its state was saved), and a message after
        it is processed as new. Faust's own table write (``table[key] = value``) cannot give this
        order: it hands the changelog record to a buffer that its commit does not wait for, so a
        kill -9 could commit offsets whose states were never written.

        Messages the consumer skipped (a Faust race at recovery, see stream_processor.offsets) are
        read again: the partition is sought back and what arrived past the hole is dropped unacked.
        """
        proc = self.processor
        store = self.windows.data
        requests: list[Request] = []
        partition_of: dict[str, int] = {}
        arrived: list[float] = []
        dead: list[tuple[EventT, DeadLetter]] = []
        pending: dict[str, bytes] = {}  # the newest state per station in this batch
        seeks: dict[int, int] = {}
        for event in events:
            msg = event.message
            verdict = self.offsets.check(msg.partition, msg.offset)
            if verdict is not Verdict.PROCESS:
                _withhold_ack(self.app.consumer, event)  # it will be read again
                if verdict is Verdict.SEEK:
                    seeks[msg.partition] = self.offsets.seek_target(msg.partition)
                continue
            parsed = proc.parse(event.value, msg.key)
            if isinstance(parsed, DeadLetter):
                dead.append((event, parsed))
                continue
            sid = parsed.station_id
            current = pending[sid] if sid in pending else store.get(sid)
            result = proc.apply(current, parsed, msg.offset)
            if isinstance(result, DeadLetter):
                dead.append((event, result))
                continue
            state, reqs = result
            if state is not None:
                pending[sid] = state
            partition_of[sid] = msg.partition
            requests.extend(reqs)
            if reqs:
                arrived.append(msg.timestamp)
        delivered: list[Awaitable[Any]] = [await self._dead_letter(event, letter) for event, letter in dead]
        # inference (onnxruntime releases the GIL) runs off the event loop, one batch at a time
        loop = asyncio.get_running_loop()
        forecasts = await loop.run_in_executor(self._inference, proc.forecast, requests)
        sender = BatchSender(self._aiokafka_producer())
        topic = self.settings.forecasts_topic
        for key, value in forecasts:
            partition = partition_of[key.decode()] if self.copartitioned else await self._partition(topic, key)
            sender.add(topic, partition, key, value)
        scores_topic = self.settings.scores_topic
        for key, value in proc.drain_scores():
            sender.add(scores_topic, await self._partition(scores_topic, key), key, value)
        delivered.extend(await sender.submit())
        await asyncio.gather(*delivered)  # 1. acknowledged by the broker ...
        changelog = self.windows.changelog_topic.get_topic_name()
        states = BatchSender(self._aiokafka_producer())
        for sid, state in pending.items():  # 2. ... then the states
            store[sid] = state
            states.add(changelog, partition_of[sid], self._changelog_key(sid), state)
        saved = await states.submit()
        await asyncio.gather(*saved)
        if self.settings.embedded_broker and pending:
            await self._end_changelog_batches({partition_of[sid] for sid in pending})
        now = time.time()
        for ts in arrived:
            self.metrics.reading_to_forecast_seconds.observe(max(now - ts, 0.0))
        for partition, offset in seeks.items():
            log.warning("partition %d: the consumer skipped offsets from %d; reading them again", partition, offset)
            self.metrics.input_seeks.inc()
            await self.app.consumer.seek(TP(self.settings.readings_topic, partition), offset)
        self.metrics.batch_size.observe(len(events))

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
        self.offsets.forget({tp.partition for tp in revoked if tp.topic == self.settings.readings_topic})

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
