"""The worker's response to its input partitions (ones that stop moving: stream_processor.app.Worker._kick;
readings held back; an assignment), against its real Faust consumer with the broker calls recorded
instead of made."""

import asyncio

from faust.types import TP

from pm25.settings import Settings
from stream_processor.app import Worker


def test_a_stuck_partition_is_made_fetchable_again_and_read_again_from_the_next_offset_expected():
    async def run():
        worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", readings_topic="r"))
        consumer = worker.app.consumer
        tps = {TP("r", 0), TP("r", 1), TP("other", 0)}
        calls: list = []

        async def seek(tp, offset):
            calls.append(("seek", tp, offset))

        consumer.assignment = lambda: tps
        consumer.resume_partitions = lambda parts: calls.append(("resume", set(parts)))
        consumer.seek = seek
        worker.offsets.check(0, 41)  # partition 0 delivered up to 41; 1 nothing yet
        worker.app.in_recovery = True
        await worker._kick({0, 1})
        assert calls == []  # a recovery pauses partitions on purpose: left alone
        worker.app.in_recovery = False
        await worker._kick({0, 1})
        assert calls == [("resume", {TP("r", 0), TP("r", 1)}), ("seek", TP("r", 0), 42)]

    asyncio.run(run())


def test_readings_held_back_are_given_back_only_while_a_revocation_stops_the_flow(monkeypatch):
    """Held readings are given back (unacknowledged) so that a revocation's wait for
    acknowledgements can end; once the rebalance's seek to the committed offsets is done (the flow
    resumed, Faust's rebalance not over yet) they stay held, else nothing would read them again.
    When given back, the offset guard expects the first of them again."""
    from stream_processor.delivery import Input

    class Msg:
        acked = False

    class Event:
        def __init__(self) -> None:
            self.message = Msg()

    worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", readings_topic="r"))
    for offset in range(8):
        worker.offsets.check(2, offset)
    held = [(Input(Event(), 2, offset, b"k", b"v", 0.0), None) for offset in (5, 6, 7)]
    worker._held = list(held)
    worker.app.rebalancing = True
    worker.app.consumer.flow_active = True  # the recovery resumed the flow: its seek is done
    worker._give_back_held()
    assert worker._held == held and worker.offsets.expected(2) == 8
    worker.app.consumer.flow_active = False  # a revocation stopped the flow
    worker._give_back_held()
    assert worker._held == [] and all(item.handle.message.acked for item, _ in held)
    assert worker.offsets.expected(2) == 5  # read again from the first one given back
    # a shutdown waits for acknowledgements too (held readings kept a stopping worker waiting until it was killed, 20 s later)
    worker._held = list(held)
    worker.app.rebalancing = False
    worker._give_back_held()
    assert worker._held == held
    monkeypatch.setattr(type(worker.app), "should_stop", property(lambda self: True))
    worker._give_back_held()
    assert worker._held == []


def test_an_assignment_tells_the_processor_which_input_partitions_the_worker_holds():
    """What the split-network check (Processor.split) compares the networks' partitions with."""

    async def run():
        worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", readings_topic="r", partitions=4))
        await worker._on_assigned(None, {TP("r", 1), TP("r", 3), TP("other", 0)}, signal=None)
        assert worker.processor.split.held == {1, 3}
        assert worker.metrics.input_partitions._value.get() == 2
        await worker._on_assigned(None, {TP("r", p) for p in range(4)}, signal=None)
        assert worker.processor.split.held is None  # every partition: nothing is split

    asyncio.run(run())


def test_the_input_lag_gauge_counts_the_messages_not_taken_in_yet():
    worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", readings_topic="r", partitions=3))
    consumer = worker.app.consumer
    consumer.assignment = lambda: {TP("r", 0), TP("r", 1), TP("r", 2), TP("other", 0)}
    high = {TP("r", 0): 50, TP("r", 1): 10, TP("r", 2): None, TP("other", 0): 1000}
    consumer.highwater = high.get
    worker._committed_offsets = lambda: {TP("r", 1): 4}
    for offset in range(20):
        worker.offsets.check(0, offset)  # partition 0 taken in up to 19: 30 waiting
    # partition 1 took nothing yet: from its committed offset 4, 6 waiting; 2 has not fetched yet
    assert worker._lagging_partitions() == {0, 1, 2}
    assert worker.metrics.input_lag._value.get() == 36
    for offset in range(20, 50):
        worker.offsets.check(0, offset)
    assert worker._lagging_partitions() == {1, 2} and worker.metrics.input_lag._value.get() == 6
