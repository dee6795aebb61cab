#!/usr/bin/env python3
"""MPQ2 x Q8_0 dot-product throughput per x86 kernel, in GB/s of MPQ2 weight bytes, against a
plain streaming read of the same bytes (bench/bench_vec_dot.c, one thread, one vec_dot call per
row), and of the repacked 16-row kernel (ggml_mpq2x16_mul, what the CPU_REPACK buffer runs) over
the same rows with 1 and 8 activation columns. Builds bench_vec_dot.c once per kernel
(-march=native, then with features turned off) and prints a markdown table for docs/BENCHMARKS.md.

    python3 bench/bench_vec_dot.py [--mib 64] [--n 4096] [--repeats 9] [--cache-mib 0.5]
    python3 bench/bench_vec_dot.py --types mpq2,q2_K,iq2_xxs,iq2_xs,q2_0,q4_0 [--mib 64] [--cache-mib 0.5]

The second form builds bench/bench_types.c against the patched libraries (LLAMA_MPQ2_LIB_DIR or
build/bin) and races the CPU backend's own vec_dot of each type over the same number of weights.

Needs a C compiler and the patched llama.cpp headers (LLAMA_MPQ2_SRC_DIR, or build/llama.cpp-src).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from llama_mpq2._libs import lib_dir, src_dir

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [  # (label, flags); "scalar" is ggml_vec_dot_mpq2_q8_0_generic from the native build
    ("-march=native", ["-march=native"]),
    ("-march=native -mno-avx512vnni", ["-march=native", "-mno-avx512vnni"]),
    ("-march=native -mno-avx512vbmi", ["-march=native", "-mno-avx512vbmi"]),
    ("-mavx2 -mfma -mf16c", ["-mavx2", "-mfma", "-mf16c"]),
    ("-mavx2 -mfma -mf16c -mgfni", ["-mavx2", "-mfma", "-mf16c", "-mgfni"]),
]
INT8_BLOCKS = 0.0004
LINE = re.compile(r"^(.+?)\s+([\d.]+) MiB\s+min\s+([\d.]+) ms\s+median\s+([\d.]+) ms\s+->\s+([\d.]+) GB/s \(min\)\s+([\d.]+) GB/s")


def llama_src() -> Path:
    try:
        return src_dir()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


def build(flags: list[str], out: Path) -> None:
    g = llama_src() / "ggml"
    subprocess.run(["cc", "-O3", "-std=gnu11", *flags, f"-I{g}/include", f"-I{g}/src", f"-I{g}/src/ggml-cpu",
                    f"-I{ROOT}/ggml_ext/include", f"-I{ROOT}/ggml_ext/src", f"-I{ROOT}/tests/simd",
                    str(ROOT / "bench/bench_vec_dot.c"), str(ROOT / "ggml_ext/src/ggml-cpu-mpq2.c"),
                    str(ROOT / "ggml_ext/src/ggml-mpq2.c"), str(ROOT / "ggml_ext/src/ggml-cpu-mpq2-repack.c"),
                    "-lm", "-o", str(out)], check=True)


def measure(exe: Path, mib: float, n: int, repeats: int) -> dict[str, tuple[float, float]]:
    out = subprocess.run([str(exe), str(mib), str(n), str(repeats), str(INT8_BLOCKS)], check=True, capture_output=True,
                         text=True).stdout
    res = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            res[m.group(1).strip()] = (float(m.group(5)), float(m.group(6)))
    return res


TYPE_LINE = re.compile(r"^(\S+(?: \S+)?)\s+([\d.]+) MiB\s+GB/s min-time\s+([\d.]+)\s+median\s+([\d.]+)\s+Gweights/s median\s+([\d.]+)")


def race_types(types: str, sizes: list[float], n: int, repeats: int) -> None:
    lib, inc = lib_dir(), llama_src() / "ggml" / "include"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "bench_types"
        subprocess.run(["cc", "-O2", f"-I{inc}", str(ROOT / "bench/bench_types.c"), f"-L{lib}", "-lggml-cpu", "-lggml-base",
                        f"-Wl,-rpath,{lib}", "-lm", "-o", str(exe)], check=True)
        print(f"row length {n}, {repeats} repeats, 1 thread, the same number of weights for every type\n")
        print("| weights (as MPQ2) | type | GB/s min-time | GB/s median | G weights/s median | x MPQ2 (weights/s) | stream read GB/s (median) |")
        print("|---|---|---|---|---|---|---|")
        for mib in sizes:
            out = subprocess.run([str(exe), str(mib), str(n), str(repeats), *types.split(",")], check=True,
                                 capture_output=True, text=True).stdout
            rows = {m.group(1): m.groups() for m in map(TYPE_LINE.match, out.splitlines()) if m}
            base = float(rows["mpq2"][4]) if "mpq2" in rows else None
            for t in types.split(","):
                _, _, gmin, gmed, gw = rows[t]
                ratio = f"{float(gw) / base:.2f}" if base else "-"
                print(f"| {mib:g} MiB | {t} | {float(gmin):.2f} | {float(gmed):.2f} | {float(gw):.2f} | {ratio} | "
                      f"{float(rows['read ' + t][3]):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=float, default=64.0, help="MiB of MPQ2 weights (well above the caches)")
    ap.add_argument("--cache-mib", type=float, default=0.5, help="a second, cache-resident size (0: skip)")
    ap.add_argument("--n", type=int, default=4096, help="row length (a multiple of 64)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--types", default="", help="race the library's vec_dot of these types instead (ggml type names)")
    ap.add_argument("--int8-blocks", type=float, default=0.0004,
                    help="fraction of MPQ2 blocks with an int8 word (default: as in converted models)")
    args = ap.parse_args()
    global INT8_BLOCKS
    INT8_BLOCKS = args.int8_blocks
    if args.types:
        race_types(args.types, [args.mib] + ([args.cache_mib] if args.cache_mib > 0 else []), args.n, args.repeats)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, flags) in enumerate(VARIANTS):
            exe = Path(tmp) / f"bench{i}"
            build(flags, exe)
            for mib in [args.mib] + ([args.cache_mib] if args.cache_mib > 0 else []):
                res = measure(exe, mib, args.n, args.repeats)
                kernel = next(k for k in res if k.startswith("vec_dot ") and k != "vec_dot generic")
                rows.append((mib, f"`{kernel.removeprefix('vec_dot ')}` (`{label}`)", res[kernel], res["stream read"]))
                if kernel + " 2x2" in res:   # per column: two rows x two columns per call (prompts)
                    rows.append((mib, f"`{kernel.removeprefix('vec_dot ')}` 2x2, per column (`{label}`)",
                                 res[kernel + " 2x2"], res["stream read"]))
                for x16 in [k for k in res if k.startswith("x16 ")]:   # the repacked 16-row kernel
                    cols = "8 columns, per column" if x16.endswith(" 8col") else "1 column"
                    rows.append((mib, f"repacked x16 `{x16.removeprefix('x16 ').removesuffix(' 8col')}` {cols} (`{label}`)",
                                 res[x16], res["stream read"]))
                if i == 0:
                    rows.append((mib, "`generic` scalar (`-march=native`)", res["vec_dot generic"], res["stream read"]))
    print(f"row length {args.n}, {args.repeats} repeats, 1 thread; GB/s of MPQ2 weight bytes (20 bytes per 64 weights)\n")
    print("| weights | kernel | GB/s min-time | GB/s median | stream read GB/s (median) | median / stream |")
    print("|---|---|---|---|---|---|")
    for mib, name, (gmin, gmed), (smin, smed) in sorted(rows, key=lambda r: -r[0]):
        print(f"| {mib:g} MiB | {name} | {gmin:.2f} | {gmed:.2f} | {smed:.2f} | {gmed / smed:.2f} |")


if __name__ == "__main__":
    main()
