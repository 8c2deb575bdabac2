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
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import EventT, StreamT

from model_store import BundleError, default_store, load_production, production_version
from pm25.embedded import faust_overrides
from pm25.settings import Settings
from stream_processor.engine import Engine, Request
from stream_processor.inference import OnnxForecaster
from stream_processor.metrics import WorkerMetrics
from stream_processor.processor import DeadLetter, Processor

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
        self.windows = self.app.Table("station-windows", key_type=str, value_type=bytes, partitions=settings.partitions)
        self.app.agent(self.readings, name="forecast")(self._agent)
        self.app.timer(MODEL_POLL_S)(self._watch_model)
        self._pages()

    # -- the agent -------------------------------------------------------------------------
    async def _agent(self, stream: StreamT) -> None:
        # take_events and _set_current_event live on the concrete Stream, not on StreamT
        concrete = cast(faust.Stream, stream)
        async for events in concrete.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await self.handle_batch(concrete, events)

    async def handle_batch(self, stream: faust.Stream, events: Sequence[EventT]) -> None:
        proc = self.processor
        requests: list[Request] = []
        partition_of: dict[str, int] = {}
        arrived: list[float] = []
        dead: list[tuple[EventT, DeadLetter]] = []
        previous = stream.current_event  # take_events' buffer reads it: restored below, never None
        for event in events:
            msg = event.message
            parsed = proc.parse(event.value, msg.key)
            if isinstance(parsed, DeadLetter):
                dead.append((event, parsed))
                continue
            # A table write must see its own event as current (take_events does not set it).
            stream._set_current_event(event)
            result = proc.apply(self.windows.get(parsed.station_id), parsed)
            if isinstance(result, DeadLetter):
                dead.append((event, result))
                continue
            state, reqs = result
            if state is not None:
                self.windows[parsed.station_id] = state
            requests.extend(reqs)
            partition_of[parsed.station_id] = msg.partition
            if reqs:
                arrived.append(msg.timestamp)
        stream._set_current_event(previous)
        for event, letter in dead:
            await self._dead_letter(event, letter)
        producer, topic = self.app.producer, self.settings.forecasts_topic
        # inference (onnxruntime releases the GIL) runs off the event loop, one batch at a time
        loop = asyncio.get_running_loop()
        for key, value in await loop.run_in_executor(self._inference, proc.forecast, requests):
            partition = partition_of.get(key.decode()) if self.copartitioned else None
            await producer.send(topic, key, value, partition, None, None)
        now = time.time()
        for ts in arrived:
            self.metrics.reading_to_forecast_seconds.observe(max(now - ts, 0.0))
        for key, value in proc.drain_scores():
            await self.scores.send(key=key, value=value)
        self.metrics.batch_size.observe(len(events))

    async def _dead_letter(self, event: EventT, letter: DeadLetter) -> None:
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
        await self.dlq.send(key=msg.key, value=event.value, headers=headers)

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


def create_worker(settings: Settings) -> Worker:
    return Worker(settings)
