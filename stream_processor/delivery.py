"""The delivery core: a micro-batch from intake to released acknowledgements, without Faust.

At least once without transactions. Every input taken in holds its acknowledgement until the broker
has acknowledged, in this order,

1. the batch's dead letters, forecasts and scores (:meth:`DeliveryCore._compute` sends them);
2. then, after every earlier batch has been released, the new station states (one per station per
   checkpoint, below), each recording the input offset it has applied (:meth:`DeliveryCore._release`);

and only then are the inputs released, so their offsets may be committed. A crash at any point
leaves the committed input offset at or behind the saved states, never ahead of them: a replayed
message at or before its station's recorded offset is recognised and skipped (its forecasts were
delivered before its state was saved), and a message after it is processed as new. A failed send
fails its batch and every later one: nothing after it is released.

States are saved at *checkpoints*, not with every batch (as Kafka Streams' record cache saves a
key once per commit interval): a batch is a checkpoint when no earlier batch is still in flight
(an idle worker saves at once) or ``checkpoint_s`` has passed since the last one. A batch that is
not one forecasts as any other, but saves no state and releases nothing; the next checkpoint saves
the newest state of every key changed since the last one and releases every input taken in
meanwhile, in order. Under load a station's state is written once per interval instead of once per
batch; the cost is a replay of up to that interval's readings after a crash (their forecasts are
published again, byte-identical). :attr:`DeliveryCore.unsaved` says that inputs wait for a
checkpoint: the caller runs an empty batch once the core is idle (:meth:`DeliveryCore.busy`).

Batches are pipelined: a batch's intake (parse, apply, new states) runs on the event loop while
earlier batches are still computing or waiting for the broker; the graphs run one at a time in the
inference thread, in batch order, and the encodings on the loop, in batch order.

The broker side is a :class:`Port`; the worker's is Faust's (stream_processor.app), the unit tests'
a fake that decides when each send is acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, MutableMapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from pm25.schema import Reading
from stream_processor.engine import Request
from stream_processor.forecaster import Inference, Observation
from stream_processor.inference import Forecaster
from stream_processor.networks import NETWORK_KEY_PREFIX
from stream_processor.processor import DeadLetter, Processor

__all__ = ["Batch", "DeliveryCore", "Input", "Outputs", "Port"]


@dataclass(frozen=True, slots=True)
class Input:
    """One input message taken in."""

    handle: Any  # what the port releases (the worker's: the Faust event)
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float  # the message's timestamp (s)


@dataclass(slots=True)
class Outputs:
    """What a batch publishes: dead letters, forecasts (key, value, input partition), scores."""

    dead: list[tuple[Input, DeadLetter]]
    forecasts: list[tuple[bytes, bytes, int]]
    scores: list[tuple[bytes, bytes]]


class Port(Protocol):
    """The broker side of the core."""

    #: each station's newest state (bytes), as the next batch's intake builds on it
    table: MutableMapping[str, bytes]

    async def send_outputs(self, outputs: Outputs) -> list[Awaitable[Any]]:
        """Queue the outputs; one future per send, done when the broker acknowledged it. The port
        may take the forecasts off ``outputs.forecasts`` as it queues them (to free each message
        as soon as the producer holds a copy)."""
        ...

    async def send_states(self, states: list[tuple[str, int, bytes]]) -> list[Awaitable[Any]]:
        """Queue (station, input partition, state) records; futures as for outputs. The port may
        take the records off ``states`` as it queues them (as for the forecasts)."""
        ...

    def release(self, inputs: list[Input]) -> None:
        """The inputs' offsets may be committed."""
        ...


@dataclass(slots=True)
class Batch:
    """What a micro-batch's intake hands to its delivery."""

    model: Forecaster  # the model the requests' windows were cut for
    held: list[Input] = field(default_factory=list)  # acknowledgement held until delivered
    requests: list[Request] = field(default_factory=list)
    observed: list[Observation] = field(default_factory=list)
    dead: list[tuple[Input, DeadLetter]] = field(default_factory=list)
    states: dict[str, bytes] = field(default_factory=dict)  # the newest state per key (station, network)
    partition_of: dict[str, int] = field(default_factory=dict)  # each key's changelog partition
    arrived: list[float] = field(default_factory=list)  # input timestamps of readings forecast
    #: readings held back (too far ahead of a partition still behind): for a later batch
    deferred: list[tuple[Input, Reading]] = field(default_factory=list)
    checkpoint: bool = False  # it saves the states changed since the last one and releases the inputs


