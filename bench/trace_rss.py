#!/usr/bin/env python3
"""Where convert_mpq.py's peak memory is: runs the converter with a sampler thread that reads the
resident set every 50 ms and charges it to the innermost traced converter stage running then
(block, Hessians, GPTQ, norm tuning, output, embedding rows). Prints each stage on entry and exit,
and at the end the peak of every stage, largest first.

    python3 bench/trace_rss.py MODEL -o OUT.gguf [any convert_mpq.py option]

Used for docs/CONVERTER.md "Memory" (the 8B shape cut to 2 layers).
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converter"))
from mpq2 import convert, gptq, norms, pipeline  # noqa: E402

TRACED = [(pipeline, "calibrate"), (pipeline, "open_output"), (pipeline, "quantize_block"),
          (pipeline, "collect_hessians"), (pipeline, "encode_weight"), (pipeline, "encode_output"),
          (pipeline, "encode_rows"), (pipeline, "allocate_types"), (norms, "tune"), (norms, "tune_output"),
          (gptq.MPQ2GPTQ, "fasterquant")]
PAGE = os.sysconf("SC_PAGE_SIZE")
T0 = time.time()
stack = ["start"]
peaks: dict[str, float] = {}


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e9


def sample() -> None:
    while True:
        where = " > ".join(stack[-3:])
        peaks[where] = max(peaks.get(where, 0.0), rss_gb())
        time.sleep(0.05)


def log(event: str, name: str) -> None:
    print(f"[rss {time.time() - T0:7.1f}s] {event} {name}: {rss_gb():.2f} GB", file=sys.stderr, flush=True)


def traced(f, name: str):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        stack.append(name)
        log("enter", name)
        try:
            return f(*args, **kwargs)
        finally:
            log("leave", name)
            stack.pop()
    return wrapper


def main() -> int:
    for owner, name in TRACED:
        setattr(owner, name, traced(getattr(owner, name), name))
    threading.Thread(target=sample, daemon=True).start()
    try:
        return convert.main(sys.argv[1:])
    finally:
        for where, gb in sorted(peaks.items(), key=lambda kv: -kv[1])[:15]:
            print(f"[rss peak] {gb:6.2f} GB  in {where}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
