"""The worker written the way most projects start, for the benchmark only (never deployed).

Each reading is decoded into a Faust Record with the stdlib JSON codec, the station window is a
JSON list in the table, each reading gets its own inference call and its own awaited send. It
computes the same forecasts as the production worker (same engine), so the benchmark compares
like with like. Run: ``python -m benchmarks.naive_worker`` with the same PM25_* environment.
"""

from __future__ import annotations

import json
import logging
import sys

import faust
import numpy as np

from model_store import default_store, load_production
from pm25.embedded import faust_overrides
from pm25.kafka import ensure_topics
from pm25.schema import InvalidReading, reading_from_mapping
from pm25.settings import Settings
from pm25.window import StationWindow, TooLate
from stream_processor.engine import Engine
from stream_processor.inference import OnnxForecaster


class ReadingRecord(faust.Record, serializer="json"):
    station_id: str
    timestamp: str
    pm25: float | None = None
    temperature_c: float | None = None
    dew_point_c: float | None = None
    pressure_hpa: float | None = None
    wind_speed_ms: float | None = None
    wind_direction: str | None = None
    precipitation_mm: float | None = None


def build(settings: Settings) -> faust.App:
    engine = Engine(
        OnnxForecaster(load_production(settings.model_store or default_store())),
        lateness_hours=settings.lateness_hours,
        buffer_hours=settings.buffer_hours,
    )
    conf = {
        "broker": f"kafka://{settings.bootstrap_servers}",
        "store": "memory://",
        "topic_partitions": settings.partitions,
        "web_port": settings.web_port,
        "consumer_auto_offset_reset": "earliest",
    }
    if settings.embedded_broker:
        conf.update(faust_overrides())
    app = faust.App(settings.app_id, **conf)
    readings = app.topic(settings.readings_topic, value_type=ReadingRecord, key_type=str)
    forecasts = app.topic(settings.forecasts_topic, key_type=str, value_serializer="raw")
    windows = app.Table("naive-windows", default=None, partitions=settings.partitions)
    adaptations: dict = {}  # the naive worker keeps the online adaptation in memory only

    @app.agent(readings)
    async def process(stream):  # type: ignore[no-untyped-def]
        async for record in stream:
            try:
                reading = reading_from_mapping(record.asdict())
            except InvalidReading:
                continue
            stored = windows.get(reading.station_id)
            state = None
            if stored is not None:
                state = StationWindow(
                    newest_hour=stored["newest"],
                    present=np.array(stored["present"], dtype=np.uint8),
                    rows=np.array(stored["rows"], dtype=np.float32),
                )
            one = {} if state is None else {reading.station_id: state}
            try:
                requests = engine.ingest(one, {}, reading).requests
            except TooLate:
                continue
            state = one[reading.station_id]
            windows[reading.station_id] = {
                "newest": state.newest_hour,
                "present": state.present.tolist(),
                "rows": json.loads(json.dumps(state.rows.tolist())),
            }
            for request in requests:
                (forecast,) = engine.forecast([request], adaptations)
                if forecast is not None:
                    await forecasts.send(key=forecast.station_id, value=forecast.value)

    return app


def main() -> None:
    settings = Settings.from_env()
    ensure_topics(settings)
    app = build(settings)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
