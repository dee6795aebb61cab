#!/usr/bin/env python3
"""Time and peak memory of the converter's GPTQ encoder (mpq2.gptq.MPQ2GPTQ.fasterquant) on one
tensor, optionally side by side with the encoder of an earlier commit (--baseline REV: its
converter/mpq2 is unpacked from git into a temporary package and timed in the same run, the
repeats interleaved so that both see the same machine load).

    python3 bench/gptq_speed.py [--shapes 1536x576,576x1536] [--repeats 3] [--threads 1] [--rotate] [--baseline REV]
    python3 bench/gptq_speed.py --memory 64x14336,151936x896 [--row-chunk 4096] [--rotate] [--baseline REV]
    python3 bench/gptq_speed.py --gram 576,1536,4096,14336 [--tokens 4096] [--threads 2]
    python3 bench/gptq_speed.py --factor 4096,14336 [--threads 2]

Synthetic weights (Gaussian, a few outliers) and a Hessian from correlated Gaussian inputs; the
time does not depend on the values much, only on the shape. Prints min and median seconds, and
checks that both encoders give the same bytes. --memory runs one fasterquant per shape in a
fresh process and prints its peak RSS (getrusage; tracemalloc does not see torch), with a
synthetic low-rank-plus-diagonal Hessian (an add_batch at 14336 inputs would take minutes).
--gram times one add_batch's product of --tokens inputs of each width: the whole x^T x against
add_gram's blocks on and above the diagonal (gptq.add_gram) at several block sizes, interleaved,
and prints the largest difference of the two Hessians relative to their largest entry.
--factor times GPTQ's factor U (upper, U^T U = H^-1) of a damped Hessian of each width, float64:
the reference's chol -> cholesky_inverse -> chol against gptq.inverse_cholesky_upper_ (a
Cholesky of the reversed H and a triangular inverse), and prints their largest difference
relative to U's largest entry.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def baseline_package(rev: str, where: Path) -> str:
    """converter/mpq2 of commit `rev` as package mpq2_base under `where` (relative imports
    keep it separate from the installed mpq2)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "converter/mpq2"], check=True, capture_output=True).stdout
    tarfile.open(fileobj=BytesIO(tar)).extractall(where)
    (where / "converter" / "mpq2").rename(where / "mpq2_base")
    return str(where)


def load(name: str, path: str | None):
    if path and path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(f"{name}.gptq")


def timed(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def speed(args, impls: dict) -> None:
    names = list(impls)
    print("| shape | " + " | ".join(f"{n} s (min / median)" for n in names) + (" | speedup (min) |" if len(names) > 1 else " |"))
    print("|---|" + "---|" * (len(names) + (len(names) > 1)))
    for shape in args.shapes.split(","):
        rows, cols = (int(v) for v in shape.split("x"))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2048, cols, generator=gen) @ (torch.eye(cols) + 0.1 * torch.randn(cols, cols, generator=gen))
        w = torch.randn(rows, cols, generator=gen) * 0.02
        w[::7, ::5] *= 8
        gs, runs, out = {}, {}, {}
        for n, gp in impls.items():
            gs[n] = gp.MPQ2GPTQ(w)
            gs[n].add_batch(x)
            cfg = gp.QuantConfig(rotate=args.rotate)
            runs[n] = lambda g=gs[n], cfg=cfg, n=n: out.__setitem__(n, g.fasterquant(w, cfg))
        t = timed(runs, args.repeats)
        same = all(np.array_equal(out[n].packed, out[names[0]].packed) for n in names)
        cells = " | ".join(f"{t[n][0]:.2f} / {t[n][1]:.2f}" for n in names)
        extra = f" | {t[names[1]][0] / t[names[0]][0]:.1f}x{'' if same else ' (BYTES DIFFER)'} |" if len(names) > 1 else " |"
        print(f"| {rows} x {cols} | {cells}{extra}", flush=True)


MEMORY_CHILD = r"""
import resource, sys, time, importlib
sys.path[:0] = [p for p in sys.argv[5:7] if p]
import torch
torch.set_num_threads(int(sys.argv[4]))
gp = importlib.import_module(sys.argv[1] + ".gptq")
rows, cols = (int(v) for v in sys.argv[2].split("x"))
chunk = int(sys.argv[3]) or None
gen = torch.Generator().manual_seed(0)
w = torch.randn(rows, cols, generator=gen) * 0.02
g = gp.MPQ2GPTQ(w)
B = torch.randn(cols, 32, generator=gen)
for a in range(0, cols, 1024):          # H = B B^T + I without an n x n temporary
    g.H[a:a + 1024] = (B[a:a + 1024] @ B.T).double()
g.H.diagonal().add_(1.0)
del B
rss = lambda: int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
base, t0 = rss(), time.perf_counter()
kw = {"row_chunk": chunk} if chunk else {}
res = g.fasterquant(w, gp.QuantConfig(rotate=sys.argv[-1] == "rotate"), **kw)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{base:.0f} {peak:.0f} {time.perf_counter() - t0:.1f}")
"""


