"""Bad arguments give one line on stderr and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from pm25.stations import BEIJING_STATIONS
from pm25_ops.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--rate", "-5"],
        ["produce", "--hours", "x"],
        ["produce", "--rate", "1", "--speedup", "2"],
        ["broker", "--port", "70000"],
        ["nosuchcommand"],
        ["train", "--grid", "huge"],
        ["stations"],
        ["stations", "load"],
        ["produce", "--key", "region"],
        ["route", "--max-poll-records", "0"],
        ["route", "--metrics-port", "70000"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_regional_refuses_more_than_sixteen_neighbours(capsys):
    assert main(["regional", "--neighbours", "17"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at most 16" in err[0]


def test_missing_readings_file_is_one_line(tmp_path, capsys):
    code = main(["backtest", "--readings", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.jsonl")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such readings file" in err[0]


def test_bad_environment_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "pm25_ops.cli", "topics"],
        capture_output=True,
        text=True,
        env={"PM25_BOOTSTRAP_SERVERS": "not-a-server", "PATH": ""},
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "bootstrap servers" in proc.stderr


def test_backtest_writes_forecasts(tmp_path):
    from pm25.adapters import RowError, multisite_files, read_multisite, write_canonical_csv

    readings = [
        r for _, r in zip(range(60), read_multisite(multisite_files()[0]), strict=False) if not isinstance(r, RowError)
    ]
    csv_path = tmp_path / "r.csv"
    write_canonical_csv(csv_path, readings)
    out = tmp_path / "f.jsonl"
    assert main(["backtest", "--readings", str(csv_path), "--out", str(out), "--quiet"]) == 0
    lines = out.read_bytes().splitlines()
    assert 0 < len(lines) <= len(readings)


@pytest.mark.parametrize(
    "argv",
    [
        ["forecasts", "--timeout", "2"],
        ["topics", "--connect-timeout", "2"],
        ["produce", "--hours", "1", "--connect-timeout", "2"],
        ["worker", "--connect-timeout", "2"],
        ["dashboard", "--connect-timeout", "2"],
        ["stations", "load", str(BEIJING_STATIONS), "--connect-timeout", "2"],
        ["route", "--connect-timeout", "2"],
    ],
)
def test_an_unreachable_broker_is_one_line_and_a_non_zero_exit(argv, capsys):
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach a Kafka broker at 127.0.0.1:1 within 2 s" in err[0]


def test_route_refuses_to_read_the_topic_it_writes(capsys):
    assert main(["route", "--station-readings-topic", "pm25.readings", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two different topics" in err[0]


def test_kafka_without_java_or_maven_says_so_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    monkeypatch.setenv("PM25_KAFKA_CACHE", str(tmp_path / "cache"))  # nothing resolved yet
    assert main(["kafka", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "java and mvn not found" in err[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("pm25 ")


def test_kafka_cluster_ids_never_start_with_a_dash():
    from pm25.apache_kafka import _cluster_id

    ids = [_cluster_id() for _ in range(5000)]  # about 78 would start with "-" by chance
    assert not any(i.startswith("-") for i in ids) and all(len(i) == 22 for i in ids)


def test_stations_load_checks_the_whole_file_first(tmp_path, capsys):
    assert main(["stations", "load", str(BEIJING_STATIONS), "--dry-run"]) == 0
    assert "12 stations in 1 network(s) (beijing): file OK" in capsys.readouterr().out
    bad = tmp_path / "s.csv"
    bad.write_text("station_id,name,latitude,longitude,network\nA,a,1,1,n\nB,b,1,200,n\n", encoding="utf-8")
    # a bad line: one error naming it, exit 2, and no broker contacted (none listens on port 1)
    assert main(["stations", "load", str(bad), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:3: out_of_range: longitude" in err[0]


def test_a_missing_training_extra_is_one_line_before_any_work(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    assert main(["regional", "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the training extra" in err[0] and "no sklearn" in err[0]


def test_readings_keyed_by_network_use_the_station_metadata():
    from pm25.schema import Reading
    from pm25.stations import read_stations_csv
    from producer.replay import network_keys, station_key

    key = network_keys({s.station_id: s.network for s in read_stations_csv().values()})
    assert key(Reading("Dongsi", 378_360, pm25=1.0)) == b"beijing"
    assert key(Reading("Elsewhere", 378_360, pm25=1.0)) == b"Elsewhere"  # no metadata: its own id
    assert station_key(Reading("Dongsi", 378_360, pm25=1.0)) == b"Dongsi"


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--station-file", "x.csv"],  # only with --key network
        ["produce", "--key", "network", "--station-file", "/no/such/stations.csv"],
    ],
)
def test_produce_s_station_file_mistakes_are_one_line_before_any_connection(argv, capsys):
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--station-file" in err[0]


def test_the_worker_start_up_calls_to_the_broker_leave_kafka_python_out_of_the_worker_process():
    """kafka-python (7.6 MB resident) is used by the worker's start-up calls only, in a child process;
    the serving process, which runs on aiokafka, must never import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pm25.settings import Settings\n"
        "from pm25_ops.cli import Unreachable, _worker_start_up\n"
        "import stream_processor.app\n"
        "try:\n"
        "    _worker_start_up(Settings(bootstrap_servers='127.0.0.1:1'), 1.0, 30)\n"
        "except Unreachable as err:\n"
        "    print('unreachable:', err)\n"
        "print('kafka-python loaded:', any(m == 'kafka' or m.startswith('kafka.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "unreachable: cannot reach a Kafka broker at 127.0.0.1:1 within 1 s" in out
    assert "kafka-python loaded: False" in out


