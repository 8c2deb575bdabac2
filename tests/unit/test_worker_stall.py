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
