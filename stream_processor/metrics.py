"""Prometheus metrics of the worker and of the router, each in a registry of its own (no global
state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["RouterMetrics", "WorkerMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class WorkerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.readings_in = Counter("pm25_readings_in", "Reading messages consumed", registry=r)
        self.readings_valid = Counter("pm25_readings_valid", "Readings accepted into a station window", registry=r)
        self.duplicates = Counter("pm25_readings_duplicate", "Readings identical to one already held", registry=r)
        self.out_of_order = Counter(
            "pm25_readings_out_of_order", "Readings older than the station's newest, inserted in place", registry=r
        )
        self.replayed = Counter(
            "pm25_readings_replayed", "Messages already applied before a restart (skipped)", registry=r
        )
        self.states_unreadable = Counter(
            "pm25_states_unreadable",
            "Stored station states in an unknown format (the station restarts afresh)",
            registry=r,
        )
        self.stations_known = Gauge(
            "pm25_stations_known", "Stations with metadata (pm25.stations): the networks' members", registry=r
        )
        self.input_partitions = Gauge(
            "pm25_input_partitions",
            "Input partitions assigned to this worker (its share of the consumer group)",
            registry=r,
        )
        self.input_lag = Gauge(
            "pm25_input_lag_messages",
            "Messages in this worker's input partitions not taken in yet (high watermark at the last fetch "
            "less the next offset)",
            registry=r,
        )
        self.split_network_readings = Counter(
            "pm25_readings_split_network",
            "Readings keyed by station of a network whose other stations' keys land in input partitions "
            "this worker does not hold (its forecasts of the network miss them: key readings by network)",
            registry=r,
        )
        self.held_released = Counter(
            "pm25_held_released",
            "Times the worker stopped waiting for partitions behind that stopped moving (BEHIND_MAX_S)",
            registry=r,
        )
        self.input_seeks = Counter(
            "pm25_input_seeks", "Times the consumer skipped input offsets and the worker read them again", registry=r
        )
        self.checkpoints = Counter("pm25_checkpoints", "States saved, then the inputs they cover released", registry=r)
        self.states_saved = Counter("pm25_states_saved", "Windows and network clocks saved (changelog)", registry=r)
        self.forecasts_out = Counter("pm25_forecasts_out", "Forecast messages published", registry=r)
        self.suspended = Counter(
            "pm25_forecasts_suspended", "Forecasts not issued because the window had a long gap", registry=r
        )
        self.dead_letters = Counter(
            "pm25_dead_letters", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.inference_seconds = Histogram(
            "pm25_inference_seconds",
            "Batch inference time, features to encoding (includes queueing behind earlier batches)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pm25_batch_readings", "Readings per micro-batch", buckets=(1, 4, 16, 64, 256, 1024), registry=r
        )
        self.reading_to_forecast_seconds = Histogram(
            "pm25_reading_to_forecast_seconds",
            "Time from a reading's Kafka timestamp to its forecast being handed to the producer",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge("pm25_model_info", "Production model serving (value 1)", ["version"], registry=r)
        self.model_swaps = Counter("pm25_model_swaps", "Model hot swaps", ["result"], registry=r)
        self.hindcast_rmse = Gauge(
            "pm25_hindcast_rmse",
            "Rolling RMSE of realised forecasts and of persistence on the same pairs (µg/m³)",
            ["model", "horizon"],
            registry=r,
        )
        self.hindcast_pairs = Gauge(
            "pm25_hindcast_pairs", "Forecast/actual pairs scored since start", ["horizon"], registry=r
        )

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RouterMetrics:
    """The repartition stage's (``pm25 route``, stream_processor.router)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.routed = Counter("pm25_router_readings_routed", "Messages forwarded to the readings topic", registry=r)
        self.kept_key = Counter(
            "pm25_router_messages_kept_key",
            "Messages forwarded with their own key: not a reading, or keyed by neither its station nor its "
            "network (the worker dead-letters them)",
            registry=r,
        )
        self.waiting = Gauge("pm25_router_waiting", "Readings taken in and waiting in the event-time merge", registry=r)
        self.partitions = Gauge("pm25_router_input_partitions", "Input partitions assigned to this router", registry=r)
        self.pending = Gauge(
            "pm25_router_pending_partitions",
            "Input partitions the merge waits for (behind their end, or delivered within 2 s)",
            registry=r,
        )
        self.stuck = Gauge(
            "pm25_router_stuck_partitions", "Input partitions behind that have not moved for 60 s", registry=r
        )
        self.stations_known = Gauge("pm25_router_stations_known", "Stations with metadata", registry=r)
