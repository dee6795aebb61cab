#!/usr/bin/env python3
"""A tier below 2.5 bits per weight: which word grid per header bit? A round-to-nearest simulation.

MPQ2 spends 32 header bits per 64 weights: an E6M2 block scale (8), per 16-weight word a scale
multiplier (3 bits, SCALE_MULT) and a zero offset (2 bits, ZERO2), and a 4-bit bitmap whose int8
words the converter's gate almost never picks. Two 2.25-bpw layouts keep every 32-bit word
aligned (rows a multiple of 128):

  b128x8   one 32-bit header per 128 weights: the E6M2 scale and, per word, 3 bits that pick one
           of 8 (multiplier, zero) pairs; 36 bytes = 9 words per block
  b64x4    two 16-bit headers per 128 weights, each an E6M2 scale per 64 weights and, per word,
           2 bits that pick one of 4 pairs

  b256x2   (2.125 bpw, rows a multiple of 256) one 32-bit header per 256 weights: the scale and
           1 bit per word, one of 2 pairs

and which pairs make up the table is the question this script answers, by greedy forward
selection over MPQ2's 32 pairs on --train tensors (then single swaps while they help), scored
on the others.

Every layout is fitted the same way, exhaustively: per block, 12 E6M2 scale codes (from six
above the one where MPQ2's largest level, 40 x 40 d, just reaches the block's largest weight, down
to five below it: the best code of every block was inside, measured on Gaussian rows) x every allowed pair per
word, codes rounded to nearest; the error is the plain squared error (no importance, no GPTQ).
That makes the numbers a proxy for the layouts' relative quality, not a perplexity. Weights are
turned by MPQ2R's 64-point rotation first (rotation.py), as the converter's default type does.

    python3 bench/tier_sim.py [--model smollm2-f16.gguf] [--rows 256] [--blocks 0,9,19,29]

Prints, per layout and tensor, the relative squared error sum (x - q)^2 / sum x^2, and the
chosen pairs; then the same for the real encoders, MPQ2S's (codec_s, with its fixed table) and
MPQ2R's (codec.quantize_r, bitmap in use). Without --model, Gaussian and Student-t weights only. Below them, for reference, the
same error of llama.cpp's own quantizers (`ggml_quantize_chunk` of the built libggml-base, an
all-ones importance matrix, the same turned weights), where the build is there.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converter"))
from mpq2 import codec, codec_s, rotation  # noqa: E402
from mpq2.format import GRID_STEP, SCALE_MULT, ZERO2, d_from_code  # noqa: E402

LLAMA_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K", "MPQ2", "IQ3_XXS"]
GROUP = 16
PAIRS = [(int(m), int(z)) for m in SCALE_MULT for z in ZERO2]      # MPQ2's 32 (multiplier, zero)
N_D = 12                                                             # scale codes tried per block


def pair_errors(x: torch.Tensor, block: int) -> torch.Tensor:
    """E[b, k, w, p]: squared error of word w of block b at the k-th scale code with pair p."""
    x = x.reshape(-1, block // GROUP, GROUP)                                  # (blocks, words, 16)
    amax = x.abs().amax((1, 2)).clamp_min(1e-30)
    top = float(SCALE_MULT.max()) * (3 * GRID_STEP - float(ZERO2.min()))     # largest |level| / d
    d_all = torch.from_numpy(d_from_code(np.arange(256)).astype(np.float32))
    k0 = torch.searchsorted(d_all, amax / top)                                # code reaching amax
    d = d_all[(k0[:, None] + 6 - torch.arange(N_D)).clamp(0, 255)]            # (blocks, K)
    out = torch.empty(x.shape[0], N_D, x.shape[1], len(PAIRS))
    for p, (m, z) in enumerate(PAIRS):
        step = d * (m * GRID_STEP)                                            # (blocks, K)
        t = x[:, None] / step[:, :, None, None] + z / GRID_STEP
        c = t.clamp(0, 3).round()
        q = (c - z / GRID_STEP) * step[:, :, None, None]
        out[..., p] = (x[:, None] - q).square().sum(-1)
    return out


def layout_error(E: torch.Tensor, pairs: list[int]) -> float:
    """Total error with the allowed pairs: best pair per word, best scale per block."""
    return float(E[..., pairs].amin(-1).sum(-1).amin(1).sum())


def greedy(Es: list[torch.Tensor], size: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(size):
        rest = [p for p in range(len(PAIRS)) if p not in chosen]
        scores = [sum(layout_error(E, chosen + [p]) for E in Es) for p in rest]
        chosen.append(rest[int(np.argmin(scores))])
    return sorted(swapped(Es, chosen))


def swapped(Es: list[torch.Tensor], chosen: list[int]) -> list[int]:
    """Greedy's table improved by single swaps (one pair out, another in) while any helps."""
    score = lambda t: sum(layout_error(E, t) for E in Es)
    best = score(chosen)
    improved = True
    while improved:
        improved = False
        for i in range(len(chosen)):
            for p in (p for p in range(len(PAIRS)) if p not in chosen):
                trial = chosen[:i] + [p] + chosen[i + 1:]
                if (s := score(trial)) < best:
                    chosen, best, improved = trial, s, True
    return chosen


