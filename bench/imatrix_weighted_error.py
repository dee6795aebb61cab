#!/usr/bin/env python3
"""Weight error of a tensor in quantized GGUFs against the F16 file, weighted by an imatrix:
sqrt(sum_j h_j e_ij^2 / sum_j h_j w_ij^2), h the imatrix's mean squared input of column j.
Shows which format keeps the weights of a tensor's outlier input channels (BENCHMARKS, "The fair race").

    python3 bench/imatrix_weighted_error.py smollm2-f16.gguf imatrix-ptb.gguf fair-mpq2.gguf \\
        smollm2-fair-mpq2r.gguf smollm2-fair-mpq2r-convert.gguf --tensors blk.0.ffn_down,blk.10.ffn_down,blk.29.ffn_down
"""
from __future__ import annotations

import argparse

import gguf
import numpy as np

import mpq2.codec  # noqa: F401  registers MPQ2/MPQ2R with gguf.quants


def tensors(path: str) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def values(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)]).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("f16")
    ap.add_argument("imatrix")
    ap.add_argument("quantized", nargs="+")
    ap.add_argument("--tensors", default="blk.0.ffn_down", help="comma-separated tensor names without .weight")
    args = ap.parse_args()
    ref, imat = tensors(args.f16), {k: np.asarray(t.data, np.float64) for k, t in tensors(args.imatrix).items()}
    files = [(path, tensors(path)) for path in args.quantized]
    for base in args.tensors.split(","):
        name = base + ".weight"
        w = values(ref[name])
        h = imat[name + ".in_sum2"].reshape(-1) / float(imat[name + ".counts"].reshape(-1)[0])
        print(f"{name}: imatrix max/mean {h.max() / h.mean():.0f}")
        for path, ts in files:
            e = w - values(ts[name])
            print(f"  {path}: relative {np.linalg.norm(e) / np.linalg.norm(w):.3f}, "
                  f"imatrix-weighted {np.sqrt((e ** 2 * h).sum() / (w ** 2 * h).sum()):.3f}")


if __name__ == "__main__":
    main()
