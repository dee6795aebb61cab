#!/usr/bin/env python3
"""convert_mpq.py at scale: wall time, peak RSS and time per block on random models of real shapes.

    python3 bench/convert_scale.py smollm2-135m:2 --nsamples 4 --seqlen 64      # smoke test
    python3 bench/convert_scale.py llama-3.1-8b:2 llama-3.1-8b:8 llama-3.1-8b  # growth with layers
    python3 bench/convert_scale.py qwen2.5-0.5b -- --tune-norms 0               # extra converter args after --
    python3 bench/convert_scale.py --table                                      # the recorded rows
    python3 bench/convert_scale.py --predict                                    # 8B from the rows

Each RUN is SHAPE or SHAPE:LAYERS (bench/random_models.py --list). The model is written by
bench/random_models.py into --models-dir if it is not there, then converted with

    /usr/bin/time -v -o TIME.txt python3 converter/convert_mpq.py DIR -o OUT.gguf --force
        [--nsamples N --seqlen L] [--report REPORT.json] [extra args]

(--report only when the converter's --help lists it). Recorded per run: wall time and peak RSS
(from /usr/bin/time -v: "Elapsed (wall clock) time", "Maximum resident set size"), user and
system CPU seconds, the output's size, and from the report the seconds of every block (their
median is "s/block") and the converter's own wall time and peak RSS. Rows are merged into
--results (default docs/convert_scale.json) by their key (shape, layers, calibration, threads,
extra args), so a repeated run replaces its row. The output GGUF is deleted after it is measured
unless --keep-output. --plot draws peak RSS against the model's bf16 weights.

--predict fits the rows (see predict()) and prints the 8B shape's time and peak RSS at the
default calibration (64 x 512) on 2 and 8 cores.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import random_models as rm  # noqa: E402

CONVERTER = ROOT / "converter" / "convert_mpq.py"
DEFAULT_RESULTS = ROOT / "docs" / "convert_scale.json"
DEFAULT_PLOT = ROOT / "docs" / "convert_scale.png"
DEFAULT_NSAMPLES, DEFAULT_SEQLEN, DEFAULT_TUNE_STEPS = 64, 512, 64   # convert_mpq.py's defaults
PREDICT_SHAPE = "llama-3.1-8b"


# ---------------------------------------------------------------------------------------------
# shapes -> sizes


def shape_stats(shape: str, layers: int | None) -> dict:
    """Sizes of the model and of one block, from the config random_models writes."""
    cfg = rm.model_config(shape, layers)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = rm.head_dim(cfg)
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    linears = [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)]      # (rows, cols) of one block
    params = sum(rm.numel(s) for _, s in rm.model_tensors(cfg))
    return {"layers": cfg["num_hidden_layers"], "hidden": h, "ffn": f, "vocab": v, "q_dim": q, "kv_dim": kv,
            "tied": cfg["tie_word_embeddings"], "parameters": params, "weights_gb": 2 * params / 1e9,
            "block_parameters": sum(r * c for r, c in linears),
            "block_gptq_updates": sum(r * c * c for r, c in linears),   # GPTQ's lazy updates: rows x cols^2
            "block_hessian_entries": 2 * h * h + q * q + f * f}          # q/k/v and gate/up share one each


def model_dir(models_dir: Path, shape: str, layers: int | None) -> Path:
    return models_dir / (shape if layers is None else f"{shape}-{layers}l")


def parse_run(text: str) -> tuple[str, int | None]:
    name, _, layers = text.partition(":")
    if name not in rm.SHAPES:
        raise SystemExit(f"convert_scale: unknown shape {name!r}; choose one of {', '.join(rm.SHAPES)}")
    if layers and not layers.isdigit():
        raise SystemExit(f"convert_scale: {text!r}: LAYERS must be a number (SHAPE:LAYERS)")
    return name, int(layers) if layers else None


def option_value(extra: list[str], name: str, default):
    """The value of option NAME in the extra converter args (--name V or --name=V), else DEFAULT."""
    for i, a in enumerate(extra):
        if a == name and i + 1 < len(extra):
            return type(default)(extra[i + 1])
        if a.startswith(name + "="):
            return type(default)(a.split("=", 1)[1])
    return default


# ---------------------------------------------------------------------------------------------
# running


def converter_has_report() -> bool:
    out = subprocess.run([sys.executable, str(CONVERTER), "--help"], capture_output=True, text=True)
    return "--report" in out.stdout


def parse_time_v(text: str) -> dict:
    """The numbers of GNU time -v that matter here."""
    def grab(label):
        m = re.search(re.escape(label) + r"[^:]*:\s*(\S+)\s*$", text, re.M)
        return m[1] if m else None
    wall = grab("Elapsed (wall clock) time")
    secs = None
    if wall:
        parts = [float(p) for p in wall.split(":")]
        secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = grab("Maximum resident set size")
    cpu = grab("Percent of CPU this job got")
    return {"wall_seconds": secs, "peak_rss_mb": int(rss) / 1024 if rss else None,
            "user_seconds": float(grab("User time (seconds)") or "nan"),
            "system_seconds": float(grab("System time (seconds)") or "nan"),
            "cpu_percent": int(cpu.rstrip("%")) if cpu and cpu.rstrip("%").isdigit() else None,
            "exit_status": int(grab("Exit status") or -1)}


def git_commit() -> str | None:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def row_key(shape: str, layers: int, nsamples: int, seqlen: int, threads: int, extra: list[str]) -> str:
    return f"{shape}:{layers}l:{nsamples}x{seqlen}:t{threads}" + (":" + " ".join(extra) if extra else "")


def run_one(shape: str, layers: int | None, args, extra: list[str], has_report: bool) -> dict:
    stats = shape_stats(shape, layers)
    d = model_dir(args.models_dir, shape, layers)
    if not (d / "config.json").is_file():
        print(f"convert_scale: writing {d}", flush=True)
        rm.write_model(shape, d, layers, seed=0, quiet=True)
    nsamples = args.nsamples or DEFAULT_NSAMPLES
    seqlen = args.seqlen or DEFAULT_SEQLEN
    threads = option_value(extra, "--threads", os.cpu_count() or 1)
    key = row_key(shape, stats["layers"], nsamples, seqlen, threads, extra)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{stem}.gguf"
    timef, report, log = (args.out_dir / f"{stem}.{s}" for s in ("time.txt", "report.json", "log"))
    report.unlink(missing_ok=True)
    cmd = ["/usr/bin/time", "-v", "-o", str(timef), sys.executable, str(CONVERTER), str(d), "-o", str(out), "--force"]
    if args.nsamples:
        cmd += ["--nsamples", str(args.nsamples)]
    if args.seqlen:
        cmd += ["--seqlen", str(args.seqlen)]
    if has_report:
        cmd += ["--report", str(report)]
    cmd += ["--quiet"] + extra
    print(f"convert_scale: {key}\n  {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return {}
    t0 = time.time()
    with open(log, "w") as lf:
        rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    tv = parse_time_v(timef.read_text()) if timef.exists() else {}
    row = {"key": key, "shape": shape, "nsamples": nsamples, "seqlen": seqlen, "threads": threads,
           "extra_args": extra, **stats, "exit_status": rc,
           "wall_seconds": tv.get("wall_seconds") or wall, "peak_rss_mb": tv.get("peak_rss_mb"),
           "user_seconds": tv.get("user_seconds"), "system_seconds": tv.get("system_seconds"),
           "cpu_percent": tv.get("cpu_percent"),
           "output_mb": out.stat().st_size / 1e6 if out.exists() and rc == 0 else None,
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
           "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg()[0]},
           "log": str(log)}
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        row["error"] = "\n".join(tail)
        print(f"convert_scale: {key} failed (exit {rc}):\n  " + "\n  ".join(tail), flush=True)
    if report.exists():
        rep = json.loads(report.read_text())
        secs = [b["seconds"] for b in rep.get("blocks", [])]
        row.update(report_wall_seconds=rep.get("wall_seconds"), report_peak_rss_mb=rep.get("peak_rss_mb"),
                   block_seconds=secs, seconds_per_block=statistics.median(secs) if secs else None,
                   device=rep.get("device"), stage_seconds=rep.get("stage_seconds"))
        if secs:
            row["other_seconds"] = row["wall_seconds"] - sum(secs)    # load, calibration, output stage, writing
    if out.exists() and not args.keep_output:
        out.unlink()
    return row


# ---------------------------------------------------------------------------------------------
# results


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def save_rows(path: Path, new: list[dict]) -> list[dict]:
    """Merge NEW into the file by key (a new row replaces the old one of its key)."""
    rows = {r["key"]: r for r in load_rows(path)}
    rows.update({r["key"]: r for r in new})
    out = sorted(rows.values(), key=lambda r: (r["parameters"], r["key"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"about": "bench/convert_scale.py: convert_mpq.py on random models of real shapes",
                                "rows": out}, indent=1) + "\n")
    return out


def fmt(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = ["| shape | layers | weights (bf16) | calibration | threads | extra args | wall s | s/block (median) "
             "| peak RSS MB | output MB | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = fmt(r.get("wall_seconds")) if r.get("exit_status") == 0 else f"failed ({r.get('exit_status')})"
        lines.append(f"| {r['shape']} | {r['layers']} | {r['weights_gb']:.2f} GB | {r['nsamples']} x {r['seqlen']} "
                     f"| {r['threads']} | {' '.join(r.get('extra_args') or []) or '-'} | {wall} "
                     f"| {fmt(r.get('seconds_per_block'), '.1f')} | {fmt(r.get('peak_rss_mb'))} "
                     f"| {fmt(r.get('output_mb'), '.1f')} | {r.get('commit') or '-'} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("convert_scale: no plot: pip install matplotlib", file=sys.stderr)
        return
    ok = [r for r in rows if r.get("exit_status") == 0 and r.get("peak_rss_mb")]
    if not ok:
        print("convert_scale: no successful rows to plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for calib in sorted({(r["nsamples"], r["seqlen"]) for r in ok}):
        pts = sorted((r["weights_gb"], r["peak_rss_mb"] * 2**20 / 1e9, r) for r in ok if (r["nsamples"], r["seqlen"]) == calib)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"calibration {calib[0]} x {calib[1]}")
        for x, y, r in pts:
            ax.annotate(f"{r['shape']} {r['layers']}L", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    lo, hi = min(r["weights_gb"] for r in ok) / 1.5, max(r["weights_gb"] for r in ok) * 1.5
    ax.plot([lo, hi], [lo, hi], ":", color="grey", label="peak RSS = the bf16 weights (whole model in memory)")
    if hi / lo > 10:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("model weights, GB (bf16 on disk)")
    ax.set_ylabel("peak RSS, GB (/usr/bin/time -v)")
    ax.set_title("convert_mpq.py peak memory (random weights, real shapes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"convert_scale: plot {path}")


# ---------------------------------------------------------------------------------------------
# prediction


def nnls(X: list[list[float]], y: list[float]) -> list[float]:
    """Least squares with non-negative coefficients (active set: drop the most negative, refit)."""
    import numpy as np
    X, y = np.asarray(X, float), np.asarray(y, float)
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1
    active = list(range(X.shape[1]))
    coef = np.zeros(X.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(X[:, active] / scale[active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol / scale[active]
            break
        active.pop(int(np.argmin(sol)))
    return coef.tolist()


def time_features(r: dict) -> list[float]:
    """Work proxies of one block, in multiply-adds: the calibration passes (about three forward passes
    of the block per token: float model, quantized model, capture), the Hessians (tokens x input
    dim^2), GPTQ's updates (rows x cols^2), the norm tuning (STEPS sequences forward and backward)."""
    extra = r.get("extra_args") or []
    tokens = r["nsamples"] * r["seqlen"]
    steps = option_value(extra, "--tune-norms", DEFAULT_TUNE_STEPS) if r["nsamples"] > 1 else 0
    return [3 * tokens * r["block_parameters"] + tokens * r["block_hessian_entries"],
            r["block_gptq_updates"],
            3 * steps * r["seqlen"] * r["block_parameters"]]


