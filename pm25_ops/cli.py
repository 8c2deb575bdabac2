"""The ``pm25`` command: one entry point, one subcommand per job.

Settings come from ``PM25_*`` environment variables (see ``pm25.settings``) and the flags here;
a bad argument or setting gives a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]

log = logging.getLogger("pm25")


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from err
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {text}")
    return value


def _port_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _port(text)


def _settings(args: argparse.Namespace) -> Any:
    from pm25.settings import Settings

    return Settings.from_env(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        readings_topic=getattr(args, "readings_topic", None),
        forecasts_topic=getattr(args, "forecasts_topic", None),
        dlq_topic=getattr(args, "dlq_topic", None),
        stations_topic=getattr(args, "stations_topic", None),
        station_readings_topic=getattr(args, "station_readings_topic", None),
        model_store=Path(args.model_store) if getattr(args, "model_store", None) else None,
        web_port=getattr(args, "web_port", None),
    )


def _kafka_args(p: argparse.ArgumentParser, *topics: str) -> None:
    p.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (env PM25_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=15.0,
        metavar="S",
        help="give up with an error when no broker answers within S seconds (default 15)",
    )
    for t in topics:
        p.add_argument(f"--{t}-topic", metavar="NAME", help=f"{t} topic (env PM25_{t.upper()}_TOPIC)")


# -- commands --------------------------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from pm25.embedded import EmbeddedBroker

    broker = EmbeddedBroker(args.port).start()
    print(
        f"embedded broker (Tansu, memory storage) on {broker.bootstrap_servers}; Ctrl-C stops it.\n"
        f"  export PM25_BOOTSTRAP_SERVERS={broker.bootstrap_servers} PM25_EMBEDDED_BROKER=1",
        flush=True,
    )
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_kafka(args: argparse.Namespace) -> int:
    """Apache Kafka (KRaft, one node) in the foreground until Ctrl-C or SIGTERM."""
    import signal

    from pm25.apache_kafka import ApacheKafka, KafkaUnavailable

    data_dir = Path(args.data_dir) if args.data_dir else None
    broker = ApacheKafka(args.port, data_dir)
    stopping: list[int] = []

    def on_term(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        broker.start()
    except KafkaUnavailable as err:
        print(f"pm25 kafka: {err}", file=sys.stderr)
        broker.close()
        return 2
    except KeyboardInterrupt:
        broker.close()
        return 0
    where = f"data in {broker.data_dir}" if data_dir else "data in a temporary folder (deleted on exit)"
    print(
        f"Apache Kafka {broker.version} (KRaft) on {broker.bootstrap_servers}; {where}; "
        f"log {broker.log_path}. Ctrl-C stops it.\n"
        f"  export PM25_BOOTSTRAP_SERVERS={broker.bootstrap_servers}",
        flush=True,
    )
    try:
        assert broker.proc is not None
        code = broker.proc.wait()
        print(f"pm25 kafka: the broker exited with {code}: {broker.tail(400)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.close()


def _reachable(settings: Any, timeout: float) -> None:
    """A broker that does not answer is a one-line error (exit 3), not a client retrying forever."""
    from pm25.kafka import BrokerUnreachable, wait_for_broker

    try:
        wait_for_broker(settings, timeout)
    except BrokerUnreachable as err:
        raise Unreachable(str(err)) from err


def _worker_start_up(settings: Any, timeout: float, log_level: int) -> dict[str, int | None]:
    """pm25.kafka.worker_start_up in a short-lived child process: its calls use kafka-python (about
    7.6 MB resident once imported), which the worker itself never needs (Faust brings aiokafka)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pm25.kafka import BrokerUnreachable, worker_start_up

    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
            return child.submit(worker_start_up, settings, timeout, log_level).result()
    except BrokerUnreachable as err:
        raise Unreachable(str(err)) from err


class Unreachable(Exception):
    """A command could not reach its broker."""


def cmd_topics(args: argparse.Namespace) -> int:
    from pm25.kafka import ensure_topics

    settings = _settings(args)
    _reachable(settings, args.connect_timeout)
    created = ensure_topics(settings)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    return 0


def _read_stations(path: str) -> dict[str, Any]:
    from pm25.stations import StationFileError, read_stations_csv

    try:
        return read_stations_csv(Path(path))
    except StationFileError as err:
        raise UsageError(str(err)) from err


