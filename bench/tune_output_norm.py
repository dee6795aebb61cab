#!/usr/bin/env python3
"""The converter's final-norm tuning (`--tune-output-norm`), applied after the fact to a GGUF that
convert_mpq.py wrote without it: the only tensor that step changes is output_norm.weight (it runs
after every block and after the output projection is encoded), so tuning it here, on the same
calibration sequences, gives the file the converter would write, up to float summation order,
in minutes instead of a whole conversion.

    python3 bench/tune_output_norm.py smollm2-mpq2r-tn64-model.gguf --source smollm2-f16.gguf \
        --calib-file ptb.train.txt -o smollm2-mpq2r-tn64-model-out.gguf

The quantized model is the source model with every tensor replaced by what gguf-py decodes from
the GGUF (MPQ2/MPQ2R through the project's numpy mirror), as the tests' logits checks do. Target:
the float model's logits (the converter's default --norm-target model).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from mpq2 import calibration, gguf_out, norms
from mpq2.convert import _load
from mpq2.gguf_in import dequantized_state_dict


@torch.no_grad()
def last_hidden(model, seqs: torch.Tensor) -> list[torch.Tensor]:
    """The last block's output (before the final norm), one tensor per sequence."""
    norm, model.model.norm = model.model.norm, torch.nn.Identity()
    try:
        return [model.model(row[None], use_cache=False).last_hidden_state for row in seqs]
    finally:
        model.model.norm = norm


def main() -> None:
    import gguf
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path, help="a convert_mpq.py output made with --no-tune-output-norm")
    ap.add_argument("--source", type=Path, required=True, help="the float model it was converted from (GGUF or HF dir)")
    ap.add_argument("--calib-file", type=Path, action="append", required=True)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("-o", "--outfile", type=Path, required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    gguf_out.check_output_path(args.outfile, args.force)

    kind = "hf" if args.source.is_dir() else "gguf"
    model, tokenizer = _load(args.source, kind)
    seqs = calibration.calibration_batch(tokenizer, args.calib_file, args.nsamples, args.seqlen, args.seed)
    w_float = model.lm_head.weight.detach().clone()
    norm_float = copy.deepcopy(model.model.norm)
    target_hidden = last_hidden(model, seqs)

    cfg = model.config
    sd = dequantized_state_dict(args.gguf, cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads)
    missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    print(f"loaded {len(sd)} tensors from {args.gguf}; not in the file: {missing.missing_keys}", file=sys.stderr)
    hidden = last_hidden(model, seqs)

    ratio = norms.tune_output(model.model.norm, model.lm_head.weight.detach(), hidden,
                              norms.float_logits_of(norm_float, w_float, [(h,) for h in target_hidden]), args.steps)
    print(f"final norm tuned: KL divergence to the float logits x{ratio:.3f}", file=sys.stderr)
    reader = gguf.GGUFReader(args.gguf)
    ftype = int(reader.fields["general.file_type"].parts[-1][0])
    gain = model.model.norm.weight.detach().float().numpy().copy()
    gguf_out.write_atomic(args.outfile, reader, {"output_norm.weight": gguf_out.Replacement(gain, gguf.GGMLQuantizationType.F32)},
                          ftype, args.force)


if __name__ == "__main__":
    main()
