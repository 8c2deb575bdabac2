"""Process settings: one frozen object, read from the environment at the entry point and
passed explicitly. Secrets are wrapped so they never appear in logs or reprs.

Environment variables (all optional):

=============================  =========================================  =====================
variable                       meaning                                    default
=============================  =========================================  =====================
PM25_BOOTSTRAP_SERVERS         Kafka bootstrap servers, HOST:PORT[,...]   127.0.0.1:9092
PM25_APP_ID                    worker group id and table prefix           pm25-forecaster
PM25_READINGS_TOPIC            input topic                                pm25.readings
PM25_FORECASTS_TOPIC           output topic                               pm25.forecasts
PM25_DLQ_TOPIC                 dead-letter topic                          pm25.readings.dlq
PM25_SCORES_TOPIC              hindcast scores topic                      pm25.scores
PM25_STATIONS_TOPIC            station metadata topic (compacted)         pm25.stations
PM25_STATION_READINGS_TOPIC    readings keyed by station, which           pm25.readings.by-station
                               ``pm25 route`` forwards to the input topic
                               keyed by network
PM25_PARTITIONS                partitions of the input topic              4
PM25_MODEL_STORE               model store folder                         the bundled store
PM25_EMBEDDED_BROKER           1 = tune clients for the embedded broker   0
PM25_SECURITY_PROTOCOL         PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL   PLAINTEXT
PM25_SASL_MECHANISM            PLAIN, SCRAM-SHA-256, SCRAM-SHA-512        (none)
PM25_SASL_USERNAME             SASL user                                  (none)
PM25_SASL_PASSWORD             SASL password (secret)                     (none)
PM25_SSL_CAFILE                CA bundle for TLS                          (system)
PM25_WEB_PORT                  worker HTTP port (health, metrics)         6066
PM25_LATENESS_HOURS            oldest accepted reading, hours behind      24
                               the station's newest
PM25_BUFFER_HOURS              hours of readings kept per station         72
                               (>= model window + lateness)
PM25_NETWORK_LATENESS_HOURS    how long a network's hour waits for a      2
                               silent member (the bound within which
                               arrival order cannot change a forecast)
=============================  =========================================  =====================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["Secret", "Settings", "SettingsError"]

_SECURITY = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names it."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential: prints as ``'**********'``; ``reveal()`` gives the value."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def _hostport(value: str) -> str:
    for part in value.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"bootstrap servers must be HOST:PORT[,HOST:PORT...], got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "pm25-forecaster"
    readings_topic: str = "pm25.readings"
    forecasts_topic: str = "pm25.forecasts"
    dlq_topic: str = "pm25.readings.dlq"
    scores_topic: str = "pm25.scores"
    stations_topic: str = "pm25.stations"
    station_readings_topic: str = "pm25.readings.by-station"
    partitions: int = 4
    model_store: Path | None = None
    embedded_broker: bool = False
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    web_port: int = 6066
    lateness_hours: int = 24
    buffer_hours: int = 72  # station state: at least model window + lateness (48 + 24)
    #: a network's hour closes when every member reported it or a reading this many hours newer
    #: arrived (pm25.network): arrival order within this bound cannot change a forecast
    network_lateness_hours: int = 2
    #: Faust's liveness check: a partition with unread messages whose stream took no event for this
    #: long is logged as stuck (Faust's stream_processing_timeout)
    stream_timeout_s: int = 300

    def __post_init__(self) -> None:
        _hostport(self.bootstrap_servers)
        if self.security_protocol not in _SECURITY:
            raise SettingsError(f"security protocol must be one of {_SECURITY}, got {self.security_protocol!r}")
        if self.sasl_mechanism is not None and self.sasl_mechanism not in _SASL:
            raise SettingsError(f"SASL mechanism must be one of {_SASL}, got {self.sasl_mechanism!r}")
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise SettingsError("SASL needs PM25_SASL_USERNAME and PM25_SASL_PASSWORD")
        if not 1 <= self.partitions <= 1000:
            raise SettingsError(f"partitions must be 1..1000, got {self.partitions}")
        if not 0 <= self.lateness_hours <= 168:
            raise SettingsError(f"lateness must be 0..168 hours, got {self.lateness_hours}")
        if self.buffer_hours < self.lateness_hours + 1 or self.buffer_hours > 24 * 30:
            raise SettingsError(f"buffer must be > lateness and at most 720 hours, got {self.buffer_hours}")
        if not 1 <= self.network_lateness_hours <= min(12, max(self.lateness_hours, 1)):
            raise SettingsError(
                f"network lateness must be 1..12 hours and at most the lateness, got {self.network_lateness_hours}"
            )
        if not 5 <= self.stream_timeout_s <= 3600:
            raise SettingsError(f"stream timeout must be 5..3600 s, got {self.stream_timeout_s}")
        if not 0 < self.web_port < 65536:
            raise SettingsError(f"web port must be 1..65535, got {self.web_port}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``PM25_*`` variables; keyword overrides (from the CLI) win when not None."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"PM25_{name}")
            return value if value not in (None, "") else None

        def as_int(name: str, default: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError as err:
                raise SettingsError(f"PM25_{name} must be an integer, got {raw!r}") from err

        password = get("SASL_PASSWORD")
        store = get("MODEL_STORE")
        values: dict[str, Any] = {
            "bootstrap_servers": get("BOOTSTRAP_SERVERS") or _DEFAULTS["bootstrap_servers"],
            "app_id": get("APP_ID") or _DEFAULTS["app_id"],
            "readings_topic": get("READINGS_TOPIC") or _DEFAULTS["readings_topic"],
            "forecasts_topic": get("FORECASTS_TOPIC") or _DEFAULTS["forecasts_topic"],
            "dlq_topic": get("DLQ_TOPIC") or _DEFAULTS["dlq_topic"],
            "scores_topic": get("SCORES_TOPIC") or _DEFAULTS["scores_topic"],
            "stations_topic": get("STATIONS_TOPIC") or _DEFAULTS["stations_topic"],
            "station_readings_topic": get("STATION_READINGS_TOPIC") or _DEFAULTS["station_readings_topic"],
            "partitions": as_int("PARTITIONS", _DEFAULTS["partitions"]),
            "model_store": Path(store) if store else None,
            "embedded_broker": (get("EMBEDDED_BROKER") or "0").lower() in ("1", "true", "yes"),
            "security_protocol": (get("SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            "sasl_mechanism": get("SASL_MECHANISM"),
            "sasl_username": get("SASL_USERNAME"),
            "sasl_password": Secret(password) if password else None,
            "ssl_cafile": get("SSL_CAFILE"),
            "web_port": as_int("WEB_PORT", _DEFAULTS["web_port"]),
            "lateness_hours": as_int("LATENESS_HOURS", _DEFAULTS["lateness_hours"]),
            "buffer_hours": as_int("BUFFER_HOURS", _DEFAULTS["buffer_hours"]),
            "network_lateness_hours": as_int("NETWORK_LATENESS_HOURS", _DEFAULTS["network_lateness_hours"]),
            "stream_timeout_s": as_int("STREAM_TIMEOUT_S", _DEFAULTS["stream_timeout_s"]),
        }
        settings = cls(**values)
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **given) if given else settings

    def _sasl(self) -> dict[str, Any]:
        """The keyword arguments kafka-python and aiokafka name alike."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            out["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            out["sasl_plain_username"] = self.sasl_username
        if self.sasl_password:
            out["sasl_plain_password"] = self.sasl_password.reveal()
        return out

    def kafka_python_security(self) -> dict[str, Any]:
        """Security keyword arguments for kafka-python clients."""
        out = self._sasl()
        if self.ssl_cafile:
            out["ssl_cafile"] = self.ssl_cafile
        return out

    def aiokafka_reader(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka consumer that reads topics from the beginning, in no
        group (the station feed, the dashboard, the benchmark's count), with the embedded broker's
        settings when it is the broker."""
        from pm25.embedded import aiokafka_consumer_overrides

        return {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": None,
            "auto_offset_reset": "earliest",
            "enable_auto_commit": False,
            **(aiokafka_consumer_overrides() if self.embedded_broker else {}),
            **self.aiokafka_security(),
        }

    def aiokafka_security(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients (TLS as an SSL context)."""
        out = self._sasl()
        if "SSL" in self.security_protocol:
            import ssl

            out["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return out


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}
