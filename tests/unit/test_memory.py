"""The worker's cap on glibc malloc arenas (stream_processor.app.limit_malloc_arenas)."""

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
