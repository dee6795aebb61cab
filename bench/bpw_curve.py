#!/usr/bin/env python3
"""convert_mpq.py --bpw against llama.cpp's files of 2 to 5 bpw, on SmolLM2-135M and PTB test:
file size, bits per weight, PPL and KLD against F16, and the --bpw files' predicted KL.

    python3 bench/bpw_curve.py                                   # the budgets below, every llama.cpp mix
    python3 bench/bpw_curve.py --budgets 3.0,4.0 --llama ""      # our files only
    python3 bench/bpw_curve.py --calib "--nsamples 16 --seqlen 256" --tag c16  # a shorter calibration
    MPQ2_BENCH_CHUNKS=40 python3 bench/bpw_curve.py              # PPL/KLD on the first 40 chunks only

Our files share one sensitivity measurement (--sensitivities), so each budget after the first
costs one conversion. llama.cpp's files: llama-quantize with the same PTB imatrix as
bench/quality_smollm2.py, default mixes. Results go to docs/bpw_curve_smollm2.json (merged by
name), the table to stdout, the plot (PPL against MB) to docs/bpw_curve_smollm2.png.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality_smollm2 as q  # noqa: E402
from benchlib import run  # noqa: E402

BUDGETS = "2.75,3.0,3.5,4.0,4.5"
LLAMA = "Q2_K,Q3_K_S,Q3_K_M,IQ2_XS,IQ3_XXS,IQ3_S,Q4_0,IQ4_NL,Q4_K_S,Q4_K_M"
RESULTS = HERE.parent / "docs" / "bpw_curve_smollm2.json"


def ours(name: str, f16: Path, train: Path, calib: list[str], extra: list[str], sens: Path) -> dict:
    out = q.WORK / f"smollm2-{name}.gguf"
    report = q.WORK / f"smollm2-{name}.report.json"
    rec = {"how": "convert", "command": "convert_mpq.py smollm2-f16.gguf --calib-file ptb.train.txt "
                                        + " ".join(calib + extra)}
    if not out.exists():
        t0 = time.time()
        run([sys.executable, q.CONVERT, f16, "-o", out, "--calib-file", train, "--quiet", "--threads", q.THREADS,
             "--report", report, "--sensitivities", sens, *calib, *extra])
        rec["convert_seconds"] = time.time() - t0
    if report.exists():
        rows = json.loads(report.read_text())["tensors"]
        pred = [float(r["predicted"]) for r in rows if r.get("predicted", "-") != "-"]
        if pred:
            rec["predicted_kl"] = sum(pred)
    return {**rec, "path": str(out)}


def theirs(typ: str, f16: Path, train: Path) -> dict:
    path, _ = q.llama_quantize(typ.lower(), typ, f16, q.imatrix(f16, train), pure=False)
    return {"how": "quantize", "path": str(path),
            "command": f"llama-quantize --imatrix imatrix-ptb.gguf smollm2-f16.gguf out.gguf {typ}"}


def measure(rec: dict, test: Path, base: Path, ctx2048: bool) -> dict:
    path = Path(rec.pop("path"))
    rec.update(q.file_bpw(path))
    m = q.perplexity(path, test, 512, base)
    rec["ppl_512"], rec["kld_512"] = m["ppl"], m.get("kld")
    if ctx2048:
        rec["ppl_2048"] = q.perplexity(path, test, 2048)["ppl"]
    if q.CHUNKS:
        rec["chunks"] = q.CHUNKS
    return rec


def table(results: dict) -> None:
    print("| file | MB | bpw (file) | types of the 2D tensors | PPL c512 | KLD | predicted KL | PPL c2048 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["size_mb"]):
        types = ", ".join(f"{n} {t}" for t, n in sorted(r["types_2d"].items(), key=lambda kv: -kv[1]))
        pred = f"{r['predicted_kl']:.3f}" if r.get("predicted_kl") is not None else "-"
        p2 = f"{r['ppl_2048']:.2f}" if r.get("ppl_2048") else "-"
        kld = f"{r['kld_512']:.4f}" if r.get("kld_512") is not None else "-"
        print(f"| {name} | {r['size_mb']:.1f} | {r['bpw_file']:.3f} | {types} | {r['ppl_512']:.2f} | {kld} | "
              f"{pred} | {p2} |")


def plot(results: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for how, mark, label in (("convert", "o-", "convert_mpq.py --bpw"), ("quantize", "s", "llama-quantize (imatrix)")):
        pts = sorted((r["size_mb"], r["ppl_512"], n) for n, r in results.items() if r["how"] == how)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], mark, label=label)
            for x, y, n in pts:
                ax.annotate(n.replace("bpw", ""), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("PPL, PTB test, -c 512")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default=BUDGETS, help=f"--bpw values (default {BUDGETS})")
    ap.add_argument("--llama", default=LLAMA, help=f"llama-quantize types (default {LLAMA})")
    ap.add_argument("--calib", default="", help="calibration options for convert_mpq.py (default: its defaults)")
    ap.add_argument("--tag", default="", help="suffix of our files' names (another calibration, seed ...)")
    ap.add_argument("--ctx2048", action="store_true", help="also PPL at -c 2048")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--plot", type=Path, default=RESULTS.with_suffix(".png"))
    args = ap.parse_args()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    train, test = q.ptb_files()
    f16 = q.f16_reference()
    base = q.kld_base(f16, test)
    calib = shlex.split(args.calib)
    tag = f"-{args.tag}" if args.tag else ""
    sens = q.WORK / f"smollm2-sensitivities{tag}.json"
    jobs = [(f"bpw{b}{tag}", lambda b=b: ours(f"bpw{b}{tag}", f16, train, calib, ["--bpw", b], sens))
            for b in filter(None, args.budgets.split(","))]
    jobs.append((f"default{tag}", lambda: ours(f"default{tag}", f16, train, calib, [], sens)))
    jobs += [(t.lower(), lambda t=t: theirs(t, f16, train)) for t in filter(None, args.llama.split(","))]
    for name, make in jobs:
        if name in results:
            continue
        results[name] = measure(make(), test, base, args.ctx2048)
        args.results.write_text(json.dumps(results, indent=1))
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    table(results)
    plot(results, args.plot)


if __name__ == "__main__":
    main()
