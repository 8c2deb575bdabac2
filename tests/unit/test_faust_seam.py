"""The one seam (stream_processor.faust_seam): every Faust and aiokafka internal the worker relies on
exists with the shape it relies on in the pinned versions, and no other module reaches a private
attribute of an object it does not own. A Faust or aiokafka upgrade that moves one fails here."""

import ast
import asyncio
import inspect
from importlib.metadata import version
from pathlib import Path

import aiokafka
import faust
from faust.streams import Stream
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import Message

from stream_processor import faust_seam

ROOT = Path(__file__).resolve().parents[2]
SEAM = Path("stream_processor/faust_seam.py")
#: private names that are public API by convention (namedtuple's)
PUBLIC_BY_CONVENTION = {"_replace", "_asdict", "_fields", "_make"}


def private_reaches(path: Path) -> list[str]:
    """``obj._name`` where obj is not self or cls: a reach into another object's internals."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
            continue
        if node.attr not in PUBLIC_BY_CONVENTION:
            found.append(f"{path}:{node.lineno}: .{node.attr}")
    return found


def test_only_the_seam_reaches_into_other_objects():
    packages = (
        "pm25",
        "pm25_ops",
        "stream_processor",
        "producer",
        "training",
        "dashboard",
        "benchmarks",
        "model_store",
    )
    outside = []
    seam = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            (seam if rel == SEAM else outside).extend(private_reaches(path))
    assert outside == []
    assert seam, "the seam itself must be what the scan sees (is the scan broken?)"


def test_pinned_versions_are_the_ones_checked():
    assert version("faust-streaming") == "0.15.3"
    assert version("aiokafka").startswith("0.14.")


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_overridden_methods_keep_their_shape():
    base = faust_aiokafka.Consumer
    assert inspect.iscoroutinefunction(base._drain_messages) and params(base._drain_messages) == ["self", "fetcher"]
    assert inspect.iscoroutinefunction(base._add_gap) and params(base._add_gap) == [
        "self",
        "tp",
        "offset_from",
        "offset_to",
    ]
    assert params(base._new_consumer_thread) == ["self"]
    assert inspect.iscoroutinefunction(base._getmany) and params(base._getmany) == [
        "self",
        "active_partitions",
        "timeout",
    ]
    # broker_committed_offset: the consumer thread runs aiokafka's committed() in its own loop
    assert inspect.iscoroutinefunction(faust_aiokafka.AIOKafkaConsumerThread.call_thread)
    assert params(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer) == ["self"]
    assert inspect.iscoroutinefunction(aiokafka.AIOKafkaConsumer.committed)
    assert params(aiokafka.AIOKafkaConsumer.committed) == ["self", "partition"]
    assert params(base.seek_to_committed) == ["self"]
    thread = faust_aiokafka.AIOKafkaConsumerThread
    assert params(thread._create_worker_consumer) == ["self", "transport"]
    assert faust_aiokafka.Transport.Consumer is faust_aiokafka.Consumer  # the class attribute replaced
    assert params(faust.App._new_transport) == ["self"]
    assert params(Stream.take_events) == ["self", "max_", "within"]
    for name in ("on_message_in", "on_stream_event_in", "on_stream_event_out", "on_message_out"):
        assert hasattr(faust.Sensor, name)


def test_the_attributes_read_exist_on_live_objects():
    async def build():
        app = faust_seam.App("seam-test", broker="kafka://127.0.0.1:1", store="memory://", fetch_max_wait_ms=20)
        consumer = app.consumer
        assert isinstance(consumer, faust_seam.Consumer)
        for name in ("_committed_offset", "_read_offset"):
            assert hasattr(getattr(consumer, name), "get"), name
        assert hasattr(consumer._unacked_messages, "discard")
        assert isinstance(consumer._n_acked, int) and hasattr(consumer, "_commit_every")
        assert hasattr(consumer._stopped, "is_set") and hasattr(consumer.suspend_flow, "is_set")
        assert callable(app.producer._ensure_producer)
        assert faust_seam.committed_offsets(app) is consumer._committed_offset
        client = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1500)
        assert client._fetch_max_wait_ms == 1500  # the attribute the seam sets before start
        assert hasattr(client, "_subscription")
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
        assert callable(producer.create_batch) and inspect.iscoroutinefunction(producer.send_batch)
        # a message's acknowledgement as withhold_ack and the agent use it
        msg = Message("t", 0, 5, 0.0, 0, None, None, b"k", b"v", None)
        msg.incref()
        assert msg.refcount == 1 and msg.acked is False

    asyncio.run(build())


def test_a_recovered_table_keeps_the_value_its_rule_prefers_in_any_order():
    """RecoveredTable goes through Faust's own changelog application (the memory store): what the
    rule refuses is not applied, what it keeps is, and deletions still delete."""
    from types import SimpleNamespace

    app = faust.App("seam-table-test", broker="kafka://127.0.0.1:1", store="memory://")
    table = faust_seam.recovered_table(
        app, "t", lambda incoming, held: held is None or incoming is None or incoming > held
    )

    def event(key, value, partition):
        return SimpleNamespace(key=key, value=value, message=SimpleNamespace(value=value, partition=partition))

    table.apply_changelog_batch([event("a", b"5", 1), event("a", b"3", 2), event("b", b"1", 0), event("b", b"2", 0)])
    assert dict(table.data.items()) == {"a": b"5", "b": b"2"}
    table.apply_changelog_batch([event("a", b"4", 3), event("a", b"9", 3), event("b", None, 0)])
    assert dict(table.data.items()) == {"a": b"9"}
    assert type(table) in {type(t) for t in app.tables.values()}
