"""The compose file as processes: every long-running service of docker-compose.yml is started with
its own command and environment (service host names mapped to 127.0.0.1, the kafka service replaced
by the session's Apache Kafka, published ports by free ones), in the order its depends_on gives,
waiting for its healthchecks; forecasts must flow from the producer service to the viewer. Compose,
the CLI and the settings can no longer drift apart unnoticed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pm25.embedded import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (no .env)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


def _services() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return spec["services"]


def _order(services: dict[str, dict]) -> list[str]:
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for dep in services[name].get("depends_on", {}) or {}:
            visit(dep)
        done.append(name)

    for name in services:
        visit(name)
    return done


def _map_ports(text: str, port_map: dict[str, str]) -> str:
    """The service's own port numbers in a healthcheck replaced by the free ones it runs on."""
    return re.sub(r"\b(\d{4,5})\b", lambda m: port_map.get(m.group(1), m.group(1)), text)


def _healthy(cmd: list[str], env: dict[str, str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=10, check=False).returncode == 0:
            return True
        time.sleep(1.0)
    return False


def test_compose_services_as_processes_carry_forecasts_to_the_viewer(broker, tmp_path, report_counts):
    servers, embedded = broker
    assert not embedded
    services = {k: v for k, v in _services().items() if not v.get("profiles")}
    assert {"kafka", "topics", "stations", "worker", "producer", "viewer", "dashboard"} <= services.keys()
    run = f"{int(time.time() * 1000) % 10**8}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    try:
        for name in _order(services):
            svc = services[name]
            if name == "kafka":
                continue  # the session's Apache Kafka stands in for it
            env = {k: _interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()}
            env["PM25_BOOTSTRAP_SERVERS"] = servers  # kafka:19092 -> the broker on 127.0.0.1
            for key in (
                "PM25_READINGS_TOPIC",
                "PM25_FORECASTS_TOPIC",
                "PM25_DLQ_TOPIC",
                "PM25_SCORES_TOPIC",
                "PM25_STATIONS_TOPIC",
            ):
                env[key] = f"{env[key]}-{run}"  # this run's own topics on the shared test broker
            env["PM25_APP_ID"] = f"pm25-compose-{run}"
            port_map: dict[str, str] = {}
            if "PM25_WEB_PORT" in env:
                port_map[env["PM25_WEB_PORT"]] = str(free_port())
                env["PM25_WEB_PORT"] = port_map[env["PM25_WEB_PORT"]]
            args = [_interpolate(str(a)) for a in svc["command"]]
            for i, a in enumerate(args[:-1]):
                if a == "--port":
                    port_map[args[i + 1]] = args[i + 1] = str(free_port())
            full_env = {**os.environ, **env}
            logs[name] = tmp_path / f"{name}.log"
            out = open(logs[name], "wb")  # noqa: SIM115 - closed with the test
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "pm25_ops.cli", *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            dependents = [s for s in services.values() if name in (s.get("depends_on") or {})]
            conditions = {(s.get("depends_on") or {})[name].get("condition") for s in dependents}
            if "service_completed_successfully" in conditions:
                assert procs[name].wait(timeout=120) == 0, logs[name].read_text()[-2000:]
            check = (svc.get("healthcheck") or {}).get("test")
            if check and ("service_healthy" in conditions or name == "dashboard"):
                cmd = [_interpolate(str(a)) for a in check[1:]]
                cmd = [_map_ports(a, port_map) for a in cmd]
                if cmd[0] == "python":
                    cmd[0] = sys.executable
                assert _healthy(cmd, full_env, 120), f"{name} never healthy: {logs[name].read_text()[-2000:]}"
        deadline = time.monotonic() + 120
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [
                x for x in logs["viewer"].read_text(errors="replace").splitlines() if " +1h " in x and "worst:" in x
            ]
            if len(lines) >= 50:
                break
            time.sleep(1.0)
        report_counts(f"services started as processes: {', '.join(procs)}; forecast lines at the viewer {len(lines)}")
        assert procs["stations"].wait(timeout=60) == 0, logs["stations"].read_text()[-2000:]
        assert "published 12 stations" in logs["stations"].read_text()
        assert len(lines) >= 50, logs["viewer"].read_text()[-2000:] + logs["worker"].read_text()[-2000:]
        for name in ("worker", "viewer", "dashboard", "producer"):
            assert procs[name].poll() is None, f"{name} exited: {logs[name].read_text()[-2000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
