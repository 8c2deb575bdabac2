"""Running the worker as a child process, for operations and tests: the demo, the benchmarks and
the integration tests start, probe and stop workers through :class:`WorkerProcess`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from pm25.embedded import free_port

__all__ = ["RouterProcess", "WorkerProcess", "metric_value"]


class _Child:
    """A `pm25` command as a child process with its log in a file."""

    command = ""
    web_port = 0  # where the child serves /metrics

    def __init__(self, settings_env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = {**os.environ, **settings_env}
        self.log_path = log_path
        self.args = args  # the command's arguments
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(  # noqa: S603 - our own command, its arguments from the caller
            [sys.executable, "-m", "pm25_ops.cli", self.command, *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,  # Faust creates its data folder ({app id}-data) beside the log
        )
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if hasattr(self, "_log"):
            self._log.close()


class RouterProcess(_Child):
    """`pm25 route` as a child process (the integration tests and the benchmark), its metrics on a
    free port."""

    command = "route"

    def __init__(self, settings_env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.web_port = free_port()
        super().__init__(settings_env, log_path, (*args, "--metrics-port", str(self.web_port)))


class WorkerProcess(_Child):
    """`pm25 worker` as a child process with its log in a file (used by the demo and tests)."""

    command = "worker"

    def __init__(self, settings_env: dict[str, str], log_path: Path) -> None:
        super().__init__(settings_env, log_path)
        self.web_port = int(settings_env["PM25_WEB_PORT"])

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds until /ready answered 200; raises RuntimeError if the worker died or timed out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; log:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout} s; log:\n{self.tail()}")

    def ready_status(self) -> int | None:
        """The HTTP status /ready answers now (None: no answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/ready", timeout=3) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return None

    def events(self, limit: int = 400) -> str:
        """The log's lines that tell what happened, from the start (for a failed test's report):
        warnings and errors, the worker's own lines, and the milestones of each rebalance (Faust's
        tables of offsets, service start-ups and task stacks left out; lines cut at 300 characters).
        The last ``limit``."""
        milestones = ("generation id", "Seek stream partitions", "Worker ready", "Restoring state", "Recovery complete")
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        keep = [
            line
            for line in lines
            if line.lstrip("[").startswith("20")  # a log record's first line (not a table row or a stack frame)
            and ("WARNING" in line or "ERROR" in line or "[INFO] [^" not in line or any(m in line for m in milestones))
            and "Starting..." not in line
            and "Stopping..." not in line
        ]
        return "\n".join(line[:300] for line in keep[-limit:])


def metric_value(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (all label sets) in a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total