def cmd_stations_load(args: argparse.Namespace) -> int:
    """Publish every station of a CSV to the compacted station topic, keyed by station id: the
    file is checked whole first, so a bad line publishes nothing."""
    from pm25.kafka import ensure_topics, publish_stations

    stations = _read_stations(args.file)
    networks = sorted({s.network for s in stations.values()})
    if args.dry_run:
        print(f"{len(stations)} stations in {len(networks)} network(s) ({', '.join(networks)}): file OK")
        return 0
    settings = _settings(args)
    _reachable(settings, args.connect_timeout)
    ensure_topics(settings)
    publish_stations(settings, stations.values(), args.connect_timeout)
    print(
        f"published {len(stations)} stations in {len(networks)} network(s) ({', '.join(networks)}) "
        f"to {settings.stations_topic}"
    )
    return 0


def _iso_hour(text: str | None) -> int | None:
    if text is None:
        return None
    from pm25.schema import InvalidReading, iso_to_hour

    try:
        return iso_to_hour(text if ("+" in text[10:] or text.endswith("Z")) else text + "Z")
    except InvalidReading as err:
        raise UsageError(f"--start: {err.detail}") from err


def cmd_produce(args: argparse.Namespace) -> int:
    from pm25.kafka import ensure_topics, make_producer
    from producer.replay import ReplayReport, load_source, network_keys, replay, station_key

    settings = _settings(args)
    key: Callable[[Any], bytes] = station_key
    if args.key == "network":
        key = network_keys({s.station_id: s.network for s in _station_metadata(args.station_file, "--station-file")})
    elif args.station_file is not None:
        raise UsageError("--station-file is used with --key network only")
    report = ReplayReport()
    stations = set(args.stations.split(",")) if args.stations else None
    readings = load_source(args.source, report.invalid, stations, _iso_hour(args.start), args.hours)
    _reachable(settings, args.connect_timeout)
    ensure_topics(settings)
    producer = make_producer(settings)
    try:
        replay(
            producer,
            settings.readings_topic,
            readings,
            report,
            speedup=args.speedup,
            rate=args.rate,
            progress=not args.quiet,
            key=key,
        )
    finally:
        producer.close()
    for err in report.invalid[:10]:
        print(f"invalid row {err.source}:{err.line}: {err.reason}: {err.detail}", file=sys.stderr)
    if len(report.invalid) > 10:
        print(f"... and {len(report.invalid) - 10} more invalid rows", file=sys.stderr)
    if args.invalid_out and report.invalid:
        with open(args.invalid_out, "w", encoding="utf-8") as fh:
            for err in report.invalid:
                fh.write(f"{err.source}\t{err.line}\t{err.reason}\t{err.detail}\n")
    print(report.summary())
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    """The repartition stage in the foreground until Ctrl-C or SIGTERM (stream_processor.router)."""
    import signal

    from pm25.kafka import ensure_topics
    from stream_processor.router import Router

    settings = _settings(args)
    source = settings.station_readings_topic
    if source == settings.readings_topic:
        raise UsageError(f"the router reads {source} and writes {settings.readings_topic}: give two different topics")
    _reachable(settings, args.connect_timeout)
    ensure_topics(settings, routed=True)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    router = Router(settings, source, max_records=args.max_poll_records)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, registry=router.metrics.registry)  # a daemon thread
    log.info(
        "routing %s (keyed by station) to %s keyed by network; metrics on port %s",
        source,
        settings.readings_topic,
        args.metrics_port or "(none)",
    )
    try:
        forwarded = router.run(lambda: bool(stopping))
    except KeyboardInterrupt:
        return 0
    log.info("router stopped after %d readings", forwarded)
    return 0


