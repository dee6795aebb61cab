#!/usr/bin/env python3
"""MPQ2/MPQ2R round to nearest of random rows: the built C quantizer (converter/mpq2/cquant.py) on 1 and
2 threads against the numpy mirror (codec.quantize / quantize_r), with a check that the bytes agree.

    python3 bench/cquant_speed.py [--rows 2048] [--cols 4096] [--type mpq2r]
"""
import argparse
import time

import numpy as np

from mpq2 import codec, cquant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--type", choices=["mpq2", "mpq2r"], default="mpq2r")
    args = ap.parse_args()
    if not cquant.available():
        raise SystemExit("cquant_speed: the built libggml-base is needed (bash setup.sh)")
    x = (np.random.default_rng(0).standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    mirror = codec.quantize_r if args.type == "mpq2r" else codec.quantize
    runs = {"C, 1 thread": lambda: cquant.quantize(x, args.type, threads=1),
            "C, 2 threads": lambda: cquant.quantize(x, args.type, threads=2),
            "numpy": lambda: mirror(x)}
    out = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        out[name] = fn()
        dt = time.perf_counter() - t0
        print(f"{name:13s} {dt:6.2f} s  {x.size / dt / 1e6:6.2f} M weights/s")
    same = all(np.array_equal(v, out["numpy"]) for v in out.values())
    print(f"same bytes: {same}")


if __name__ == "__main__":
    main()
