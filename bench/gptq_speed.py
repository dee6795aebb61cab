#!/usr/bin/env python3
"""Time of the converter's GPTQ encoder (mpq2.gptq.MPQ2GPTQ.fasterquant) on one tensor, and of
its salient-word gate on every word of the tensor against on the salient fraction's candidates
only (what the encoder does since 2026-12-01: the same bytes, tests/test_gptq.py).

    python3 bench/gptq_speed.py [--shapes 1536x576,576x1536,49152x576] [--repeats 3] [--threads 1]

Synthetic weights (Gaussian, a few outliers) and a Hessian from correlated Gaussian inputs; the
time does not depend on the values much, only on the shape. Prints min and median seconds.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mpq2.gptq import MPQ2GPTQ, QuantConfig, gate_salient, salience_scores, select_bitmap


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1536x576,576x1536", help="rows x cols, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rotate", action="store_true", help="MPQ2R (the converter's default type)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QuantConfig(rotate=args.rotate)
    print("| shape | fasterquant s (min / median) | gate, every word s | gate, candidates only s | gate ratio |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        rows, cols = (int(v) for v in shape.split("x"))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2048, cols, generator=gen) @ (torch.eye(cols) + 0.1 * torch.randn(cols, cols, generator=gen))
        w = torch.randn(rows, cols, generator=gen) * 0.02
        w[::7, ::5] *= 8
        g = MPQ2GPTQ(w)
        g.add_batch(x)
        full = timed(lambda: g.fasterquant(w, cfg), args.repeats)
        H = g.H + 0.01 * torch.mean(torch.diag(g.H)) * torch.eye(cols, dtype=g.H.dtype)
        hinv = torch.diag(torch.cholesky_inverse(torch.linalg.cholesky(H)))
        cand = select_bitmap(salience_scores(w, hinv), cfg.salient_fraction).numpy()
        importance = torch.diag(g.H).to(torch.float32).numpy()
        every = timed(lambda: gate_salient(w.numpy(), importance, np.ones_like(cand)), args.repeats)
        some = timed(lambda: gate_salient(w.numpy(), importance, cand), args.repeats)
        print(f"| {rows}x{cols} | {full[0]:.2f} / {full[1]:.2f} | {every[0]:.2f} / {every[1]:.2f} | "
              f"{some[0]:.2f} / {some[1]:.2f} | {every[0] / some[0]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