def _use_uvloop() -> None:
    """uvloop's event loop for what is built from here on (until 2026-12-04 the policy was set
    after the Worker was built, whose Faust services had already taken the default loop: the
    worker never ran on uvloop)."""
    try:
        import uvloop
    except ImportError:
        log.info("uvloop not installed; using the default asyncio loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from stream_processor.app import Worker, limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts
    settings = _settings(args)
    # at start-up; an established broker lost later is retried
    counts = _worker_start_up(settings, args.connect_timeout, logging.getLogger().level)
    _use_uvloop()  # before the Worker: Faust's services take the event loop when they are built
    worker = Worker(settings, copartitioned=len(set(counts.values())) == 1 and None not in counts.values())
    log.info(
        "worker: model %s, broker %s, web port %d, event loop %s",
        worker.engine.model.version,
        settings.bootstrap_servers,
        settings.web_port,
        type(worker.app.loop).__module__.split(".")[0],
    )
    faust.Worker(worker.app, loglevel=args.log_level.upper(), quiet=True).execute_from_commandline()
    return 0


def cmd_forecasts(args: argparse.Namespace) -> int:
    from pm25.kafka import make_consumer
    from pm25.schema import forecast_from_json
    from pm25.viewer import format_forecast

    settings = _settings(args)
    _reachable(settings, min(args.timeout, args.connect_timeout) if args.timeout else args.connect_timeout)
    consumer = make_consumer(
        settings,
        settings.forecasts_topic,
        group_id=args.group,
        consumer_timeout_ms=int(args.timeout * 1000) if args.timeout else float("inf"),
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    n = 0
    try:
        for msg in consumer:
            print(format_forecast(forecast_from_json(msg.value)) if not args.json else msg.value.decode(), flush=True)
            n += 1
            if args.max and n >= args.max:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    print(f"{n} forecasts", file=sys.stderr)
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from producer.replay import load_source
    from stream_processor.backtest import run_backtest

    settings = _settings(args)
    stations = _station_metadata(args.stations)
    invalid: list[Any] = []
    readings = load_source(args.readings, invalid)
    n, rejected = run_backtest(settings, readings, Path(args.out), progress=not args.quiet, stations=stations)
    print(f"{n} forecasts written to {args.out}; invalid rows {len(invalid)}, rejected readings {rejected}")
    return 0


def _station_metadata(value: str | None, option: str = "--stations") -> list[Any]:
    """``option``: a station metadata CSV, 'none' (every station alone), or the shipped one."""
    from pm25.stations import BEIJING_STATIONS, StationFileError, read_stations_csv

    if value is not None and value.lower() == "none":
        return []
    try:
        return list(read_stations_csv(Path(value) if value else BEIJING_STATIONS).values())
    except (StationFileError, OSError) as err:
        raise UsageError(f"{option}: {err}") from err


def _training_extra(what: str, *modules: str) -> None:
    """A one-line usage error, before any work, when a module of the training extra is missing
    (they are imported lazily, deep inside the work, so an import guard would not see them)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"{what} needs the training extra (pip install -e '.[training]'): no {', '.join(missing)}")


def _shifted_split(years: int) -> Any:
    """The shipped split with its validation and test years moved ``years`` back (an experiment:
    the test year then is one the shipped split tunes on, scored by `pm25 evaluate --split val`)."""
    from training.dataset import DataConfig

    d = DataConfig()
    back = {k: getattr(d, k).replace(year=getattr(d, k).year - years) for k in ("val_start", "test_start", "test_end")}
    return replace(d, **back)


def cmd_train(args: argparse.Namespace) -> int:
    if not 0 <= args.shift_years <= 2:
        raise UsageError(f"--shift-years: {args.shift_years} is not 0, 1 or 2")
    _training_extra("training", "tensorflow", "keras", "tf2onnx", "sklearn", "matplotlib")
    from model_store import default_store
    from training.train import TrainConfig, train

    store = Path(args.model_store) if args.model_store else default_store()
    cfg = TrainConfig(
        data=_shifted_split(args.shift_years),
        grid=args.grid,
        seed=args.seed,
        version=args.version,
        refit=not args.no_refit,
        # the quick grid is CI's smoke run (< 2 minutes): a lighter yardstick
        yardstick_iterations=60 if args.grid == "quick" else 200,
    )
    result = train(cfg, store, force=args.force, promote_if_better=not args.no_promote)
    print(f"bundle {result.version} at {result.bundle_path}; {result.reason}")
    return 0


def cmd_add_alone_graph(args: argparse.Namespace) -> int:
    """A new bundle: an ensemble bundle trained before the model_alone expert, with that expert's
    graph added (the same trained model; training writes it itself since 2026-12-04)."""
    from model_store import BundleError, default_store
    from training.export import derive_with_alone_graph

    store = Path(args.model_store) if args.model_store else default_store()
    try:
        version = derive_with_alone_graph(store, args.version)
    except (BundleError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(f"bundle {version} written in {store} (not promoted: `pm25 promote {version}`)")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a bundle of the store production (after `pm25 evaluate --bundle` scored it): the bundle
    is verified first; an experiment trained on a shifted split is refused."""
    from model_store import default_store, load_version, promote
    from training.dataset import is_experiment_split

    store = Path(args.model_store) if args.model_store else default_store()
    split = load_version(store, args.version).spec.get("data", {}).get("split_id", "")
    if is_experiment_split(split):
        raise UsageError(f"{args.version} is an experiment on another split ({split}); not promoted")
    promote(store, args.version)
    print(f"promoted {args.version} in {store}")
    return 0


def _in_sample_note(settings: Any, version: str | None) -> str:
    """A warning for the report's title when the bundle was refit on the validation year."""
    from model_store import default_store, load_version

    bundle = load_version(settings.model_store or default_store(), version)
    if not bundle.spec.get("refit"):
        return ""
    print(f"pm25 evaluate: note: {bundle.version} was refit on this year: its scores are in-sample", file=sys.stderr)
    return f"; IN-SAMPLE: {bundle.version} was refit on this year"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_stations, gradient_boosting_yardstick, shipped_test_year, write_report

    settings = _settings(args)
    from training.dataset import DataConfig

    new_stations = DataConfig().new_stations
    per_station, bounds = shipped_test_year(args.split)
    if args.stations:
        wanted = set(args.stations.split(","))
        per_station = [rs for rs in per_station if rs and rs[0].station_id in wanted]
        if not per_station:
            raise UsageError(f"--stations: none of {sorted(wanted)} in the {args.split} year's stations")
    period_note = _in_sample_note(settings, args.bundle) if args.split == "val" else ""
    if args.scenario:
        from training.scenarios import apply_scenario, shift_hours

        per_station = [apply_scenario(args.scenario, rs) for rs in per_station]
        bounds = (bounds[0] + shift_hours(args.scenario), bounds[1] + shift_hours(args.scenario))
        period_note = f", scenario {args.scenario} (training/scenarios.py)" + period_note
    yardstick = None
    if not args.no_yardstick and args.split == "test" and not args.scenario:
        try:
            yardstick = gradient_boosting_yardstick(settings)
        except ImportError as err:
            raise UsageError(f"the yardstick needs the training extra, or pass --no-yardstick: {err}") from err
    ev = evaluate_stations(
        settings,
        per_station,
        bounds,
        period=(
            "test year 2016-03-01 to 2017-02-28 (China Standard Time)"
            if args.split == "test"
            else "validation year 2015-03-01 to 2016-02-29 (China Standard Time; tuning only)"
        )
        + period_note,
        new_stations=new_stations,
        yardstick=yardstick,
        progress=not args.quiet,
        stations_meta=_station_metadata(None) if args.network else None,
        version=args.bundle,
    )
    print(ev.table())
    out = args.out or ("reports/network" if args.network else "reports")
    for path in write_report(ev, Path(out)):
        print(f"wrote {path}", file=sys.stderr)
    return 0 if ev.passed() else 1


def cmd_eda(args: argparse.Namespace) -> int:
    _training_extra("the EDA report", "matplotlib")
    from training.eda import write_eda

    print(f"wrote {write_eda(Path(args.out))}")
    return 0


def cmd_regional(args: argparse.Namespace) -> int:
    from pm25.neighbours import MAX_NEIGHBOURS
    from pm25.stations import BEIJING_STATIONS, StationFileError

    if args.neighbours > MAX_NEIGHBOURS:
        raise UsageError(f"--neighbours: at most {MAX_NEIGHBOURS}, got {args.neighbours}")
    _training_extra("the regional check", "sklearn", "matplotlib")
    from training.regional import RegionalConfig, run_regional

    stations_csv = Path(args.stations) if args.stations else BEIJING_STATIONS
    rc = RegionalConfig(split=args.split, neighbours=args.neighbours, stations_csv=stations_csv)
    try:
        report = run_regional(rc, Path(args.out))
    except StationFileError as err:
        raise UsageError(str(err)) from err
    print((Path(args.out) / "regional.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/regional.{{json,md,png}} in {report['seconds']} s")
    return 0


def cmd_coldstart(args: argparse.Namespace) -> int:
    from training.coldstart import ColdStartConfig, run_coldstart

    cc = ColdStartConfig(split=args.split, starts=args.starts, days=args.days, version=args.bundle)
    report = run_coldstart(cc, Path(args.out), _settings(args))
    print((Path(args.out) / "coldstart.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/coldstart.{{json,md,png}} in {report['seconds']} s")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        stations=args.stations,
        hours=args.hours,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        repeats=args.repeats,
        networks=args.networks,
    )
    report = run_bench(cfg, Path(args.out))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.server import run_dashboard
    from pm25.kafka import ensure_topics

    settings = _settings(args)
    _reachable(settings, args.connect_timeout)
    ensure_topics(settings)  # the station topic may be newer than the deployment's topics
    run_dashboard(settings, args.host, args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pm25_ops.demo import run_demo

    return run_demo(
        hours=args.hours, speedup=args.speedup, timeout=args.timeout, keep_open=args.keep_open, broker_kind=args.broker
    )


# -- parser ----------------------------------------------------------------------------------
def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pm25-forecaster")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pm25", description="Event-driven PM2.5 forecaster (Kafka + Faust + ONNX).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"pm25 {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_broker_commands(sub)
    _add_stream_commands(sub)
    _add_model_commands(sub)
    _add_store_commands(sub)
    _add_measurement_commands(sub)
    _add_dashboard_and_demo(sub)
    return p


def _add_broker_commands(sub: Any) -> None:
    s = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    s.add_argument("--port", type=_port, default=9092, help="port on 127.0.0.1 (default 9092)")
    s.set_defaults(func=cmd_broker)

    s = sub.add_parser(
        "kafka", help="run Apache Kafka (KRaft, from Maven Central; needs java and mvn) in the foreground"
    )
    s.add_argument("--port", type=_port, default=9092, help="port on 127.0.0.1 (default 9092)")
    s.add_argument("--data-dir", help="where the broker keeps its data across restarts (default: a temporary folder)")
    s.set_defaults(func=cmd_kafka)


def _add_stream_commands(sub: Any) -> None:
    s = sub.add_parser("topics", help="create the project's topics if missing")
    _kafka_args(s, "readings", "forecasts", "dlq")
    s.set_defaults(func=cmd_topics)

    s = sub.add_parser("stations", help="station metadata (location, network) on the compacted station topic")
    actions = s.add_subparsers(dest="action", required=True, parser_class=_Parser)
    a = actions.add_parser("load", help="check a stations CSV and publish it, keyed by station_id")
    a.add_argument("file", help="CSV with station_id,name,latitude,longitude,network (e.g. data/stations/beijing.csv)")
    a.add_argument("--dry-run", action="store_true", help="check the file only, publish nothing")
    _kafka_args(a, "stations")
    a.set_defaults(func=cmd_stations_load)

    s = sub.add_parser("produce", help="publish readings in event-time order, keyed by station or network")
    _kafka_args(s, "readings")
    s.add_argument(
        "--source",
        default="multisite",
        help="'multisite' (12 Beijing stations), 'single-site', or a canonical readings CSV path",
    )
    s.add_argument("--stations", help="comma-separated station ids to keep")
    s.add_argument("--start", help="first hour to send (ISO 8601, UTC if no offset)")
    s.add_argument("--hours", type=_positive_int, help="send this many simulated hours")
    pace = s.add_mutually_exclusive_group()
    pace.add_argument("--speedup", type=_positive_float, help="simulated time / real time (3600 = 1 h per second)")
    pace.add_argument("--rate", type=_positive_float, help="readings per second")
    s.add_argument("--invalid-out", help="write invalid rows (file, line, reason) to this TSV")
    s.add_argument(
        "--key",
        choices=["station", "network"],
        default="station",
        help="message key: the station id (default), or the station's network (its metadata), so that "
        "several workers can share the networks",
    )
    s.add_argument("--station-file", help="with --key network: station metadata CSV (default: the shipped one)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_produce)

    s = sub.add_parser(
        "route",
        help="forward readings keyed by station to the readings topic keyed by network, in event-time "
        "order (run one router when several workers share networks)",
    )
    _kafka_args(s, "readings", "stations")
    s.add_argument(
        "--station-readings-topic",
        metavar="NAME",
        help="the station-keyed topic to read (env PM25_STATION_READINGS_TOPIC, default pm25.readings.by-station)",
    )
    s.add_argument(
        "--max-poll-records",
        type=_positive_int,
        default=4000,
        metavar="N",
        help="readings taken per poll (default 4000; a backlog is merged across partitions poll by poll)",
    )
    s.add_argument(
        "--metrics-port",
        type=_port_or_zero,
        default=6067,
        help="HTTP port of the router's Prometheus metrics (default 6067; 0: none)",
    )
    s.set_defaults(func=cmd_route)

    s = sub.add_parser("worker", help="run the stream processor (Faust worker)")
    _kafka_args(s, "readings", "forecasts", "dlq")
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    s.add_argument("--web-port", type=_port, help="HTTP port for /health, /ready, /metrics (env PM25_WEB_PORT)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("forecasts", help="follow the forecast topic, one readable line per forecast")
    _kafka_args(s, "forecasts")
    s.add_argument("--from-beginning", action="store_true", help="start at the earliest forecast")
    s.add_argument("--max", type=_positive_int, help="stop after this many forecasts")
    s.add_argument("--timeout", type=_positive_float, help="stop after this many idle seconds")
    s.add_argument("--group", help="consumer group (default: none, no commits)")
    s.add_argument("--json", action="store_true", help="print the raw JSON messages")
    s.set_defaults(func=cmd_forecasts)


def _add_model_commands(sub: Any) -> None:
    from training.scenarios import SCENARIOS  # pure: no training extra needed

    s = sub.add_parser("backtest", help="run the stream's window + inference code offline over a readings file")
    s.add_argument(
        "--readings", required=True, help="canonical readings CSV (or 'multisite' / 'single-site' for the bundled data)"
    )
    s.add_argument("--out", required=True, help="output JSON lines, one forecast per line")
    s.add_argument(
        "--stations",
        help="station metadata CSV giving the networks (default: the shipped Beijing stations; 'none': each alone)",
    )
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_backtest)

    s = sub.add_parser("train", help="train, select on validation, export ONNX, write a bundle (training extra)")
    s.add_argument("--grid", default="default", choices=["default", "quick"])
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--version", help="bundle version (default: family + UTC time)")
    s.add_argument(
        "--shift-years",
        type=int,
        default=0,
        help="an experiment: validation and test years moved this many years back (0-2); never promoted",
    )
    s.add_argument(
        "--no-refit",
        action="store_true",
        help="serve the model as selected (trained before the validation year) instead of refitting "
        "it on the training and validation years",
    )
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    gate = s.add_mutually_exclusive_group()
    gate.add_argument("--force", action="store_true", help="promote even if production scores better")
    gate.add_argument("--no-promote", action="store_true", help="write the bundle, do not promote it")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "evaluate", help="backtest the production bundle per station on the test year vs persistence and yardstick"
    )
    s.add_argument("--no-yardstick", action="store_true", help="skip the gradient-boosting yardstick")
    s.add_argument("--bundle", help="score this version of the model store instead of the production bundle")
    s.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="test: the held-out year, all 12 stations (default); val: the validation year, for tuning",
    )
    s.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        help="score stations unlike Beijing's, made from its data (training/scenarios.py; no yardstick)",
    )
    s.add_argument("--stations", help="comma-separated station ids to score (default: all of the split)")
    s.add_argument(
        "--network",
        action="store_true",
        help="replay the stations together, in one file, with the shipped station metadata (regional targets)",
    )
    s.add_argument(
        "--out", help="folder for evaluation.json/.md/.png (default reports/, with --network reports/network/)"
    )
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("eda", help="exploratory report of the training data (Markdown + PNG plots)")
    s.add_argument("--out", default="reports/eda", help="output folder (default reports/eda)")
    s.set_defaults(func=cmd_eda)


def _add_store_commands(sub: Any) -> None:
    s = sub.add_parser(
        "add-alone-graph", help="a new bundle: an older ensemble bundle plus its model_alone expert's graph"
    )
    s.add_argument("version", help="the bundle's version (a folder of model_store/bundles)")
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    s.set_defaults(func=cmd_add_alone_graph)

    s = sub.add_parser("promote", help="make a verified bundle of the model store production")
    s.add_argument("version", help="the bundle's version (a folder of model_store/bundles)")
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    s.set_defaults(func=cmd_promote)


def _add_measurement_commands(sub: Any) -> None:
    s = sub.add_parser(
        "regional",
        help="measure what neighbour features add (gradient boosting with and without them, per station)",
    )
    s.add_argument("--split", choices=["val", "test"], default="test", help="year scored (default test)")
    s.add_argument("--neighbours", type=_positive_int, default=11, help="k nearest neighbours, at most 16 (default 11)")
    s.add_argument("--stations", help="stations CSV (default: the shipped data/stations/beijing.csv)")
    s.add_argument("--out", default="reports", help="output folder (default reports)")
    s.set_defaults(func=cmd_regional)

    s = sub.add_parser(
        "coldstart",
        help="score a new station's first two weeks by its age, against the same station with history",
    )
    s.add_argument("--split", choices=["val", "test"], default="val", help="year replayed (default val)")
    s.add_argument("--starts", type=_positive_int, default=30, help="start dates spread over the year (default 30)")
    s.add_argument("--days", type=_positive_int, default=14, help="days replayed from each start (default 14)")
    s.add_argument("--bundle", help="a bundle version of the store (default: production)")
    s.add_argument("--model-store", help="model store folder (env PM25_MODEL_STORE)")
    s.add_argument("--out", default="reports/coldstart", help="output folder (default reports/coldstart)")
    s.set_defaults(func=cmd_coldstart)

    s = sub.add_parser("bench", help="inference and end-to-end benchmark on the embedded broker (JSON + plot)")
    s.add_argument("--out", default="reports/bench.json", help="JSON report path (plot beside it)")
    s.add_argument("--stations", type=_positive_int, default=1000, help="stations in the throughput run")
    s.add_argument("--hours", type=_positive_int, default=20, help="timed hours per station (after 45 warm-up hours)")
    s.add_argument(
        "--latency-rate", type=_positive_float, default=1000.0, help="offered readings/s for latency (default 1000)"
    )
    s.add_argument("--latency-seconds", type=_positive_float, default=20.0, help="duration of the latency run")
    s.add_argument("--repeats", type=_positive_int, default=5, help="production throughput runs (median reported)")
    s.add_argument(
        "--networks",
        type=_non_negative_int,
        default=50,
        help="the stations form this many networks (station metadata published; default 50; 0: every station alone)",
    )
    s.set_defaults(func=cmd_bench)


def _add_dashboard_and_demo(sub: Any) -> None:
    s = sub.add_parser("dashboard", help="live web dashboard of readings, forecasts and skill")
    _kafka_args(s, "readings", "forecasts")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 in a container)")
    s.add_argument("--port", type=_port, default=8080, help="HTTP port (default 8080)")
    s.set_defaults(func=cmd_dashboard)

    s = sub.add_parser("demo", help="embedded broker + worker + replay of the 12 Beijing stations, then a summary")
    s.add_argument("--hours", type=_positive_int, default=96, help="simulated hours to replay (default 96)")
    s.add_argument(
        "--speedup", type=_positive_float, default=36000.0, help="simulated/real time (default 36000: 10 h per second)"
    )
    s.add_argument("--timeout", type=_positive_float, default=180.0, help="give up after this many seconds")
    s.add_argument("--keep-open", action="store_true", help="after the summary, keep everything running until Ctrl-C")
    s.add_argument(
        "--broker",
        choices=["embedded", "kafka"],
        default="embedded",
        help="embedded: Tansu, no Java (default); kafka: Apache Kafka from Maven Central (needs java and mvn)",
    )
    s.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "aiokafka", "tf2onnx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    func: Callable[[argparse.Namespace], int] = args.func
    from model_store import BundleError
    from pm25.apache_kafka import KafkaUnavailable
    from pm25.schema import InvalidReading
    from pm25.settings import SettingsError

    try:
        return func(args)
    except (UsageError, SettingsError, FileNotFoundError, InvalidReading) as err:
        print(f"pm25 {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BundleError as err:
        print(f"pm25 {args.command}: model store error: {err}", file=sys.stderr)
        return 1
    except Unreachable as err:
        print(f"pm25 {args.command}: {err}", file=sys.stderr)
        return 3
    except KafkaUnavailable as err:
        print(f"pm25 {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
