import asyncio

from stream_processor.sending import BatchSender


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, *, timestamp, key, value):
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class FakeProducer:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sent: list[tuple[str, int, list]] = []

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch, topic, *, partition):
        self.sent.append((topic, partition, batch.records))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_one_batch_per_partition_and_full_batches_are_split():
    producer = FakeProducer(capacity=2)
    sender = BatchSender(producer)
    for i in range(5):
        sender.add("f", i % 2, f"k{i}".encode(), b"v")
    sender.add("s", 0, b"x", b"y")

    futures = asyncio.run(_submit(sender))

    assert sender.messages == 6
    assert len(futures) == len(producer.sent) == 4  # f/0: 3 records -> 2 batches; f/1; s/0
    by_partition: dict[tuple[str, int], list] = {}
    for topic, p, records in producer.sent:
        by_partition.setdefault((topic, p), []).extend(records)
    assert by_partition[("f", 0)] == [(b"k0", b"v"), (b"k2", b"v"), (b"k4", b"v")]  # order kept
    assert by_partition[("f", 1)] == [(b"k1", b"v"), (b"k3", b"v")]
    assert by_partition[("s", 0)] == [(b"x", b"y")]


async def _submit(sender: BatchSender) -> list:
    futures = await sender.submit()
    await asyncio.gather(*futures)
    return futures


def test_a_message_that_fits_no_batch_is_an_error():
    sender = BatchSender(FakeProducer(capacity=0))
    try:
        sender.add("f", 0, b"k", b"v")
    except ValueError as err:
        assert "does not fit" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_the_worker_frees_each_forecast_once_its_producer_batch_holds_a_copy():
    """A micro-batch's forecasts must not be in memory twice (as messages and in the producer's
    batches) while it is sent: the worker takes each one off the batch's outputs as it queues it,
    in order."""
    from pm25.settings import Settings
    from stream_processor.app import Worker
    from stream_processor.delivery import Outputs

    forecasts = [(f"s{i}".encode(), f"v{i}".encode(), i % 2) for i in range(5)]
    outputs = Outputs(dead=[], forecasts=list(forecasts), scores=[])
    left_at_append: list[int] = []

    class Watching(FakeBatch):
        def append(self, *, timestamp, key, value):
            left_at_append.append(len(outputs.forecasts))
            return super().append(timestamp=timestamp, key=key, value=value)

    class Producer(FakeProducer):
        def create_batch(self) -> FakeBatch:
            return Watching(self.capacity)

    async def run() -> FakeProducer:
        worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", forecasts_topic="f"), copartitioned=True)
        producer = Producer(capacity=10)
        worker._aiokafka_producer = lambda: producer  # type: ignore[method-assign]
        await asyncio.gather(*await worker.send_outputs(outputs))
        return producer

    producer = asyncio.run(run())
    assert left_at_append == [4, 3, 2, 1, 0]  # each message off the list before the next is queued
    sent = {p: records for topic, p, records in producer.sent if topic == "f"}
    assert sent == {0: [(b"s0", b"v0"), (b"s2", b"v2"), (b"s4", b"v4")], 1: [(b"s1", b"v1"), (b"s3", b"v3")]}
