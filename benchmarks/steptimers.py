"""Timers wrapped around functions, for the profile_*.py scripts: seconds spent per named step."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

spent: defaultdict[str, float] = defaultdict(float)  # step -> seconds, summed over calls


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, its time added to spent[name] at each call (however it returns)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started
    return wrapper
