"""Waiting for a condition and asking a daemon's HTTP endpoint: the two
things every test of a long-running meshroute process does."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 30, step: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something true and return that;
    raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_get(endpoint: str, path: str, timeout: float = 2) -> tuple[int, bytes]:
    """(status, body) of GET http://ENDPOINT/PATH; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""
