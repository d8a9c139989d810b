"""worker.runtime.bounded: a call that needs more memory or time than it may have is stopped and said so."""

from __future__ import annotations

import time

import pytest

from worker.runtime.bounded import LimitExceeded, run_bounded

MIB = 1024**2


def hog(megabytes: int) -> int:
    return len(bytearray(megabytes * MIB))


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_an_answer_within_the_limits_comes_back() -> None:
    assert run_bounded(f"{__name__}:hog", 16, memory_bytes=256 * MIB, time_s=60, what="a small hog") == 16 * MIB


def test_past_the_memory_limit_it_stops_naming_the_setting() -> None:
    with pytest.raises(LimitExceeded, match=r"a hog needed more than 128 MiB of memory \(LORADECK_INSPECT_MEMORY_MB\)"):
        run_bounded(f"{__name__}:hog", 1024, memory_bytes=128 * MIB, time_s=60, what="a hog")


def test_past_the_time_limit_it_stops_naming_the_setting() -> None:
    with pytest.raises(LimitExceeded, match=r"a nap took longer than 1 s \(LORADECK_INSPECT_TIME_LIMIT_S\)"):
        run_bounded(f"{__name__}:sleep", 600, memory_bytes=128 * MIB, time_s=1, what="a nap")
