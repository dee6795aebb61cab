#!/usr/bin/env python3
"""Speed on a real model: SmolLM2-135M files of the quality table (bench/quality_smollm2.py), one
llama-bench run over all of them (-p 512 -n 128), side by side.

    python3 bench/speed_smollm2.py [--threads 1,2] [--reps 5] [--repack 1]

Not a fair race, and the table says so: SmolLM2's rows are 576 wide, so llama-quantize gives
llama.cpp's 2-bit types only the 1536-wide ffn_down and falls back to 4- and 5-bit types for
everything else; the tensor-type mix of every file (share of the matrix weights) is printed beside
the table. The fair race is bench/speed_fair_model.py.

Files: the quality benchmark's (~/.cache/mpq2/bench; run bench/quality_smollm2.py first), plus a
Q4_0 file made here with llama-quantize from the F16 one.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import run  # noqa: E402
from speed_fair_model import print_table, stream_bandwidth, weight_bytes_per_token  # noqa: E402

from llama_mpq2._libs import bin_path  # noqa: E402

WORK = Path.home() / ".cache" / "mpq2" / "bench"
# label -> file of the quality table (the MPQ2 one is convert_mpq.py's default output)
FILES = {
    "MPQ2 (convert_mpq.py)": "smollm2-mpq2-attnv-q5_0.gguf",
    "Q2_K": "smollm2-q2_k.gguf",
    "IQ2_XXS": "smollm2-iq2_xxs.gguf",
    "IQ2_XS": "smollm2-iq2_xs.gguf",
    "IQ2_S": "smollm2-iq2_s.gguf",
    "Q4_0": "smollm2-q4_0.gguf",
}


def type_mix(path: Path) -> str:
    """Tensor types of the matrices, as shares of their weights."""
    import gguf
    count = collections.Counter()
    for t in gguf.GGUFReader(path).tensors:
        if len(t.shape) >= 2:
            count[t.tensor_type.name] += int(t.n_elements)
    total = sum(count.values())
    return ", ".join(f"{name} {n / total:.0%}" for name, n in count.most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--repack", default="1", help="llama-bench --repack values (1: llama.cpp's default)")
    args = ap.parse_args()
    q4 = WORK / FILES["Q4_0"]
    if not q4.exists():
        part = q4.with_suffix(".part")
        run([bin_path("llama-quantize"), WORK / "smollm2-f16.gguf", part, "Q4_0"])
        part.replace(q4)
    files = {label: WORK / name for label, name in FILES.items()}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise SystemExit(f"missing (run bench/quality_smollm2.py first): {', '.join(missing)}")
    stream = {t: stream_bandwidth(int(t)) for t in args.threads.split(",")}
    cmd = [bin_path("llama-bench"), "-p", "512", "-n", "128", "-t", args.threads, "-r", args.reps,
           "--repack", args.repack, "-o", "json"]
    for f in files.values():
        cmd += ["-m", f]
    records = json.loads(run(cmd).stdout)
    print_table(records, {str(f): weight_bytes_per_token(f) for f in files.values()}, stream,
                names={str(f): label for label, f in files.items()})
    print("\n| file | size MB | matrix types (share of weights) |")
    print("|---|---|---|")
    for label, f in files.items():
        print(f"| {label} | {f.stat().st_size / 1e6:.1f} | {type_mix(f)} |")


if __name__ == "__main__":
    main()
