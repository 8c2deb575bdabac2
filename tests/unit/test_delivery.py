"""The delivery core (stream_processor.delivery) with a fake broker side that decides when each send
is acknowledged: the rules of at-least-once delivery, proved without Faust or a broker."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.bench import synthetic_readings
from pm25.schema import reading_to_json
from pm25.settings import Settings
from stream_processor.backtest import make_engine
from stream_processor.delivery import DeliveryCore, Input, Outputs
from stream_processor.engine import run_offline
from stream_processor.metrics import WorkerMetrics
from stream_processor.processor import Processor


class FakePort:
    """Records every send and release; each send's acknowledgement is a future the test completes
    (or completed at once with ``auto``)."""

    def __init__(self, auto: bool = False) -> None:
        self.table: dict[str, bytes] = {}
        self.auto = auto
        self.log: list[tuple[str, int]] = []  # (what, batch number)
        self.acks: dict[tuple[str, int], asyncio.Future] = {}
        self.forecasts: list[tuple[bytes, bytes]] = []
        self.released: list[int] = []  # input offsets, in release order
        self.batch = 0

    def _ack(self, what: str, batch: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self.auto:
            fut.set_result(None)
        self.acks[(what, batch)] = fut
        self.log.append((what, batch))
        return fut

    async def send_outputs(self, outputs: Outputs) -> list[asyncio.Future]:
        self.batch += 1
        self.forecasts.extend((key, value) for key, value, _ in outputs.forecasts)
        return [self._ack("outputs", self.batch)]

    async def send_states(self, states: list[tuple[str, int, bytes]]) -> list[asyncio.Future]:
        batch = 1 + sum(1 for what, _ in self.log if what == "states")  # states go out in batch order
        return [self._ack("states", batch)]

    def release(self, inputs: list[Input]) -> None:
        self.log.append(("release", len(self.released)))
        self.released.extend(i.offset for i in inputs)


def inputs_for(readings, start: int = 0) -> list[Input]:
    return [Input(None, 0, start + i, r.station_id.encode(), reading_to_json(r), 0.0) for i, r in enumerate(readings)]


def new_core(port: FakePort, max_in_flight: int = 2, checkpoint_s: float = 0.0) -> DeliveryCore:
    """A core over a fresh processor; ``checkpoint_s`` 0: every batch is a checkpoint."""
    proc = Processor(make_engine(Settings()), WorkerMetrics(), now_hour=lambda: 10**9)
    executor = ThreadPoolExecutor(max_workers=1)
    return DeliveryCore(proc, port, executor, max_in_flight=max_in_flight, checkpoint_s=checkpoint_s)


async def settle() -> None:
    for _ in range(50):  # let every runnable stage run (the graph runs in a thread)
        await asyncio.sleep(0.01)


def test_an_input_is_released_only_after_its_outputs_then_its_states_are_acknowledged():
    async def run():
        port = FakePort()
        core = new_core(port)
        await core.submit(core.intake(inputs_for(synthetic_readings(2, 3)), core.processor.engine.model))
        await settle()
        assert port.log == [("outputs", 1)]  # states wait for the outputs' acknowledgement
        port.acks[("outputs", 1)].set_result(None)
        await settle()
        assert port.log == [("outputs", 1), ("states", 1)] and port.released == []
        port.acks[("states", 1)].set_result(None)
        await settle()
        assert port.log[-1] == ("release", 0) and port.released == list(range(6))

    asyncio.run(run())


def test_a_failed_send_releases_nothing_and_fails_the_next_submit():
    async def run():
        port = FakePort()
        core = new_core(port, max_in_flight=1)
        model = core.processor.engine.model
        readings = synthetic_readings(2, 4)
        await core.submit(core.intake(inputs_for(readings[:4]), model))
        await settle()
        port.acks[("outputs", 1)].set_exception(ConnectionError("broker gone"))
        await settle()
        assert ("states", 1) not in port.acks and port.released == []
        with pytest.raises(ConnectionError):
            await core.submit(core.intake(inputs_for(readings[4:], start=4), model))
        assert port.released == []

    asyncio.run(run())


def test_batches_release_in_order_even_when_acknowledged_out_of_order():
    async def run():
        port = FakePort()
        core = new_core(port)
        model = core.processor.engine.model
        readings = synthetic_readings(2, 4)
        await core.submit(core.intake(inputs_for(readings[:4]), model))
        await core.submit(core.intake(inputs_for(readings[4:], start=4), model))
        await settle()
        assert [w for w in port.log if w[0] == "outputs"] == [("outputs", 1), ("outputs", 2)]
        port.acks[("outputs", 2)].set_result(None)  # the later batch's outputs first
        await settle()
        assert ("states", 2) not in port.acks and port.released == []  # it waits for batch 1
        port.acks[("outputs", 1)].set_result(None)
        await settle()
        port.acks[("states", 1)].set_result(None)
        await settle()
        assert port.released == [0, 1, 2, 3] and ("states", 2) in port.acks  # batch 1 released first
        port.acks[("states", 2)].set_result(None)
        await settle()
        assert port.released == list(range(8))

    asyncio.run(run())


def test_the_pipelined_core_publishes_exactly_what_the_backtest_does():
    """Batches of odd sizes through the pipeline (graphs in a thread, encodings in order) against
    the offline backtest (one call per batch, no pipeline): the same bytes in the same order."""
    readings = synthetic_readings(3, 24 * 4)

    async def run() -> list[tuple[bytes, bytes]]:
        port = FakePort(auto=True)
        core = new_core(port)
        model = core.processor.engine.model
        for i in range(0, len(readings), 37):
            await core.submit(core.intake(inputs_for(readings[i : i + 37], start=i), model))
        await core.drain()
        assert port.released == list(range(len(readings)))
        return port.forecasts

    streamed = asyncio.run(run())
    offline = [(f.station_id.encode(), f.value) for f in run_offline(make_engine(Settings()), readings, batch_size=64)]
    assert len(streamed) == len(readings) and streamed == offline


def test_a_network_s_clock_is_saved_only_after_its_stations_windows_are_acknowledged():
    """A restart must never find a clock newer than a window (tests/unit/test_processor.py, the
    restart tests): the clocks of a batch go out only once its windows are acknowledged."""
    from pm25.stations import read_stations_csv
    from stream_processor.networks import NETWORK_KEY_PREFIX

    class KeyPort(FakePort):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[list[str]] = []

        async def send_states(self, states):
            self.sent.append([key for key, _, _ in states])
            return await super().send_states(states)

    async def run():
        port = KeyPort()
        stations = list(read_stations_csv().values())
        proc = Processor(make_engine(Settings(), stations), WorkerMetrics(), now_hour=lambda: 10**9)
        core = DeliveryCore(proc, port, ThreadPoolExecutor(max_workers=1), max_in_flight=2)
        readings = [r for h in range(3) for r in network_hour(stations, h)]
        await core.submit(core.intake(inputs_for(readings), proc.engine.model))
        await settle()
        port.acks[("outputs", 1)].set_result(None)
        await settle()
        assert len(port.sent) == 1 and port.sent[0] and not any(k.startswith(NETWORK_KEY_PREFIX) for k in port.sent[0])
        port.acks[("states", 1)].set_result(None)  # the windows acknowledged: now the clock
        await settle()
        assert len(port.sent) == 2 and all(k.startswith(NETWORK_KEY_PREFIX) for k in port.sent[1])
        assert port.released == []  # not before the clock is acknowledged too
        port.acks[("states", 2)].set_result(None)
        await settle()
        assert port.released == list(range(len(readings)))

    asyncio.run(run())


def network_hour(stations, h):
    from pm25.schema import Reading
    from tests.unit.test_processor import H0

    return [Reading(s.station_id, H0 + h, pm25=30.0 + i, wind_direction="N") for i, s in enumerate(stations)]


class StatePort(FakePort):
    """Keeps every state sent (key -> bytes, as the changelog would after compaction) and the
    number of state records written."""

    def __init__(self, auto: bool = False) -> None:
        super().__init__(auto)
        self.saved: dict[str, bytes] = {}
        self.records = 0

    async def send_states(self, states):
        self.records += len(states)
        self.saved.update((key, state) for key, _, state in states)
        return await super().send_states(states)


def test_batches_in_flight_save_no_state_until_a_checkpoint_which_saves_each_key_s_newest_and_releases_in_order():
    async def run():
        port = StatePort()
        core = new_core(port, max_in_flight=3, checkpoint_s=3600.0)
        model = core.processor.engine.model
        readings = synthetic_readings(2, 6)  # 2 stations, hours in order
        await core.submit(core.intake(inputs_for(readings[:4]), model))  # idle core: a checkpoint
        await core.submit(core.intake(inputs_for(readings[4:8], start=4), model))  # batch 1 in flight
        await core.submit(core.intake(inputs_for(readings[8:], start=8), model))
        await settle()
        for n in (1, 2, 3):
            port.acks[("outputs", n)].set_result(None)
        await settle()
        assert port.released == [] and port.log.count(("states", 1)) == 1  # batch 1's states only
        port.acks[("states", 1)].set_result(None)
        await settle()
        assert port.released == [0, 1, 2, 3] and ("states", 2) not in port.acks
        assert core.unsaved and not core.busy()  # batches 2 and 3 wait for the next checkpoint
        await core.submit(core.intake([], model))  # the empty batch the worker runs when idle
        await settle()
        port.acks[("outputs", 4)].set_result(None)
        await settle()
        assert port.released == [0, 1, 2, 3]  # not before the states are acknowledged
        port.acks[("states", 2)].set_result(None)
        await settle()
        assert port.released == list(range(12)) and not core.unsaved
        assert port.saved == {sid: core.processor.state_value(sid, port.table[sid]) for sid in port.table}
        assert port.records == 4  # two stations, two checkpoints (not three batches)
        metrics = core.processor.metrics
        assert metrics.checkpoints._value.get() == 2 and metrics.states_saved._value.get() == 4

    asyncio.run(run())


def test_checkpoints_publish_what_the_backtest_does_and_never_release_an_input_ahead_of_its_saved_state():
    """Pipelined batches with checkpoints every few batches: the same forecasts as the offline
    backtest, fewer state records than batches x stations, and at every moment each released
    input is covered by its station's saved state (its recorded offset is at or past it), so a
    crash replays nothing whose state was lost."""
    from pm25.window import StationWindow

    readings = synthetic_readings(3, 24 * 4)
    violations: list[int] = []

    class CheckedPort(StatePort):
        def release(self, inputs):
            for item in inputs:
                sid = item.key.decode()
                window = StationWindow.split(self.saved[sid])[0] if sid in self.saved else None
                if window is None or window.last_offset < item.offset:
                    violations.append(item.offset)
            super().release(inputs)

    async def run():
        port = CheckedPort(auto=True)
        core = new_core(port, checkpoint_s=0.05)
        model = core.processor.engine.model
        batches = 0
        for i in range(0, len(readings), 7):
            await core.submit(core.intake(inputs_for(readings[i : i + 7], start=i), model))
            batches += 1
        await core.drain()
        if core.unsaved:
            await core.submit(core.intake([], model))
            await core.drain()
        assert port.released == list(range(len(readings))) and not core.unsaved
        assert port.records < batches * 3  # fewer writes than one per station per batch
        return port.forecasts

    streamed = asyncio.run(run())
    offline = [(f.station_id.encode(), f.value) for f in run_offline(make_engine(Settings()), readings, batch_size=64)]
    assert streamed == offline
    assert violations == []


def test_revoked_partitions_inputs_and_states_waiting_for_a_checkpoint_are_dropped():
    """After a revocation the partitions' next owner reads their inputs again from the committed
    offset and writes their changelog: nothing of theirs may be released or saved here later."""
    from pm25.window import StationWindow

    async def run():
        port = StatePort(auto=True)
        core = new_core(port, max_in_flight=3, checkpoint_s=3600.0)
        model = core.processor.engine.model
        readings = synthetic_readings(2, 4)
        gone = readings[0].station_id  # its readings are in partition 1, the other station's in 0

        def inputs(rs, start):
            return [
                Input(None, int(r.station_id == gone), start + i, r.station_id.encode(), reading_to_json(r), 0.0)
                for i, r in enumerate(rs)
            ]

        later = inputs(readings[4:], 4)
        await core.submit(core.intake(inputs(readings[:4], 0), model))  # a checkpoint: both saved
        await core.submit(core.intake(later, model))  # taken in behind it: waits for the next
        await core.drain()
        assert core.unsaved and port.records == 2
        core.forget({1})  # partition 1 revoked
        await core.submit(core.intake([], model))  # the next checkpoint
        await core.drain()
        assert not core.unsaved and port.records == 3  # the kept station's newer state only
        assert port.released == [0, 1, 2, 3] + [i.offset for i in later if i.partition == 0]
        assert StationWindow.split(port.saved[gone])[0].last_offset < 4  # as of the first checkpoint

    asyncio.run(run())