def memory(args, impls: dict) -> None:
    print("| shape | encoder | row_chunk | RSS before fasterquant, MB | peak RSS, MB | fasterquant's own, MB | s |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.memory.split(","):
        rows, cols = (int(v) for v in shape.split("x"))
        for n, (pkg, path) in impls.items():
            chunk = args.row_chunk if n == "now" else 0
            cmd = [sys.executable, "-c", MEMORY_CHILD, pkg, shape, str(chunk), str(args.threads),
                   path or "", str(ROOT / "converter"), "rotate" if args.rotate else "plain"]
            base, peak, secs = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
            print(f"| {rows} x {cols} | {n} | {chunk or '-'} | {base} | {peak} | {int(peak) - int(base)} | {secs} |", flush=True)


def gram(args) -> None:
    from mpq2 import gptq
    blocks = [int(b) for b in args.gram_blocks.split(",")]
    print("| inputs | x^T x, ms (min / median) | " + " | ".join(f"add_gram block {b}, ms" for b in blocks)
          + " | largest difference / largest entry |")
    print("|---|---|" + "---|" * len(blocks) + "---|")
    for cols in (int(c) for c in args.gram.split(",")):
        x = torch.randn(args.tokens, cols, generator=torch.Generator().manual_seed(0))
        full = torch.zeros(cols, cols, dtype=torch.float64)
        sym = torch.zeros(cols, cols, dtype=torch.float64)
        fns = {"full": lambda: full.add_(x.T @ x)}
        fns.update({b: (lambda b=b: gptq.add_gram(sym, x, b)) for b in blocks})
        t = timed(fns, args.repeats)
        full.zero_(), sym.zero_()
        full.add_(x.T @ x)
        gptq.add_gram(sym, x, gptq.GRAM_BLOCK)
        diff = float((full - sym).abs().max() / full.abs().max())
        cells = " | ".join(f"{t[b][0] * 1e3:.0f} / {t[b][1] * 1e3:.0f}" for b in blocks)
        print(f"| {cols} | {t['full'][0] * 1e3:.0f} / {t['full'][1] * 1e3:.0f} | {cells} | {diff:.1e} |", flush=True)


def factor(args) -> None:
    from mpq2 import gptq
    print("| inputs | chol -> cholesky_inverse -> chol, s (min / median) | inverse_cholesky_upper_, s | largest difference / largest entry |")
    print("|---|---|---|---|")
    for n in (int(c) for c in args.factor.split(",")):
        x = torch.randn(2 * n, n, generator=torch.Generator().manual_seed(0))
        H = (x.T @ x).double() / n
        del x
        H.diagonal().add_(0.01 * float(H.diagonal().mean()))
        out = {}

        def reference():
            out["ref"] = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

        def reversed_():
            buf = torch.empty_like(H).mT
            buf.copy_(H)
            out["now"] = gptq.inverse_cholesky_upper_(buf)

        t = timed({"ref": reference, "now": reversed_}, args.repeats)
        diff = float((out["now"] - out["ref"]).abs().max() / out["ref"].abs().max())
        print(f"| {n} | {t['ref'][0]:.2f} / {t['ref'][1]:.2f} | {t['now'][0]:.2f} / {t['now'][1]:.2f} | {diff:.1e} |", flush=True)
        out.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1536x576,576x1536", help="rows x cols, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rotate", action="store_true", help="MPQ2R (the converter's default type)")
    ap.add_argument("--baseline", metavar="REV", help="also time the encoder of this git commit")
    ap.add_argument("--memory", metavar="SHAPES", help="peak RSS of one fasterquant per shape instead of times")
    ap.add_argument("--row-chunk", type=int, default=0, help="with --memory: fasterquant(..., row_chunk=N) (now only)")
    ap.add_argument("--gram", metavar="WIDTHS", help="time add_gram against x^T x at these input widths instead")
    ap.add_argument("--gram-blocks", default="128,256,384,512,768", help="with --gram: the block sizes to time")
    ap.add_argument("--tokens", type=int, default=4096, help="with --gram: inputs per add_batch (capture.BATCH_TOKENS)")
    ap.add_argument("--factor", metavar="WIDTHS", help="time GPTQ's factorization at these input widths instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gram:
        return gram(args)
    if args.factor:
        return factor(args)
    with tempfile.TemporaryDirectory() as tmp:
        base_path = baseline_package(args.baseline, Path(tmp)) if args.baseline else None
        if args.memory:
            impls = {"now": ("mpq2", None)}
            if base_path:
                impls[args.baseline] = ("mpq2_base", base_path)
            memory(args, impls)
        else:
            impls = {"now": load("mpq2", None)}
            if base_path:
                impls[args.baseline] = load("mpq2_base", base_path)
            speed(args, impls)


if __name__ == "__main__":
    main()