def llama_cpp_errors(x: np.ndarray) -> dict[str, tuple[float, float]]:
    """{type: (bits per weight, relative squared error)} of llama.cpp's C quantizers on x, or {}."""
    try:
        from llama_cpp_build import lib_dir
        lib = ctypes.CDLL(str(lib_dir() / "libggml-base.so"))
    except (ImportError, OSError):
        return {}
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    class Traits(ctypes.Structure):   # the head of ggml.h's struct ggml_type_traits
        _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                    ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p)]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = {}
    for name in LLAMA_TYPES:
        qt = GGMLQuantizationType[name]
        block, size = GGML_QUANT_SIZES[qt]
        lib.ggml_quantize_init(int(qt))
        packed = np.zeros(rows * n // block * size, np.uint8)
        ones = np.ones(n, np.float32)
        lib.ggml_quantize_chunk(int(qt), x.ctypes.data, packed.ctypes.data, 0, rows, n, ones.ctypes.data)
        y = np.empty_like(x)
        to_float_t(lib.ggml_get_type_traits(int(qt)).contents.to_float)(packed.ctypes.data, y.ctypes.data, x.size)
        out[name] = (size * 8 / block, float(np.square(x - y).sum() / np.square(x).sum()))
    return out


def tensors(args) -> dict[str, torch.Tensor]:
    out = {}
    g = torch.Generator().manual_seed(0)
    out["gaussian"] = torch.randn(args.rows, 4096, generator=g)
    t = torch.distributions.StudentT(4.0).sample((args.rows, 4096))
    out["student-t4"] = t
    if args.model:
        from gguf import GGUFReader
        from gguf.quants import dequantize
        r = GGUFReader(args.model)
        want = {f"blk.{b}.{n}.weight" for b in args.blocks for n in ("attn_q", "attn_output", "ffn_up", "ffn_down")}
        for ten in r.tensors:
            if ten.name in want:
                w = dequantize(ten.data, ten.tensor_type).reshape(-1, int(ten.shape[0])).astype(np.float32)
                w = w[: args.rows, : w.shape[1] // 256 * 256]   # whole blocks of every layout
                out[ten.name] = torch.from_numpy(w)
    return {k: torch.from_numpy(rotation.rotate(v.numpy())) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a GGUF of the model (F16) whose tensors to add")
    ap.add_argument("--rows", type=int, default=256, help="rows per tensor")
    ap.add_argument("--blocks", default="0,9,19,29", help="blocks whose tensors to use")
    ap.add_argument("--train", default="gaussian,student-t4", help="tensors the tables are chosen on")
    args = ap.parse_args()
    args.blocks = [int(b) for b in args.blocks.split(",")]
    torch.set_num_threads(1)
    data = tensors(args)
    E128 = {k: pair_errors(v, 128) for k, v in data.items()}
    E64 = {k: pair_errors(v, 64) for k, v in data.items()}
    E256 = {k: pair_errors(v, 256) for k, v in data.items()}
    norm = {k: float(v.square().sum()) for k, v in data.items()}
    train = args.train.split(",")
    all32 = list(range(len(PAIRS)))
    layouts = {
        "mpq2 (2.5 bpw, bitmap unused)": (E64, all32),
        "b128x8 (2.25)": (E128, greedy([E128[k] for k in train], 8)),
        "b64x4 (2.25)": (E64, greedy([E64[k] for k in train], 4)),
        "b256x2 (2.125: a 32-bit header per 256 weights, 1 bit a word)": (E256, greedy([E256[k] for k in train], 2)),
        "b128, multiplier only, zero 1.5 (2.25)": (E128, [PAIRS.index((int(m), 24)) for m in SCALE_MULT]),
        "b128, all 32 pairs (2.31: 5 bits a word)": (E128, all32),
    }
    names = list(data)
    print("| layout | pairs | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for label, (E, pairs) in layouts.items():
        cells = " | ".join(f"{layout_error(E[k], pairs) / norm[k]:.4f}" for k in names)
        shown = "all 32" if len(pairs) == 32 else " ".join(f"{PAIRS[p][0]}/{PAIRS[p][1]}" for p in pairs)
        print(f"| {label} | {shown} | {cells} |", flush=True)
    for label, enc, dec in (("MPQ2S reference encoder (codec_s, 2.25 bpw)", codec_s.quantize, codec_s.dequantize),
                            ("MPQ2R reference encoder (codec.quantize_r, 2.5 bpw)", codec.quantize_r, codec.dequantize_r)):
        cells = []
        for k in names:
            w = rotation.unrotate(data[k].numpy())          # the encoders turn the rows themselves
            cells.append(f"{float(np.square(w - dec(enc(w))).sum() / np.square(w).sum()):.4f}")
        print(f"| {label} | - | {' | '.join(cells)} |", flush=True)
    ref = {k: llama_cpp_errors(v.numpy()) for k, v in data.items()}
    for name in LLAMA_TYPES:
        if all(name in r for r in ref.values()):
            bpw = ref[names[0]][name][0]
            cells = " | ".join(f"{ref[k][name][1]:.4f}" for k in names)
            print(f"| llama.cpp {name} ({bpw:.4g} bpw, its C quantizer) | - | {cells} |", flush=True)


if __name__ == "__main__":
    main()
