"""The worker's memory settings: the cap on glibc malloc arenas (stream_processor.app.limit_malloc_arenas), no standby tables."""

import ctypes.util
import sys

import pytest

from stream_processor.app import limit_malloc_arenas


def test_an_explicit_malloc_arena_max_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None, reason="glibc only")
def test_the_cap_is_applied_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


def test_a_worker_holds_only_its_own_partitions_tables():
    """No standby replicas: with the memory store a worker given a partition reads its changelog from
    the start anyway, so standby copies of the other workers' stations would only cost memory (and a
    standby partition made active could hang Faust's recovery)."""
    from pm25.settings import Settings
    from stream_processor.app import Worker

    worker = Worker(Settings(bootstrap_servers="127.0.0.1:1"))
    assert worker.app.conf.table_standby_replicas == 0
