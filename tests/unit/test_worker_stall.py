"""The worker's response to input partitions that stop moving (stream_processor.app.Worker._kick),
against its real Faust consumer with the broker calls recorded instead of made."""

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


def test_a_recovery_stuck_on_a_changelog_partition_read_past_reads_it_again(monkeypatch):
    """Faust's recovery of a changelog partition received nothing while the consumer stood at its
    end (a two-worker kill -9 test, 2026-12-03): after RECOVERY_STALL_S the worker seeks it back to
    the next offset the recovery needs."""
    from types import SimpleNamespace

    from stream_processor.offsets import RECOVERY_STALL_S

    async def run():
        worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", readings_topic="r"))
        consumer = worker.app.consumer
        tp, done = TP("changelog", 3), TP("changelog", 2)
        calls: list = []

        async def position(partition):
            return 24

        async def seek(partition, offset):
            calls.append((partition, offset))

        consumer.position, consumer.seek = position, seek
        recovery = SimpleNamespace(active_highwaters={tp: 23, done: 82}, active_offsets={tp: -1, done: 82})
        monkeypatch.setattr(type(worker.app.tables), "recovery", property(lambda self: recovery))
        worker.app.in_recovery = True
        await worker._watch_recovery(now=0.0)
        await worker._watch_recovery(now=RECOVERY_STALL_S - 1)
        assert calls == []
        await worker._watch_recovery(now=RECOVERY_STALL_S + 1)
        assert calls == [(tp, 0)]  # the stuck one only, from the first offset it lacks
        worker.app.in_recovery = False
        await worker._watch_recovery(now=100.0)
        assert calls == [(tp, 0)]  # nothing outside a recovery

    asyncio.run(run())
