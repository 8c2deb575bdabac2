"""`pm25 dashboard`: follow readings, forecasts and scores; serve the pages, the JSON API and
server-sent events. A separate process (not a page on the worker) because with several workers each
one sees only its own partitions; the dashboard reads every partition.

Routes: ``/`` overview, ``/station/{id}`` station page, ``/api/stations``, ``/api/stations/{id}``,
``/api/events`` (SSE: one ``update`` event per change batch), ``/static/*`` (everything the pages
need; nothing from a CDN), ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from dashboard.state import DashboardState
from pm25.schema import InvalidReading, forecast_from_json, parse_reading
from pm25.settings import Settings
from pm25.stations import station_from_json

__all__ = ["create_app", "run_dashboard"]

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
STATE: web.AppKey[DashboardState] = web.AppKey("state", DashboardState)
CHANGED: web.AppKey[asyncio.Condition] = web.AppKey("changed", asyncio.Condition)
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("closing", asyncio.Event)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _station_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "station.html")


async def _api_stations(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return _json({"version": state.version, "stations": state.stations()})


async def _api_station(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = state.station(request.match_info["station_id"])
    if body is None:
        return _json({"error": "unknown station"}, status=404)
    return _json({"version": state.version} | body)


async def _health(request: web.Request) -> web.Response:
    return _json({"status": "alive", "stations": len(request.app[STATE].stations())})


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``update`` with the state version, at most every 0.5 s."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    state, changed = request.app[STATE], request.app[CHANGED]
    seen = -1
    closing = request.app[CLOSING]
    try:
        while not closing.is_set():
            if state.version != seen:
                seen = state.version
                await resp.write(f"event: update\ndata: {seen}\n\n".encode())
            async with changed:
                try:
                    await asyncio.wait_for(changed.wait(), timeout=15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
            await asyncio.sleep(0.5)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def _consume(app: web.Application, settings: Settings) -> None:
    from aiokafka import AIOKafkaConsumer

    state, changed = app[STATE], app[CHANGED]
    kwargs = settings.aiokafka_reader()
    topics = (settings.readings_topic, settings.forecasts_topic, settings.scores_topic, settings.stations_topic)
    while True:
        consumer = AIOKafkaConsumer(*topics, **kwargs)
        try:
            await consumer.start()
            log.info("dashboard following %s on %s", ", ".join(topics), settings.bootstrap_servers)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                n = 0
                for tp, messages in batches.items():
                    for msg in messages:
                        n += _apply(state, tp.topic, msg.value, settings)
                if n:
                    async with changed:
                        changed.notify_all()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a broker outage must not kill the page; retry
            log.warning("dashboard consumer error (%s); retrying in 2 s", err)
            await asyncio.sleep(2)
        finally:
            await consumer.stop()


def _apply(state: DashboardState, topic: str, value: bytes | None, settings: Settings) -> int:
    if value is None:
        return 0
    try:
        if topic == settings.readings_topic:
            state.add_reading(parse_reading(value))
        elif topic == settings.forecasts_topic:
            state.add_forecast(forecast_from_json(value))
        elif topic == settings.stations_topic:
            state.add_station(station_from_json(value))
        else:
            state.add_score(orjson.loads(value))
    except (InvalidReading, ValueError, KeyError, TypeError):
        return 0  # invalid readings are the worker's to dead-letter; the page skips them
    return 1


def create_app(settings: Settings | None, state: DashboardState | None = None) -> web.Application:
    """The web app; with ``settings`` it also starts the Kafka consumer (tests may pass None)."""
    app = web.Application()
    app[STATE] = state or DashboardState()
    app[CHANGED] = asyncio.Condition()
    app[CLOSING] = asyncio.Event()

    async def close_streams(app: web.Application) -> None:  # end open event streams on shutdown
        app[CLOSING].set()
        async with app[CHANGED]:
            app[CHANGED].notify_all()

    app.on_shutdown.append(close_streams)
    app.router.add_get("/", _index)
    app.router.add_get("/station/{station_id}", _station_page)
    app.router.add_get("/api/stations", _api_stations)
    app.router.add_get("/api/stations/{station_id}", _api_station)
    app.router.add_get("/api/events", _events)
    app.router.add_get("/health", _health)
    app.router.add_static("/static/", STATIC)
    if settings is not None:

        async def start(app: web.Application) -> Any:
            task = asyncio.create_task(_consume(app, settings))
            yield
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        app.cleanup_ctx.append(start)
    return app


def run_dashboard(settings: Settings, host: str, port: int) -> None:
    log.info("dashboard on http://%s:%d/", host, port)
    web.run_app(create_app(settings), host=host, port=port, print=None, shutdown_timeout=3)
