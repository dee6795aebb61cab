#!/usr/bin/env python3
"""ARM speed without ARM hardware: llvm-mca cycles of the inner loops of MPQ2's NEON kernels and
of llama.cpp's NEON Q2_K, IQ2_XS and Q4_0 (repacked gemv) kernels, per 64 weights, turned into
bytes of weights per cycle beside each core's share of memory bandwidth.

    python3 bench/mca_kernels.py [--cpus apple-m1,neoverse-n1] [--x86]   # markdown table on stdout

Each kernel is compiled here, at run time, with clang for aarch64 (-O2 -mcpu=CPU): MPQ2's from
ggml_ext/src, llama.cpp's from its own tree (LLAMA_MPQ2_SRC_DIR or build/llama.cpp-src; nothing of
it is copied into this repository). The loop that carries the kernel's dot products (the most
sdot, or vpmaddubsw/vpdpbusd on x86) is cut out of clang's assembly; where it sits inside a
per-block loop with a fixed trip count (MPQ2's 16-row gemv: 4 quads per block; IQ2_XS: 4 pairs of
32 per 256), the outer loop's own instructions plus trip x the inner loop's cycles are counted.
llvm-mca (LLVM 19: `apt-get install llvm-19`; LLVM 14 maps neoverse-n1 to a Cortex-A57 model, so
it is refused) simulates 200 iterations of each loop with every load an L1 hit: this is the
compute bound, not a measurement. `--x86` checks the method on this machine's kernels
(-march=znver3, AVX2: MPQ2's 16-row gemv and llama.cpp's Q2_K) against bench/bench_vec_dot.py.

MPQ2's row-wise NEON kernel decides per block whether a block has int8 words (about 1 block in
2500 in converted models); the loop analysed is its all-2-bit path, built from the kernel's own
inline helpers (mpq2_neon_decode(..., false), mpq2_neon_block_dot) in a small wrapper.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Memory bandwidth per core per cycle, from vendors' figures (not measured here):
# (label, GB/s for the chip, cores sharing it, GHz, one core's own streaming rate in GB/s or None)
BANDWIDTH = {
    # Apple M1: LPDDR4X-4266 on 128 bits = 68.25 GB/s; 4 Firestorm cores at 3.2 GHz; one core
    # streams about 58 GB/s (AnandTech's M1 Mac mini review, 2020).
    "apple-m1": ("M1, 4 P-cores", 68.25, 4, 3.2, 58.0),
    # Neoverse N1 as AWS Graviton2: 64 cores at 2.5 GHz, 8 channels of DDR4-3200 = 204.8 GB/s.
    "neoverse-n1": ("Graviton2, 64 cores", 204.8, 64, 2.5, None),
    "znver3": ("this EPYC (Zen3) VM, 2 cores", None, 2, None, None),
}

WRAPPER_ROWWISE = r"""
#include "ggml-cpu-mpq2.c"
// The loop of mpq2_vec_dot_q8_0_neon for blocks without int8 words (the kernel's own helpers).
void mca_mpq2_rowwise_2bit(int n, float * GGML_RESTRICT s, const block_mpq2 * GGML_RESTRICT x,
                           const block_q8_0 * GGML_RESTRICT y) {
    const int nb = n / QK_MPQ2;
    const uint8x16_t ctrl_int8 = vld1q_u8(mpq2_neon_ctrl_tab);
    const int32x4_t  shift2    = vld1q_s32(mpq2_neon_shift_tab);
    float32x4_t acc[2] = { vdupq_n_f32(0.0f), vdupq_n_f32(0.0f) };
    for (int ib = 0; ib < nb; ++ib) {
        mpq2_neon_block b;
        for (int w = 0; w < MPQ2_WORDS; ++w) {
            b.v[w] = mpq2_neon_decode(x + ib, w, ctrl_int8, shift2, false);
            b.m[w] = mpq2_scale_mult[(x[ib].meta >> MPQ2_SCALE_SHIFT(w)) & 7];
        }
        mpq2_neon_block_dot(&b, mpq2_d_from_code(x[ib].d), y + 2*ib, acc);
    }
    *s = vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}
