"""A healthy worker under steady load logs no ERROR or WARNING line, for longer than Faust's
stream-processing timeout: Faust's own liveness checks (run every 7 s) see its stream processing.

The timeout is set to 15 s here (PM25_STREAM_TIMEOUT_S; Faust's default is 5 minutes) so that the
checks pass their deadline several times within the test: before the seam's monitor recorded stream
events again, a healthy worker logged "Stream has not started processing" from the first deadline on.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from pm25.settings import Settings
from pm25_ops.processes import WorkerProcess, metric_value
from producer.replay import load_source
from tests.integration.conftest import collect
from tests.integration.test_faults import _paced_send, expected_forecasts

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STREAM_TIMEOUT_S = 15
LOAD_SECONDS = 4 * STREAM_TIMEOUT_S
#: a loud line in either of the worker's log formats: Faust's "[date] [pid] [LEVEL] ..." (once the
#: Faust worker runs) and the start-up's "date time,ms LEVEL logger: ..."
LEVEL = re.compile(
    r"^(\[[^\]]+\] \[\d+\] \[(ERROR|WARNING|CRITICAL)\]|\d{4}-\d\d-\d\d [\d:,]+ (ERROR|WARNING|CRITICAL) )"
)


def test_a_healthy_worker_under_load_logs_no_error_or_warning(settings_env, settings, tmp_path, report_counts):
    env = {**settings_env, "PM25_STREAM_TIMEOUT_S": str(STREAM_TIMEOUT_S)}
    readings = list(load_source("multisite", [], hours=24 * 30))
    rate = len(readings) / LOAD_SECONDS  # spread over the whole load period
    expected = expected_forecasts(settings, readings)
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(env, log_path).start()
    try:
        worker.wait_ready()
        started = time.monotonic()
        sender = threading.Thread(target=_paced_send, args=(Settings.from_env(env), readings, rate))
        sender.start()
        sender.join()
        msgs = collect(settings, settings.forecasts_topic, lambda m: len(m) >= len(expected), timeout=120)
        time.sleep(2 * 7)  # two more liveness checks after the last reading
        loaded = time.monotonic() - started
        assert worker.proc is not None and worker.proc.poll() is None
        lag = metric_value(worker.metrics(), "pm25_input_lag_messages")  # caught up: nothing waits
    finally:
        worker.stop()
    lines = log_path.read_text(errors="replace").splitlines()
    loud = [line for line in lines if LEVEL.match(line)]
    report_counts(
        f"readings {len(readings)} at {rate:.0f}/s over {loaded:.0f} s (stream timeout {STREAM_TIMEOUT_S} s), "
        f"forecasts {len(msgs)} of {len(expected)}; log lines {len(lines)}, ERROR/WARNING {len(loud)}; "
        f"input lag at the end {lag:.0f}"
    )
    assert len(msgs) >= len(expected)
    assert lag == 0
    assert loaded > 3 * STREAM_TIMEOUT_S
    assert any(line.startswith("[") and "[INFO]" in line for line in lines)  # Faust's format was seen
    assert loud == [], "\n".join(loud[:20])