def other_features(r: dict) -> list[float]:
    """The time outside the blocks: a constant (start-up, llama.cpp's vocabulary export), the output
    projection (tokens x vocab x hidden for its logits and Hessian, vocab x hidden^2 for GPTQ)."""
    tokens = r["nsamples"] * r["seqlen"]
    vh = r["vocab"] * r["hidden"]
    return [1.0, tokens * vh + vh * r["hidden"]]


def memory_stages(r: dict) -> float:
    """Bytes of the larger of the two stages: a block (float32 weights, float64 Hessians, three copies
    of the calibration activations) or the output stage (the output matrix in float32 twice, plus
    the activations)."""
    act = r["nsamples"] * r["seqlen"] * r["hidden"] * 4
    block = 4 * r["block_parameters"] + 8 * r["block_hessian_entries"] + 3 * act
    output = 2 * 4 * r["vocab"] * r["hidden"] + act
    return max(block, output)


def fit(rows, feats, target, label):
    """NNLS of TARGET on FEATS; when the rows cannot tell the terms apart (too few rows, or rank-deficient),
    one coefficient on the sum of the terms (all are multiply-add counts, so the sum is a work estimate)."""
    import numpy as np
    X = np.asarray([feats(r) for r in rows], float)
    y = np.asarray([target(r) for r in rows], float)
    scaled = X / np.where(np.abs(X).max(axis=0) > 0, np.abs(X).max(axis=0), 1)
    rank = int(np.linalg.matrix_rank(scaled, tol=1e-6))
    if rank == X.shape[1] and len(rows) > X.shape[1]:
        return nnls(X, y), f"{label}: NNLS over {len(rows)} rows, {X.shape[1]} terms"
    work = X.sum(axis=1)
    c = float(y.sum() / work.sum()) if work.sum() > 0 else 0.0
    return [c] * X.shape[1], (f"{label}: {len(rows)} row(s), rank {rank} < {X.shape[1]} terms or too few rows: "
                              f"one coefficient on the summed terms ({c:.3g} core-s per multiply-add; any fixed cost is "
                              f"counted as work, so an upper bound)")