"""

# (name, source, language, function, dot-instruction regex, outer levels, inner trip, weights
# per analysed iteration (per activation column), activation columns, weight bytes per 64)
ARM_KERNELS = [
    ("MPQ2 repacked gemv (16 rows, 1 column)", "ext:ggml-cpu-mpq2-repack.c", "c", "ggml_mpq2x16_mul", r"\bsdot\b", 0, 1, 256, 1, 20),
    ("MPQ2 repacked, 4 columns (prompts)", "ext:ggml-cpu-mpq2-repack.c", "c", "mpq2_x16_neon_gemm", r"\bsdot\b", 0, 1, 256, 4, 20),
    ("MPQ2 row-wise vec_dot", "wrapper", "c", "mca_mpq2_rowwise_2bit", r"\bsdot\b", 0, 1, 64, 1, 20),
    ("MPQ2S repacked gemv (16 rows, 1 column; 2.25 bpw)", "ext:ggml-cpu-mpq2s.c", "c", "mpq2s_x16_neon_gemv", r"\bsdot\b", 0, 1, 512, 1, 18),
    ("llama.cpp Q2_K vec_dot", "llama:ggml/src/ggml-cpu/arch/arm/quants.c", "c", "ggml_vec_dot_q2_K_q8_K", r"\bsdot\b", 0, 1, 256, 1, 21),
    ("llama.cpp IQ2_XS vec_dot", "llama:ggml/src/ggml-cpu/arch/arm/quants.c", "c", "ggml_vec_dot_iq2_xs_q8_K", r"\bsdot\b", 1, 4, 256, 1, 18.5),
    ("llama.cpp Q4_0 repacked gemv (4x4)", "llama:ggml/src/ggml-cpu/arch/arm/repack.cpp", "c++", "ggml_gemv_q4_0_4x4_q8_0", r"\bsdot\b", 0, 1, 128, 1, 36),
]

X86_KERNELS = [
    ("MPQ2 repacked gemv, AVX2 (8 rows a pass)", "ext:ggml-cpu-mpq2-repack.c", "c", "ggml_mpq2x16_mul", r"\bvpmaddubsw\b", 0, 1, 512, 1, 20),
    ("MPQ2S repacked gemv, AVX2 (8 rows a pass; 2.25 bpw)", "ext:ggml-cpu-mpq2s.c", "c", "ggml_mpq2sx16_mul", r"\bvpmaddubsw\b", 0, 1, 1024, 1, 18),
    ("llama.cpp Q2_K vec_dot, AVX2", "llama:ggml/src/ggml-cpu/arch/x86/quants.c", "c", "ggml_vec_dot_q2_K_q8_K", r"\bvpmaddubsw\b", 0, 1, 256, 1, 21),
]


def llama_src() -> Path:
    p = os.environ.get("LLAMA_MPQ2_SRC_DIR")
    src = Path(p) if p else ROOT / "build/llama.cpp-src"
    if not (src / "ggml/src/ggml-cpu").is_dir():
        raise SystemExit(f"llama.cpp source not found at {src} (run setup.sh or set LLAMA_MPQ2_SRC_DIR)")
    return src


def mca_tool() -> str:
    for t in ("llvm-mca-19", "llvm-mca-18", "llvm-mca-17"):
        if shutil.which(t):
            return t
    raise SystemExit("needs llvm-mca 17 or later (apt-get install llvm-19): LLVM 14 has no Neoverse N1 model")


def compile_asm(src: str, lang: str, cpu: str, tmp: Path) -> str:
    g = llama_src() / "ggml"
    if src == "wrapper":
        path = tmp / "rowwise.c"
        path.write_text(WRAPPER_ROWWISE)
    elif src.startswith("ext:"):
        path = ROOT / "ggml_ext/src" / src[4:]
    else:
        path = llama_src() / src[6:]
    x86 = cpu.startswith("znver")
    target = ["--target=x86_64-linux-gnu", f"-march={cpu}", "-mno-avx512f"] if x86 else ["--target=aarch64-linux-gnu", f"-mcpu={cpu}"]
    inc = [f"-I{g}/include", f"-I{g}/src", f"-I{g}/src/ggml-cpu", f"-I{ROOT}/ggml_ext/include", f"-I{ROOT}/ggml_ext/src"]
    if lang == "c++":
        cmd = ["clang++", "-std=gnu++17"]
        if not x86:   # the host's libstdc++ config header: only <cstdint> and the like are needed
            cmd += ["-isystem", "/usr/include/x86_64-linux-gnu/c++/12"]
    else:
        cmd = ["clang", "-std=gnu11"]
    out = tmp / "k.s"
    cmd += [*target, "-O2", "-DNDEBUG", "-D_GNU_SOURCE", *inc, "-S", str(path), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out.read_text()


BRANCH = re.compile(r"^\s+(?:b\.\w+|b|cbn?z|tbn?z|j\w+)\s+.*?(\.LBB\w+)\s*$")


def function_body(asm: str, name: str) -> list[str]:
    lines = asm.splitlines()
    s = next(i for i, l in enumerate(lines) if l.startswith(name + ":"))
    e = next(i for i in range(s, len(lines)) if lines[i].startswith(".Lfunc_end"))
    return lines[s:e]


def loops(body: list[str]) -> list[tuple[int, int]]:
    labels = {m.group(1): i for i, l in enumerate(body) if (m := re.match(r"^(\.LBB\w+):", l))}
    out = []
    for i, l in enumerate(body):
        m = BRANCH.match(l)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            out.append((labels[m.group(1)], i))
    return out


def is_insn(l: str) -> bool:
    t = l.strip()
    return l.startswith("\t") and t != "" and not t.startswith((".", "//", "#"))


def mca_cycles(tool: str, cpu: str, insns: list[str], tmp: Path, iterations: int = 200) -> float:
    f = tmp / "loop.s"
    f.write_text("\n".join(insns) + "\n")
    triple = "x86_64" if cpu.startswith("znver") else "aarch64"
    r = subprocess.run([tool, f"-mtriple={triple}", f"-mcpu={cpu}", f"-iterations={iterations}", str(f)],
                       capture_output=True, text=True, check=True)
    return int(re.search(r"Total Cycles:\s+(\d+)", r.stdout).group(1)) / iterations


def analyse(tool: str, cpu: str, k, tmp: Path) -> dict:
    name, src, lang, func, dot, levels, trip, weights, ncols, bytes64 = k
    body = function_body(compile_asm(src, lang, cpu, tmp), func)
    ls = loops(body)
    count = lambda a, b: sum(bool(re.search(dot, l)) for l in body[a:b + 1])
    # innermost loop with the most dot instructions, then `levels` loops up
    inner = sorted(ls, key=lambda ab: (-count(*ab), ab[1] - ab[0]))[0]
    inner_c = mca_cycles(tool, cpu, [l for l in body[inner[0]:inner[1] + 1] if is_insn(l)], tmp)
    cycles, region = inner_c, inner
    for _ in range(levels):
        outer = min((ab for ab in ls if ab[0] <= region[0] and ab[1] >= region[1] and ab != region),
                    key=lambda ab: ab[1] - ab[0])
        own = [l for i, l in enumerate(body[outer[0]:outer[1] + 1], outer[0])
               if is_insn(l) and not (region[0] <= i <= region[1])]
        cycles = mca_cycles(tool, cpu, own, tmp) + trip * cycles
        region = outer
    per64 = cycles / (weights * ncols / 64)
    return {"name": name, "cycles_iter": cycles, "per64": per64, "bytes_per_cycle": bytes64 / (cycles / (weights / 64)),
            "insns": sum(is_insn(l) for l in body[region[0]:region[1] + 1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", default="apple-m1,neoverse-n1")
    ap.add_argument("--x86", action="store_true", help="the x86 check: -mcpu=znver3, AVX2 kernels")
    args = ap.parse_args()
    tool = mca_tool()
    cpus, kernels = (["znver3"], X86_KERNELS) if args.x86 else (args.cpus.split(","), ARM_KERNELS)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for cpu in cpus:
            label, gbs, cores, ghz, one = BANDWIDTH.get(cpu, (cpu, None, None, None, None))
            print(f"\n### -mcpu={cpu} ({tool})\n")
            if gbs:
                share = gbs / cores / ghz
                print(f"memory: {label}: {gbs} GB/s / {cores} cores / {ghz} GHz = {share:.2f} B/cycle per core when all "
                      f"cores stream" + (f"; one core alone streams {one} GB/s = {one / ghz:.1f} B/cycle" if one else ""))
                print()
            print("| kernel | cycles per 64 weights (per column) | weight bytes read per cycle |")
            print("|---|---|---|")
            res = [analyse(tool, cpu, k, tmp) for k in kernels]
            for r in res:
                print(f"| {r['name']} | {r['per64']:.2f} | {r['bytes_per_cycle']:.2f} |")
            base = next((r for r in res if "Q2_K" in r["name"]), None)
            gemv = next((r for r in res if "gemv" in r["name"] and "MPQ2" in r["name"]), None)
            if base and gemv:
                print(f"\nMPQ2 repacked gemv / Q2_K, compute only: {base['per64'] / gemv['per64']:.2f}x per token")
                if gbs:
                    share = gbs / cores / ghz
                    t = lambda r, b: max(r["per64"], b / share)   # cycles per 64 weights, all cores streaming
                    print(f"with all cores streaming ({share:.2f} B/cycle each): MPQ2 {t(gemv, 20):.2f} cycles per 64 weights "
                          f"({'memory' if 20 / share >= gemv['per64'] else 'compute'}-bound), Q2_K {t(base, 21):.2f} "
                          f"({'memory' if 21 / share >= base['per64'] else 'compute'}-bound): {t(base, 21) / t(gemv, 20):.2f}x")


if __name__ == "__main__":
    main()
