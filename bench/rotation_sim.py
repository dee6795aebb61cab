#!/usr/bin/env python3
"""Does a fixed 64-point rotation before MPQ2 encoding help? A simulation on SmolLM2-135M and PTB.

Incoherence processing (QuIP, QuaRot): a weight row w and an activation x can both be turned by
one orthogonal R, since w.x = (Rw).(Rx). With R block-diagonal, one signed Walsh-Hadamard
transform per 64 weights (the MPQ2 block), the weights of every block are spread evenly over
its 64 coordinates: outliers vanish and every word looks Gaussian, which a 2-bit grid fits far
better. The activation side is one 64-point transform per block of the input vector, done once
per column before it is quantized to int8.

This script quantizes SmolLM2 in PyTorch with the real MPQ2 encoder (mpq2.gptq.MPQ2GPTQ,
sequential GPTQ over PTB-train sequences) in the original or the rotated basis, optionally the
tied embedding/output too, and measures perplexity on the first chunks of PTB test (second
half of each 512-token chunk scored, as llama-perplexity does):

    python3 bench/rotation_sim.py --rotate none --embd float     # blocks only, as grid_ablation
    python3 bench/rotation_sim.py --rotate h64 --embd mpq2       # everything, rotated

Prints one line: the configuration, PPL, seconds, mean relative output error per layer kind.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "converter"))
sys.path.insert(0, str(HERE))
from grid_ablation import WORK, perplexity  # noqa: E402
from mpq2 import calibration, capture, norms  # noqa: E402
from mpq2.gptq import MPQ2GPTQ, QuantConfig  # noqa: E402

def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw = {"gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, **kw)


def quantize(W, g: MPQ2GPTQ, cfg: QuantConfig) -> tuple[torch.Tensor, float]:
    """The converter's own encoding (cfg.rotate: MPQ2R, GPTQ in the rotated basis); returns the
    decoded weights and the relative output error over the calibration data."""
    res = g.fasterquant(W, cfg)
    return res.weight, res.rel_output_error


def weight_errors(path: Path, names: list[str], rows: int = 512) -> None:
    """Round-to-nearest relative weight error of the first rows of some tensors, MPQ2 against
    MPQ2R (the C reference through llama_mpq2.ggml), without GPTQ or calibration."""
    import gguf
    from llama_mpq2 import ggml
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))[:rows]
               for t in gguf.GGUFReader(path).tensors if t.name in names}
    tensors["i.i.d. Gaussian"] = np.random.default_rng(0).standard_normal((rows, 576))
    for name, w in tensors.items():
        w = w.astype(np.float32)
        err = {q: float(np.linalg.norm(ggml.dequantize(ggml.quantize(w, qtype=q), qtype=q) - w) / np.linalg.norm(w))
               for q in ("mpq2", "mpq2r")}
        print(f"{name} {tuple(w.shape)}: relative weight error mpq2 {err['mpq2']:.3f}, mpq2r {err['mpq2r']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rotate", choices=["none", "h64"], default="h64")
    ap.add_argument("--embd", choices=["float", "mpq2"], default="mpq2", help="tied embedding/output")
    ap.add_argument("--float", default="", help="comma-separated linear names kept float (e.g. v_proj)")
    ap.add_argument("--tune-norms", type=int, default=0, metavar="STEPS",
                    help="after each block is quantized, tune its RMSNorm gains (float, free in the file) for STEPS "
                         "Adam steps to match the float block's output (norm tweaking)")
    ap.add_argument("--norm-target", choices=["block", "float"], default="block",
                    help="what the tuned norms match: the float block on the same (quantized-model) inputs, or the "
                         "float model's own hidden states (which also corrects the error of the blocks before)")
    ap.add_argument("--embd-first", action="store_true",
                    help="quantize the tied embedding first (GPTQ on the float model's final hidden states), so the "
                         "blocks are calibrated on its input-role error")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=Path, default=WORK / "smollm2-f16.gguf", help="the float model (a GGUF)")
    ap.add_argument("--weight-errors", action="store_true",
                    help="only print round-to-nearest weight errors of a few tensors, MPQ2 against MPQ2R")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.weight_errors:
        weight_errors(args.model, ["token_embd.weight", "blk.0.attn_q.weight", "blk.10.attn_v.weight",
                                   "blk.20.ffn_up.weight", "blk.5.ffn_down.weight"])
        return
    model, tok = load(args.model)
    cfg = QuantConfig(rotate=args.rotate == "h64")
    keep = {s for s in args.float.split(",") if s}
    seqs = calibration.calibration_batch(tok, [WORK / "ptb.train.txt"], args.nsamples, 512, 0)
    t0, errs = time.time(), {}
    finputs = capture.first_block_inputs(model, seqs)       # the float model's trajectory
    if args.embd_first and args.embd == "mpq2":
        emb = model.model.embed_tokens.weight
        g = MPQ2GPTQ(emb)
        with torch.no_grad():
            for row in seqs:
                g.add_batch(model.model(row[None], use_cache=False).last_hidden_state)
        emb.data, rel = quantize(emb.detach().float(), g, cfg)
        errs["embd"] = [rel]
    inputs = capture.first_block_inputs(model, seqs)
    for _, block in capture.blocks(model):
        lin = {n: m for n, m in capture.linear_modules(block).items() if n.split(".")[-1] not in keep}
        g = {n: MPQ2GPTQ(m.weight) for n, m in lin.items()}
        capture.collect(block, inputs, {n: x.add_batch for n, x in g.items()})
        ftargets = capture.run_block(block, finputs)
        targets = ftargets if args.norm_target == "float" else capture.run_block(block, inputs)
        for n, m in lin.items():
            m.weight.data, rel = quantize(m.weight.detach().float(), g[n], cfg)
            errs.setdefault(n.split(".")[-1], []).append(rel)
        if args.tune_norms:
            errs.setdefault("norm_tune", []).append(norms.tune(block, inputs, targets, args.tune_norms))
        inputs = capture.run_block(block, inputs)
        finputs = ftargets
    if args.embd == "mpq2" and not args.embd_first:
        emb = model.model.embed_tokens.weight
        g = MPQ2GPTQ(emb)
        with torch.no_grad():
            for hs, _, _ in inputs:
                g.add_batch(model.model.norm(hs))
        emb.data, rel = quantize(emb.detach().float(), g, cfg)
        errs["embd"] = [rel]
    ppl = perplexity(model, tok, chunks=args.chunks)
    print(f"rotate={args.rotate} embd={args.embd} float={args.float or '-'} tune_norms={args.tune_norms} "
          f"norm_target={args.norm_target} embd_first={args.embd_first}: PPL {ppl:.2f} "
          f"({time.time() - t0:.0f} s); relative output error "
          + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in errs.items()), flush=True)


if __name__ == "__main__":
    main()