class DeliveryCore:
    def __init__(
        self,
        processor: Processor,
        port: Port,
        executor: Executor,
        max_in_flight: int = 2,
        checkpoint_s: float = 0.0,
    ) -> None:
        self.processor = processor
        self.port = port
        self.executor = executor
        self.max_in_flight = max_in_flight
        self.checkpoint_s = checkpoint_s  # 0: every batch is a checkpoint
        self.graph: asyncio.Future[Any] | None = None  # the newest batch's graph
        self._computing: asyncio.Future[list[Awaitable[Any]]] | None = None
        self._in_flight: deque[asyncio.Future[None]] = deque()
        #: since the last checkpoint: the newest state of each key changed (changelog partition,
        #: bytes; the same objects as the port's table holds) and the inputs taken in
        self._unsaved_states: dict[str, tuple[int, bytes]] = {}
        self._unsaved_inputs: list[Input] = []
        self._last_checkpoint = time.monotonic()

    @property
    def unsaved(self) -> bool:
        """Inputs taken in wait for the next checkpoint to be released."""
        return bool(self._unsaved_inputs)

    def busy(self) -> bool:
        """A batch taken in is not released yet."""
        return any(not f.done() for f in self._in_flight)

    def intake(self, inputs: Sequence[Input], model: Forecaster, held: Sequence[tuple[Input, Reading]] = ()) -> Batch:
        """Stage 1, on the event loop: parse and apply every input; the new states go into the
        port's table at once (the next batch builds on them) and are saved by :meth:`_release`.

        The readings are applied in event-time order across partitions (each partition's own
        order kept), and a network station's reading that runs too far ahead of the partitions
        still behind is held back (``batch.deferred``, with the rest of its partition): the caller
        passes it again as ``held`` with a later batch, unacknowledged meanwhile
        (Processor.aligned)."""
        proc = self.processor
        store = self.port.table
        batch = Batch(model=model)
        pending = batch.states
        readings: list[tuple[Input, Reading]] = list(held)
        for item in inputs:
            parsed = proc.parse(item.value, item.key)
            if isinstance(parsed, DeadLetter):
                batch.held.append(item)
                batch.dead.append((item, parsed))
                continue
            readings.append((item, parsed))
        for item, reading, hold in proc.aligned(readings):
            if hold:
                batch.deferred.append((item, reading))
                continue
            batch.held.append(item)
            result = proc.apply(store, reading, item.offset, item.partition)
            if isinstance(result, DeadLetter):
                batch.dead.append((item, result))
                continue
            _, reqs, observed = result
            if observed is not None:
                batch.observed.append(observed)
            batch.partition_of[reading.station_id] = item.partition
            if reqs:
                batch.requests.extend(reqs)
                batch.arrived.append(item.timestamp)
        batch.requests.extend(proc.advance(store))  # hours the batch's watermark closed elsewhere
        unsaved = self._unsaved_states
        for key, (partition, state) in proc.take_states().items():  # serialised once per batch
            store[key] = state
            unsaved[key] = (partition, state)
            batch.partition_of[key] = partition
        self._unsaved_inputs.extend(batch.held)
        now = time.monotonic()
        if self.busy() and now - self._last_checkpoint < self.checkpoint_s:
            batch.held = []  # not a checkpoint: released by the next one
            return batch
        self._last_checkpoint = now
        batch.checkpoint = True
        batch.held, self._unsaved_inputs = self._unsaved_inputs, []
        for key, (partition, state) in unsaved.items():
            pending[key] = state  # each key's newest since the last checkpoint
            batch.partition_of[key] = partition
        unsaved.clear()
        return batch

    def forget(self, partitions: set[int]) -> None:
        """Input partitions were revoked: their inputs waiting for a checkpoint are never released
        (their next owner reads them again from the committed offset, beside the states saved with
        it) and their states waiting for one are never saved (the partition's changelog is the next
        owner's to write)."""
        self._unsaved_inputs = [item for item in self._unsaved_inputs if item.partition not in partitions]
        for key in [k for k, (p, _) in self._unsaved_states.items() if p in partitions]:
            del self._unsaved_states[key]

    async def submit(self, batch: Batch) -> None:
        """Start the batch's delivery; waits while ``max_in_flight`` batches are undelivered (and
        raises the error of a failed one)."""
        while len(self._in_flight) >= self.max_in_flight:
            await self._in_flight.popleft()
        # features and graph queued at once in the inference thread (batches run one at a time, in
        # batch order): a batch's graph overlaps the previous batch's encoding
        job = self.processor.forecaster.start(batch.requests, batch.model)
        graph = self.graph = asyncio.get_running_loop().run_in_executor(self.executor, job.run)
        batch.requests = []  # the job holds them
        computing = asyncio.ensure_future(self._compute(batch, job, graph, after=self._computing))
        after = self._in_flight[-1] if self._in_flight else None
        self._computing = computing
        self._in_flight.append(asyncio.ensure_future(self._release(batch, computing, after=after)))

    async def drain(self) -> None:
        """Wait until every batch taken in is delivered or failed (a failure stays in its task:
        the next :meth:`submit` raises it)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def _compute(
        self, batch: Batch, job: Inference, graph: asyncio.Future[Any], after: asyncio.Future[Any] | None
    ) -> list[Awaitable[Any]]:
        """Stage 2, in batch order: once the batch's graph has run (in a thread: onnxruntime
        releases the GIL, so it overlaps the loop's work on other batches) and the previous batch is
        encoded, encode this one on the loop (numpy in a thread would fight the loop for the GIL at
        every call) and send its outputs; returns their delivery futures."""
        out = await graph
        if after is not None:
            await after
        proc = self.processor
        forecasts, scores = proc.forecaster.complete(job, out), proc.score(batch.observed)
        for sid, window in batch.states.items():  # saved with the adaptation this batch left
            batch.states[sid] = proc.state_value(sid, window)
        del job, out
        outputs = Outputs(
            dead=batch.dead,
            forecasts=[(key, value, batch.partition_of[key.decode()]) for key, value in forecasts],
            scores=scores,
        )
        del forecasts  # the port frees each message once its producer batch holds a copy
        batch.observed, batch.dead = [], []  # not needed while it waits for acks
        return await self.port.send_outputs(outputs)

    async def _release(
        self, batch: Batch, computing: asyncio.Future[list[Awaitable[Any]]], after: asyncio.Future[Any] | None
    ) -> None:
        """Stage 3: once the batch's outputs are acknowledged and every earlier batch is released,
        save its states, then release its inputs."""
        await asyncio.gather(*await computing)  # 1. the outputs, acknowledged by the broker ...
        if after is not None:
            await after
        # 2. ... then the states: the stations' windows, and once they are acknowledged the
        # networks' clocks. A restart may find a window newer than its network's clock (the
        # replayed readings are offered to the clock again) but never a clock newer than a window:
        # that clock has closed hours the window must apply again, and every later forecast of the
        # station would differ from the backtest.
        windows: list[tuple[str, int, bytes]] = []
        clocks: list[tuple[str, int, bytes]] = []
        for sid, state in batch.states.items():
            (clocks if sid.startswith(NETWORK_KEY_PREFIX) else windows).append((sid, batch.partition_of[sid], state))
        batch.states.clear()  # each state is then held by one list, which the port empties as it sends
        saved = len(windows) + len(clocks)
        if windows:
            await asyncio.gather(*await self.port.send_states(windows))
        if clocks:
            await asyncio.gather(*await self.port.send_states(clocks))
        self.port.release(batch.held)  # 3. ... then the input offsets may be committed
        metrics = self.processor.metrics
        if batch.checkpoint:
            metrics.checkpoints.inc()
            metrics.states_saved.inc(saved)
        now = time.time()
        observe = metrics.reading_to_forecast_seconds.observe
        for ts in batch.arrived:
            observe(max(now - ts, 0.0))
