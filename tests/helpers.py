"""What many tests share: waiting for something to happen (a server to answer, a log to grow, a process to get far
enough) without a hand-written polling loop each."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, *, interval: float = 0.1,
               process: subprocess.Popen | None = None, what: str = "") -> Any:
    """Poll ``condition()`` until it gives something truthy, and return that. With ``what``, a timeout (or the
    ``process`` ending first) fails the test naming it; without, the last falsy value is returned (a test that
    only wants to get far enough, then acts anyway)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            assert not what, f"{what}: the process ended first (exit {process.returncode})"
            return value
        if time.monotonic() >= deadline:
            assert not what, f"{what}: not within {timeout:.0f} s"
            return value
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` now."""
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except OSError:
        return False
    return True


def loss_lines(log: Any) -> int:
    """How many optimizer steps a run's ``log.jsonl`` has logged so far (0 before it exists)."""
    return sum(1 for line in log.read_text().splitlines() if '"loss"' in line) if log.exists() else 0
