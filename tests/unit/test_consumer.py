"""The fetch loop's per-message step (stream_processor.faust_seam) against a stand-in consumer: the
direct delivery and the suspended path, read offsets, gaps and commits as in Faust's loop."""

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from faust.types import TP

from stream_processor.faust_seam import Consumer

TP0 = TP("pm25.readings", 0)


class StandIn:
    """What ``Consumer._deliver`` uses of the consumer, recording every call."""

    def __init__(self, *, suspended: bool = False, commit_every: int | None = None, n_acked: int = 0) -> None:
        self.suspend_flow = asyncio.Event()
        if suspended:
            self.suspend_flow.set()
        self._commit_every = commit_every
        self._n_acked = n_acked
        self.calls: list[tuple] = []
        self.read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)

    async def _add_gap(self, tp: TP, start: int, stop: int) -> None:
        self.calls.append(("gap", tp, start, stop))

    async def commit(self) -> None:
        self.calls.append(("commit",))

    async def wait_first(self, *coros):
        self.calls.append(("wait_first", len(coros)))
        done, pending = await asyncio.wait([asyncio.ensure_future(c) for c in coros], timeout=1.0)
        for fut in pending:
            fut.cancel()

    async def callback(self, message) -> None:
        self.calls.append(("deliver", message.offset))

    async def deliver(self, *offsets: int, acks: bool = True) -> None:
        for offset in offsets:
            message = SimpleNamespace(offset=offset, topic=TP0.topic)
            await Consumer._deliver(
                self, TP0, message, self.callback, self.read_offset, lambda topic: acks, self.suspend_flow.is_set
            )


def test_messages_are_delivered_directly_and_their_offsets_read():
    c = StandIn()
    asyncio.run(c.deliver(0, 1, 2))
    assert c.calls == [("deliver", 0), ("deliver", 1), ("deliver", 2)]
    assert c.read_offset[TP0] == 2


def test_a_suspended_flow_races_the_delivery_against_the_suspension():
    c = StandIn(suspended=True)
    asyncio.run(c.deliver(5))
    assert c.calls == [("wait_first", 2), ("deliver", 5)]
    assert c.read_offset[TP0] == 5


def test_offsets_read_before_are_dropped_and_holes_recorded_as_gaps():
    c = StandIn()
    asyncio.run(c.deliver(3, 1, 7))
    assert c.calls == [("deliver", 3), ("gap", TP0, 4, 7), ("deliver", 7)]
    c = StandIn()
    asyncio.run(c.deliver(3, 7, acks=False))  # no acknowledgements on the topic: no gap to fill
    assert c.calls == [("deliver", 3), ("deliver", 7)]


def test_commit_every_commits_before_the_next_delivery():
    c = StandIn(commit_every=10, n_acked=10)
    asyncio.run(c.deliver(0))
    assert c.calls == [("commit",), ("deliver", 0)]
    assert c._n_acked == 0


def test_records_fetched_before_a_seek_of_their_partition_are_stale():
    c = StandIn()
    c._seeked_at = {TP0: 3}  # the partition's latest seek was the third
    assert Consumer._stale(c, TP0, fetched_after=2)  # fetched before it: not at the new position
    assert not Consumer._stale(c, TP0, fetched_after=3)  # fetched after it
    assert not Consumer._stale(c, TP("pm25.readings", 1), fetched_after=0)  # never sought


def test_a_partition_without_a_committed_offset_reads_again_what_its_stale_drop_skipped():
    """Faust's recovery seeks every partition to its committed offset while the current fetch is
    being delivered; aiokafka seeks only those with a committed offset above 0. The others keep
    their position, so what the fetch loop dropped as stale meanwhile must be sought back to."""
    from stream_processor import faust_seam

    tp0, tp1, tp2 = TP0, TP("pm25.readings", 1), TP("pm25.readings", 2)

    class Thread:
        def __init__(self, consumer) -> None:
            self.consumer, self.sought = consumer, []

        def assignment(self):
            return {tp0, tp1, tp2}

        async def seek_to_committed(self):
            # the fetch loop runs meanwhile: the rest of the current fetch is dropped as stale
            for tp, offset in [(tp0, 130), (tp1, 41), (tp1, 40), (tp1, 42)]:
                assert self.consumer._stale(tp, fetched_after=0)
                self.consumer._drop_stale(tp, offset)
            return {tp0: 120, tp1: None, tp2: 0}  # tp0 sought by aiokafka; tp1, tp2 not

        def seek(self, tp, offset) -> None:
            self.sought.append((tp, offset))

    async def run():
        app = faust_seam.App("seam-seek-test", broker="kafka://127.0.0.1:1", store="memory://")
        consumer = app.consumer
        consumer._thread = thread = Thread(consumer)
        committed = await consumer.seek_to_committed()
        assert committed == {tp0: 120, tp1: None, tp2: 0}
        assert thread.sought == [(tp1, 40)]  # back to the first record dropped; tp2 dropped nothing
        assert consumer._stale(tp0, fetched_after=0)  # sought by aiokafka: the old fetch is stale
        assert consumer._stale(tp1, fetched_after=1)  # sought back: records fetched before it too
        assert not consumer._stale(tp2, fetched_after=0)  # never sought: its fetch goes on

    asyncio.run(run())


def test_a_fetch_returned_after_the_flow_stopped_is_given_back():
    """Faust's getmany drops a fetch that returns once the flow has stopped (a rebalance began
    while it waited) and seeks to the committed offsets, which leaves a partition without one (a
    changelog partition always) past records never delivered: seen as a table recovery waiting
    for minutes. The seam seeks each partition of such a fetch back to its first record instead
    and hands nothing on; a fetch returned while the flow runs is handed on untouched."""
    from stream_processor import faust_seam

    changelog, readings = TP("app-windows-changelog", 3), TP("pm25.readings", 3)
    fetched = {
        changelog: [SimpleNamespace(offset=o) for o in (19, 20, 21)],
        readings: [SimpleNamespace(offset=o) for o in (700, 701)],
        TP("pm25.readings", 2): [],
    }

    class Thread:
        def __init__(self) -> None:
            self.sought: list[tuple[TP, int]] = []

        async def getmany(self, active_partitions, timeout):
            return fetched

        def seek(self, tp, offset) -> None:
            self.sought.append((tp, offset))

    async def run():
        app = faust_seam.App("seam-getmany-test", broker="kafka://127.0.0.1:1", store="memory://")
        consumer = app.consumer
        consumer._thread = thread = Thread()
        consumer.flow_active = True
        assert await consumer._getmany(active_partitions={changelog, readings}, timeout=1.0) is fetched
        assert thread.sought == []
        consumer.flow_active = False  # the rebalance stopped the flow while the fetch waited
        assert await consumer._getmany(active_partitions={changelog, readings}, timeout=1.0) == {}
        assert sorted(thread.sought) == sorted([(changelog, 19), (readings, 700)])
        assert consumer._read_offset[changelog] == 19 and consumer._read_offset[readings] == 700
        assert consumer._stale(changelog, fetched_after=0)  # a fetch made before the seek is stale

    asyncio.run(run())
