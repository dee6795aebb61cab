#!/usr/bin/env python3
"""How fast MPQ2 quantizes, two ways, each side by side in one run (min / median of the repeats).

1. The reference quantizer alone (ggml_ext/src/ggml-mpq2.c, built by bench/bench_quantize_ref.c
   with the flags each revision's ggml_ext/cmake/ggml-mpq2.cmake gives it): this tree's against a git revision's, on the same random rows and
   imatrix, the repeats interleaved; it checks that both give the same bytes (FNV hash).

       python3 bench/quantize_speed.py --baseline REV [--rows 256] [--cols 4096] [--repeats 5]

2. llama-quantize on an F16 GGUF (the fair race's model by default, bench/speed_fair_model.py
   --prepare-only writes it), --pure with an imatrix (output and token embedding Q4_0), for MPQ2
   and MPQ2R beside llama.cpp's Q2_K and IQ2_XS: weights per second over the whole file
   (llama-quantize's own "quantize time").

       python3 bench/quantize_speed.py --llama-quantize [--model F16.gguf --imatrix I.gguf] [--threads 2]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchlib import run  # noqa: E402


def base_flags(cmake_text: str) -> list[str]:
    """The flags ggml_ext/cmake/ggml-mpq2.cmake gives our sources (those of the revision raced)."""
    return [f for f in ("-ffp-contract=off", "-fno-trapping-math") if f in cmake_text]


def build_ref(src: Path, out: Path, flags: list[str]) -> Path:
    from llama_mpq2._libs import src_dir
    subprocess.run(["cc", "-O3", *flags,
                    f"-DMPQ2_SRC=\"{src}\"", f"-I{ROOT / 'ggml_ext' / 'include'}", f"-I{src_dir() / 'ggml' / 'include'}",
                    str(ROOT / "bench" / "bench_quantize_ref.c"), "-lm", "-o", str(out)], check=True)
    return out


def reference_race(rev: str, rows: int, cols: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_src = tmp / "base" / "ggml_ext" / "src" / "ggml-mpq2.c"
        old_src.parent.mkdir(parents=True)
        old_src.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:ggml_ext/src/ggml-mpq2.c"],
                                           check=True, capture_output=True).stdout)
        old_cmake = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:ggml_ext/cmake/ggml-mpq2.cmake"],
                                   check=True, capture_output=True, text=True).stdout
        now_cmake = (ROOT / "ggml_ext" / "cmake" / "ggml-mpq2.cmake").read_text()
        exes = {"now": build_ref(ROOT / "ggml_ext" / "src" / "ggml-mpq2.c", tmp / "now", base_flags(now_cmake)),
                rev: build_ref(old_src, tmp / "old", base_flags(old_cmake))}
        rates: dict[str, list[float]] = {k: [] for k in exes}
        hashes: dict[str, set[str]] = {k: set() for k in exes}
        for _ in range(repeats):
            for name, exe in exes.items():
                out = subprocess.run([str(exe), str(rows), str(cols), "1"], check=True, capture_output=True, text=True).stdout
                rate, h = re.search(r"([\d.]+) Mweights/s hash (\w+)", out).groups()
                rates[name].append(float(rate))
                hashes[name].add(h)
    same = len(hashes["now"] | hashes[rev]) == 1
    print(f"reference quantizer, {rows} rows x {cols}, random imatrix, one thread, {repeats} interleaved repeats:")
    print("| build | M weights/s (best / median) |")
    print("|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {max(r):.2f} / {statistics.median(r):.2f} |")
    print(f"speedup (medians): {statistics.median(rates['now']) / statistics.median(rates[rev]):.1f}x; "
          f"bytes {'identical' if same else 'DIFFER'} ({', '.join(sorted(hashes['now'] | hashes[rev]))})")
    if not same:
        raise SystemExit(1)


def llama_quantize_race(model: Path, imatrix: Path, threads: int, repeats: int, types: list[str]) -> None:
    from llama_mpq2._libs import bin_path
    import gguf
    weights = sum(int(t.n_elements) for t in gguf.GGUFReader(model).tensors if len(t.shape) >= 2)
    times: dict[str, list[float]] = {t: [] for t in types}
    with tempfile.TemporaryDirectory(dir=model.parent) as tmp:
        for _ in range(repeats):
            for typ in types:
                out = Path(tmp) / f"{typ}.gguf"
                # the output and token embedding Q4_0 in every file, as in the speed race (the IQ2
                # types need an imatrix there, which llama-imatrix does not record)
                proc = run([bin_path("llama-quantize"), "--pure", "--output-tensor-type", "q4_0", "--token-embedding-type",
                            "q4_0", "--imatrix", imatrix, model, out, typ, threads])
                ms = float(re.search(r"quantize time =\s*([\d.]+) ms", proc.stdout + proc.stderr).group(1))
                times[typ].append(ms / 1000)
                out.unlink()
    print(f"llama-quantize --pure --imatrix (output and token embedding q4_0), {model.name} "
          f"({weights / 1e6:.0f} M weights in its matrices, embedding and output included), "
          f"{threads} threads, {repeats} interleaved repeats:")
    print("| type | seconds (min / median) | M weights/s per thread (best) |")
    print("|---|---|---|")
    for typ, t in times.items():
        print(f"| {typ} | {min(t):.1f} / {statistics.median(t):.1f} | {weights / min(t) / threads / 1e6:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="REV", help="race the reference quantizer against this revision's")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--llama-quantize", action="store_true", help="time llama-quantize per type instead")
    speed = Path.home() / ".cache" / "mpq2" / "speed"
    ap.add_argument("--model", type=Path, default=speed / "fair-12L-f16.gguf")
    ap.add_argument("--imatrix", type=Path, default=speed / "fair-12L-imatrix.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="MPQ2,MPQ2R,Q2_K,IQ2_XS")
    args = ap.parse_args()
    if args.llama_quantize:
        llama_quantize_race(args.model, args.imatrix, args.threads, args.repeats, args.types.split(","))
    elif args.baseline:
        reference_race(args.baseline, args.rows, args.cols, args.repeats)
    else:
        ap.error("give --baseline REV or --llama-quantize")


if __name__ == "__main__":
    main()