def predict(rows: list[dict], source: Path = DEFAULT_RESULTS) -> str:
    ok = [r for r in rows if r.get("exit_status") == 0 and r.get("seconds_per_block")]
    if not ok:
        return "convert_scale: no successful rows with per-block times (the converter's --report) to fit"
    out = []
    # Time is fitted in core-seconds (seconds x threads): compute is assumed to scale with 1/cores.
    tcoef, tnote = fit(ok, time_features, lambda r: r["seconds_per_block"] * r["threads"], "time per block")
    ocoef, onote = fit(ok, other_features, lambda r: max(0.0, r["other_seconds"]) * r["threads"], "time outside blocks")
    import numpy as np
    mem_rows = [r for r in ok if r.get("peak_rss_mb")]
    xs = np.array([memory_stages(r) / 2**20 for r in mem_rows])
    ys = np.array([r["peak_rss_mb"] for r in mem_rows])
    if len(set(xs.round(3))) >= 2:
        slope, icpt = np.polyfit(xs, ys, 1)
        mnote = f"peak RSS: linear fit over {len(mem_rows)} rows: {icpt:.0f} MB + {slope:.2f} x stage bytes"
    else:
        slope, icpt = 1.0, float(np.median(ys - xs))
        mnote = f"peak RSS: one distinct size measured: {icpt:.0f} MB runtime + 1.00 x stage bytes (assumed slope)"
    out.append(f"Fits (from the rows of {source}):")
    for note in (tnote, onote, mnote):
        out.append(f"  {note}")
    measured_shapes = sorted({f"{r['shape']}:{r['layers']}l {r['nsamples']}x{r['seqlen']}" for r in ok})
    out.append(f"  rows used: {', '.join(measured_shapes)}")
    target = {**shape_stats(PREDICT_SHAPE, None), "shape": PREDICT_SHAPE, "nsamples": DEFAULT_NSAMPLES,
              "seqlen": DEFAULT_SEQLEN, "extra_args": []}
    biggest = max(r["block_parameters"] for r in ok)
    core_s_block = float(np.dot(tcoef, time_features(target)))
    core_s_other = float(np.dot(ocoef, other_features(target)))
    rss = icpt + slope * memory_stages(target) / 2**20
    out.append("")
    out.append(f"Prediction for {PREDICT_SHAPE} ({target['layers']} blocks, {target['weights_gb']:.1f} GB bf16), "
               f"calibration {DEFAULT_NSAMPLES} x {DEFAULT_SEQLEN}, the converter's defaults otherwise:")
    for cores in (2, 8):
        blk = core_s_block / cores
        total = target["layers"] * blk + core_s_other / cores
        out.append(f"  {cores} cores: {blk:8.0f} s per block, {total / 3600:6.1f} h in all "
                   f"({target['layers']} x block + {core_s_other / cores:.0f} s outside the blocks)")
    out.append(f"  peak RSS: {rss / 1024:.1f} GiB (any core count)")
    out.append("")
    out.append("Assumptions: compute time scales with 1/cores (measured core-seconds = seconds x threads, "
               "divided by the target's cores; no memory-bandwidth or threading limit); the rows were measured on a "
               "machine shared with other jobs, so times are upper bounds; the per-block work is modelled by "
               "tokens x weights, tokens x Hessian size, GPTQ's rows x cols^2 and the norm tuning (time_features()), "
               "memory by the larger of one block's and the output stage's buffers (memory_stages()).")
    ratio = target["block_parameters"] / biggest
    if ratio > 4:
        out.append(f"Warning: an 8B block has {ratio:.0f}x the weights of the largest measured block: "
                   "measure a cut of the 8B shape (llama-3.1-8b:2) before trusting these numbers.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(
        description="Measure convert_mpq.py (wall time, peak RSS, time per block, output size) on random-weight "
                    "models of real shapes, record the rows, tabulate, plot and predict.",
        epilog="Arguments after -- go to convert_mpq.py unchanged (e.g. -- --tune-norms 0 --threads 2). "
               "Shapes: " + ", ".join(rm.SHAPES) + ".",
        usage="%(prog)s [RUN ...] [options] [-- CONVERTER ARGS]")
    p.add_argument("runs", nargs="*", metavar="RUN", help="SHAPE or SHAPE:LAYERS, e.g. smollm2-135m:2, llama-3.1-8b")
    p.add_argument("--nsamples", type=int, default=None, help="calibration sequences (default: the converter's, 64)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per sequence (default: the converter's, 512)")
    p.add_argument("--models-dir", type=Path, default=Path("/tmp/mpq2-random-models"),
                   help="where the random models are (written if missing; default /tmp/mpq2-random-models)")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/mpq2-convert-scale"),
                   help="outputs, logs, time -v and --report files (default /tmp/mpq2-convert-scale)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON of the rows (default docs/convert_scale.json)")
    p.add_argument("--plot", nargs="?", type=Path, const=DEFAULT_PLOT, default=None,
                   help="draw peak RSS against model size to this PNG (default docs/convert_scale.png)")
    p.add_argument("--table", action="store_true", help="print all recorded rows as a markdown table")
    p.add_argument("--predict", action="store_true",
                   help=f"fit the rows and predict {PREDICT_SHAPE} at 64 x 512 on 2 and 8 cores")
    p.add_argument("--keep-output", action="store_true", help="keep the converted GGUFs (default: delete after measuring)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    if not (args.runs or args.table or args.predict or args.plot):
        p.error("give at least one RUN, or --table, --plot or --predict")
    runs = [parse_run(r) for r in args.runs]
    new = []
    if runs:
        has_report = converter_has_report()
        if not has_report:
            print("convert_scale: convert_mpq.py has no --report: recording wall time and peak RSS only", flush=True)
        for shape, layers in runs:
            row = run_one(shape, layers, args, extra, has_report)
            if row:
                new.append(row)
    rows = save_rows(args.results, new) if new else load_rows(args.results)
    if new:
        print(f"convert_scale: {len(new)} row(s) recorded in {args.results}")
    if new or args.table:
        shown = rows if args.table else [r for r in rows if r["key"] in {n["key"] for n in new}]
        print(table(shown))
    if args.plot:
        plot(rows, args.plot)
    if args.predict:
        print(predict(rows, args.results))
    return 1 if any(r.get("exit_status") for r in new) else 0


if __name__ == "__main__":
    sys.exit(main())
