"""Producing many messages cheaply: one record batch per topic partition.

Sending each forecast through Faust's ``producer.send`` costs a coroutine, the sensors, aiokafka's
per-message partitioning and a future per message (about a third of the worker's time at full
load). A micro-batch already knows every message and its partition, so the messages are appended
to one aiokafka ``BatchBuilder`` per topic partition and each batch is submitted once; the broker's
acknowledgement of a batch is one future. A full batch (``producer_max_batch_size``) is submitted
and a new one started.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["BatchSender"]


class BatchSender:
    def __init__(self, producer: Any) -> None:
        """``producer``: a started ``aiokafka.AIOKafkaProducer`` without serializers."""
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self.messages = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        batch = self._open.get((topic, partition))
        if batch is None:
            batch = self._open[(topic, partition)] = self._producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:  # full: submit it, start another
            self._full.append((topic, partition, batch))
            batch = self._open[(topic, partition)] = self._producer.create_batch()
            if batch.append(timestamp=None, key=key, value=value) is None:
                raise ValueError(f"a message of {len(value)} bytes does not fit in an empty batch")
        self.messages += 1

    async def submit(self) -> list[asyncio.Future[Any]]:
        """Queue every batch for sending; returns one delivery future per batch."""
        batches = self._full + [(topic, p, b) for (topic, p), b in self._open.items()]
        self._full, self._open = [], {}
        return [await self._producer.send_batch(b, topic, partition=p) for topic, p, b in batches]
