#!/usr/bin/env python3
"""Which 2-bit grid per 16-weight word? A simulation on SmolLM2-135M-Instruct and the PTB.

Quantizes every linear layer of the 30 blocks (sequential GPTQ over 32 x 512 PTB-train tokens,
block size 128, lambda = 1% of mean diag H; the token embedding / output stay float) with one
of these per-16-weight quantizers, then measures perplexity in PyTorch on the first 16 chunks
of 512 tokens of PTB test (second half of each chunk scored, as llama-perplexity does):

  sym     4 symmetric levels (-1.5, -0.5, 0.5, 1.5) x step, continuous step (MPQ2's first grid)
  zint    (c - z) x step, integer zero z in {0, 1, 2, 3}, continuous step
  asym    min + c x step, continuous min and step (an unconstrained affine grid: the bound)
  mpq2    the real MPQ2 encoding (mpq2.gptq.MPQ2GPTQ, bit-exact with the C decoder)

    python3 bench/grid_ablation.py sym        # ~10 min on one core
    python3 bench/grid_ablation.py mpq2 --act-order

Prints one line: grid, PPL, seconds, mean relative output error per layer kind.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "converter"))
from mpq2 import calibration, capture  # noqa: E402
from mpq2.gptq import MPQ2GPTQ, QuantConfig  # noqa: E402

WORK = Path.home() / ".cache" / "mpq2" / "bench"   # made by bench/quality_smollm2.py


def load():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw = {"gguf_file": "smollm2-f16.gguf"}
    model = AutoModelForCausalLM.from_pretrained(WORK, dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(WORK, **kw)


@torch.no_grad()
def perplexity(model, tok, chunks: int = 16, ctx: int = 512) -> float:
    ids = torch.tensor(tok((WORK / "ptb.test.txt").read_text(), add_special_tokens=False)["input_ids"])
    nll, n = 0.0, 0
    for c in range(chunks):
        x = ids[c * ctx:(c + 1) * ctx].clone()
        x[0] = tok.bos_token_id
        lp = torch.log_softmax(model(x[None], use_cache=False).logits[0, ctx // 2:-1].float(), -1)
        tgt = x[ctx // 2 + 1:]
        nll -= lp.gather(1, tgt[:, None]).sum().item()
        n += tgt.numel()
    return math.exp(nll / n)


# ---- per-word quantizers: make(x (rows, 16), importance (16,)) -> q(column index, column) ----

def grid_sym(x, imp, levels=(-3.0, -1.0, 1.0, 3.0)):
    L = torch.tensor(levels)
    amax = x.abs().amax(1).clamp_min(1e-12)
    best, best_e = None, None
    for f in torch.linspace(0.5, 1.2, 15):
        s = amax * f / 3
        q = L[(x[:, :, None] / s[:, None, None] - L).abs().argmin(-1)] * s[:, None]
        e = (((x - q) ** 2) * imp).sum(1)
        if best is None:
            best, best_e = s.clone(), e
        else:
            m = e < best_e
            best[m], best_e[m] = s[m], e[m]
    Lq = L[(x[:, :, None] / best[:, None, None] - L).abs().argmin(-1)]      # least-squares refit
    s2 = (imp * x * Lq).sum(1) / (imp * Lq * Lq).sum(1).clamp_min(1e-12)
    s2 = torch.where(s2 > 0, s2, best)
    return lambda j, w: L[(w[:, None] / s2[:, None] - L).abs().argmin(-1)] * s2


def grid_zint(x, imp, zs=(0.0, 1.0, 2.0, 3.0)):
    rng = (x.amax(1) - x.amin(1)).clamp_min(1e-12)
    best_e = torch.full((x.shape[0],), float("inf"))
    best_s, best_z = rng / 3, torch.full_like(rng, zs[0])
    for f in torch.linspace(0.5, 1.3, 20):
        s = rng * f / 3
        for z in zs:
            q = ((x / s[:, None]) + z).round().clamp(0, 3) - z
            e = (((x - q * s[:, None]) ** 2) * imp).sum(1)
            m = e < best_e
            best_e[m], best_s[m], best_z[m] = e[m], s[m], z
    q = ((x / best_s[:, None]) + best_z[:, None]).round().clamp(0, 3) - best_z[:, None]   # least-squares refit
    s2 = (imp * x * q).sum(1) / (imp * q * q).sum(1).clamp_min(1e-12)
    q2 = ((x / s2[:, None]) + best_z[:, None]).round().clamp(0, 3) - best_z[:, None]
    e2 = (((x - q2 * s2[:, None]) ** 2) * imp).sum(1)
    s = torch.where((s2 > 0) & (e2 < best_e), s2, best_s)
    return lambda j, w: (((w / s) + best_z).round().clamp(0, 3) - best_z) * s


def grid_asym(x, imp):
    lo, hi = x.amin(1), x.amax(1)
    best = None
    for a in torch.linspace(0.0, 0.3, 7):
        for b in torch.linspace(0.0, 0.3, 7):
            l, h = lo + a * (hi - lo), hi - b * (hi - lo)
            s = ((h - l) / 3).clamp_min(1e-12)
            q = ((x - l[:, None]) / s[:, None]).round().clamp(0, 3) * s[:, None] + l[:, None]
            e = (((x - q) ** 2) * imp).sum(1)
            if best is None:
                best = [e, l, s]
            else:
                m = e < best[0]
                best[0][m], best[1][m], best[2][m] = e[m], l[m], s[m]
    l, s = best[1], best[2]
    return lambda j, w: ((w - l) / s).round().clamp(0, 3) * s + l


def gptq_fake(W, H, make, blocksize=128, percdamp=0.01):
    """GPTQ with groups of 16 whose quantizer is fixed when the group's first column comes up."""
    W = W.clone().float()
    cols = W.shape[1]
    imp = torch.diag(H).float().clone()
    H = H + percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    Q = torch.zeros_like(W)
    qf = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1)
        for i in range(i2 - i1):
            c = i1 + i
            if c % 16 == 0:
                qf = make(W1[:, i:i + 16], imp[c:c + 16])
            q = qf(c % 16, W1[:, i])
            Q[:, c] = q
            err = (W1[:, i] - q) / U[c, c]
            W1[:, i:] -= err[:, None] * U[c, c:i2][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return Q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", choices=["sym", "zint", "asym", "mpq2"])
    ap.add_argument("--act-order", action="store_true", help="mpq2 only: GPTQ's act_order")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load()
    seqs = calibration.calibration_batch(tok, [WORK / "ptb.train.txt"], args.nsamples, 512, 0)
    inputs = capture.first_block_inputs(model, seqs)
    make = {"sym": grid_sym, "zint": grid_zint, "asym": grid_asym}.get(args.grid)
    t0, errs = time.time(), {}
    for _, block in capture.blocks(model):
        lin = capture.linear_modules(block)
        g = {n: MPQ2GPTQ(m.weight) for n, m in lin.items()}      # collects H = 2 X X^T / n
        capture.collect(block, inputs, {n: x.add_batch for n, x in g.items()})
        for n, m in lin.items():
            w = m.weight.detach().float()
            if make is None:
                res = g[n].fasterquant(w, QuantConfig(act_order=args.act_order))
                q, rel = res.weight, res.rel_output_error
            else:
                q = gptq_fake(w, g[n].H, make)
                d = (w - q).double()
                rel = float(torch.sqrt(torch.einsum("ij,jk,ik->", d, g[n].H, d)
                                       / torch.einsum("ij,jk,ik->", w.double(), g[n].H, w.double())))
            m.weight.data = q
            errs.setdefault(n.split(".")[-1], []).append(rel)
        inputs = capture.run_block(block, inputs)
    ppl = perplexity(model, tok)
    print(f"{args.grid}{' act-order' if args.act_order else ''}: PPL {ppl:.2f} ({time.time() - t0:.0f} s); "
          "relative output error " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in errs.items()))


if __name__ == "__main__":
    main()
