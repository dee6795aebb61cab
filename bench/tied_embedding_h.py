#!/usr/bin/env python3
"""Experiment: does a different GPTQ Hessian for a tied embedding/output help its input role?

Re-encodes only token_embd.weight of an MPQ2 file (SmolLM2) with GPTQ under
  damp:X     H = output-role Hessian (final normed hidden states of the float model), percdamp X
  fisher:B   H = H_out / tr(H_out) + B * F / tr(F), F the empirical Fisher of the LM loss with
             respect to the input embeddings (32 calibration sequences)
  rtn:0      no GPTQ, round to nearest without importance
and writes one file per variant (everything else byte-identical to BASE), to be measured with
llama-perplexity --kl-divergence (the results are in docs/BENCHMARKS.md, "Where the loss is").

    python3 bench/tied_embedding_h.py --base smollm2-mpq2.gguf damp:0.1 fisher:0.3 rtn:0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "converter"))
import gguf  # noqa: E402
import torch  # noqa: E402

from mpq2 import calibration, codec, convert, gguf_out  # noqa: E402
from mpq2.gptq import MPQ2GPTQ, QuantConfig  # noqa: E402

WORK = Path.home() / ".cache" / "mpq2" / "bench"


def output_hessian(model, seqs) -> MPQ2GPTQ:
    g = MPQ2GPTQ(model.model.embed_tokens.weight)
    with torch.no_grad():
        for row in seqs:
            g.add_batch(model.model(row[None], use_cache=False).last_hidden_state)
    return g


def input_fisher(model, seqs) -> torch.Tensor:
    for p in model.parameters():
        p.requires_grad_(False)
    n = model.config.hidden_size
    F = torch.zeros(n, n, dtype=torch.float64)
    for row in seqs:
        emb = model.model.embed_tokens(row[None]).detach().requires_grad_(True)
        loss = model(inputs_embeds=emb, labels=row[None], use_cache=False).loss * row.numel()
        (grad,) = torch.autograd.grad(loss, emb)
        F += grad[0].double().T @ grad[0].double()
    return F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="damp:X, fisher:B or rtn:0")
    ap.add_argument("--base", type=Path, default=WORK / "smollm2-mpq2.gguf")
    ap.add_argument("--model", type=Path, default=WORK / "smollm2-f16.gguf")
    ap.add_argument("--calib-file", type=Path, default=WORK / "ptb.train.txt")
    ap.add_argument("--outdir", type=Path, default=WORK)
    a = ap.parse_args()
    model, tok = convert._load(a.model, "gguf")
    seqs = calibration.calibration_batch(tok, [a.calib_file], 64, 512, 0)
    E = model.model.embed_tokens.weight.detach().float()
    g = output_hessian(model, seqs)
    H_out = g.H.clone()
    F = input_fisher(model, seqs[:32]) if any(v.startswith("fisher:") for v in a.variants) else None
    reader = gguf.GGUFReader(a.base)
    for spec in a.variants:
        kind, val = spec.split(":")
        if kind == "rtn":
            data = codec.quantize(E.numpy())
        else:
            g.H = H_out if kind == "damp" else H_out / torch.trace(H_out) + float(val) * F / torch.trace(F)
            data = g.fasterquant(E, QuantConfig(percdamp=float(val) if kind == "damp" else 0.01)).packed
        out = a.outdir / f"{a.base.stem}-embd-{kind}{val}.gguf"
        gguf_out.write_atomic(out, reader, {"token_embd.weight": gguf_out.Replacement(data, gguf.GGMLQuantizationType.MPQ2)},
                              int(reader.fields[gguf.Keys.General.FILE_TYPE].contents()), force=True)
        print(out, flush=True)


if __name__ == "__main__":
    main()
