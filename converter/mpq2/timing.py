"""Seconds spent in each named stage of a conversion, for --report and the summary line.

`clock("name")` is a context manager and a decorator. Stages nest (a block holds its Hessians,
its encodes, its norm tuning), so each figure is inclusive; the same name entered again adds up.
"""
from __future__ import annotations

import contextlib
import time

SECONDS: dict[str, float] = {}


def reset() -> None:
    SECONDS.clear()


class clock(contextlib.ContextDecorator):
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        SECONDS[self.name] = SECONDS.get(self.name, 0.0) + time.perf_counter() - self.t0
        return False
