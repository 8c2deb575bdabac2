"""The Prometheus rules and scrape configuration shipped in monitoring/: promtool (Prometheus's own
checker, from Debian's package: `make test` fetches it) checks the rules and runs their unit tests
(monitoring/alerts_test.yml: each alert fires on the series that should raise it and stays silent
on a healthy worker's); every pm25 series and label the rules name is one the worker exports; the
compose monitoring profile loads both files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream_processor.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"


def _promtool() -> str:
    found = shutil.which("promtool") or str(ROOT / ".cache/prometheus/usr/bin/promtool")
    assert Path(found).is_file(), "promtool is missing: `make test` fetches it (Debian's prometheus package)"
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _exported() -> dict[str, set[str]]:
    """The worker's series names (with the suffixes Prometheus adds) and their label names, with
    every labelled metric given a value so that it appears."""
    m = WorkerMetrics()
    m.dead_letters.labels(reason="bad_json").inc()
    m.model_swaps.labels(result="refused").inc()
    m.hindcast_rmse.labels(model="forecast", horizon="1").set(1.0)
    m.hindcast_pairs.labels(horizon="1").set(1.0)
    m.set_model("v")
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def _named(expr: str) -> dict[str, set[str]]:
    """The pm25 series an expression names, each with the labels its matchers use."""
    found: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"\b(pm25_\w+)(?:\{([^}]*)\})?", expr):
        found.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    tool = _promtool()
    check = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in check.stdout
    tests = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=MONITORING, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts_test.yml").read_text()))
    assert tested == {r["alert"] for r in _rules()}  # every alert has a test


def test_the_rules_name_only_series_and_labels_the_worker_exports():
    exported = _exported()
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules) >= 8
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        named = _named(rule["expr"])
        for name, labels in named.items():
            assert name in exported, f"{rule['alert']}: {name} is not exported by the worker"
            assert labels <= exported[name] | {"job", "instance"}, f"{rule['alert']}: {name} {labels}"
    # the check can fail: a misspelt series, an unknown label
    assert "pm25_forecast_out_total" not in exported
    assert _named('rate(pm25_forecasts_out_total{reason!="x"}[5m])') == {"pm25_forecasts_out_total": {"reason"}}
    assert "reason" not in exported["pm25_forecasts_out_total"]


def test_prometheus_scrapes_the_workers_and_loads_the_rules_in_the_compose_monitoring_profile(tmp_path):
    from pm25_ops.cli import build_parser

    conf = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    assert set(jobs) == {"pm25-worker", "pm25-router"}
    job = jobs["pm25-worker"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker_port = int(compose["services"]["worker"]["environment"]["PM25_WEB_PORT"])
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == worker_port
    # the router (profile route) on the port `pm25 route` serves its metrics on by default
    (rsd,) = jobs["pm25-router"]["dns_sd_configs"]
    router_port = build_parser().parse_args(["route"]).metrics_port
    assert rsd["names"] == ["router"] and rsd["type"] == "A" and rsd["port"] == router_port
    assert compose["services"]["router"]["command"] == ["route"]
    assert str(router_port) in compose["services"]["router"]["ports"]
    prom = compose["services"]["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./monitoring/prometheus.yml"
    assert conf["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert mounts["/etc/prometheus/alerts.yml"] == "./monitoring/alerts.yml"
    # promtool checks the configuration as the container sees it (the rules where the profile mounts them)
    (tmp_path / "alerts.yml").write_text((MONITORING / "alerts.yml").read_text())
    text = (
        (MONITORING / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", str(tmp_path / "alerts.yml"))
    )
    (tmp_path / "prometheus.yml").write_text(text)
    check = subprocess.run(
        [_promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