def test_evaluate_scores_a_bundle_other_than_production(tmp_path, capsys):
    import json

    from model_store import default_store, load_production

    older = "ensemble-20261202T221741Z"
    assert load_production(default_store()).version != older
    argv = ["evaluate", "--split", "val", "--stations", "Dongsi", "--no-yardstick", "--quiet", "--out", str(tmp_path)]
    main([*argv, "--bundle", older])
    assert json.loads((tmp_path / "evaluation.json").read_text())["model_version"] == older
    assert "IN-SAMPLE" not in json.loads((tmp_path / "evaluation.json").read_text())["period"]
    # the production bundle was refit on the validation year: its report says so
    main(argv)
    assert "IN-SAMPLE" in json.loads((tmp_path / "evaluation.json").read_text())["period"]
    # a scenario on that year keeps the warning beside its own note
    main([*argv, "--scenario", "quarter"])
    period = json.loads((tmp_path / "evaluation.json").read_text())["period"]
    assert "scenario quarter" in period and "IN-SAMPLE" in period
    assert main([*argv, "--bundle", "no-such-version"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "no-such-version" in err[-1] and "Traceback" not in "\n".join(err)


def test_promote_verifies_and_refuses_an_experiment_on_a_shifted_split(tmp_path, capsys):
    """`pm25 promote VERSION` makes a store's verified bundle production; a bundle trained on a
    shifted split (`pm25 train --shift-years`) is an experiment: one line, exit 2, pointer kept."""
    from model_store import default_store, load_production, production_version, write_bundle

    source = load_production(default_store())
    plain = {k: v for k, v in source.spec.items() if k != "alone_graph"}  # the graph alone serves
    spec = dict(plain, version="shifted-one")
    spec["data"] = dict(spec.get("data", {}), split_id="shifted: train < 2014-03-01, val ...")
    onnx = source.onnx_bytes
    write_bundle(tmp_path, dict(plain, version="plain-one"), onnx)
    write_bundle(tmp_path, spec, onnx)
    assert main(["promote", "plain-one", "--model-store", str(tmp_path)]) == 0
    assert production_version(tmp_path)[0] == "plain-one"
    capsys.readouterr()
    assert main(["promote", "shifted-one", "--model-store", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment on another split" in err[0]
    assert production_version(tmp_path)[0] == "plain-one"
