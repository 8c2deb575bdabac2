import asyncio
import logging

from stream_processor.app import dump_tasks


def test_task_dump_shows_what_each_task_awaits(caplog):
    async def waits_for_ever(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> None:
        event = asyncio.Event()
        task = asyncio.create_task(waits_for_ever(event), name="the-stuck-one")
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING):
            dump_tasks()
        event.set()
        await task

    asyncio.run(main())
    text = caplog.text
    assert "task the-stuck-one:" in text
    assert "in waits_for_ever" in text  # the await chain reaches into the coroutine
    assert "in wait" in text  # ... and down to asyncio.Event.wait
