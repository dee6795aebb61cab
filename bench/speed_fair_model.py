#!/usr/bin/env python3
"""Speed race on a fair model: a random-weight Llama whose every matrix row is a multiple of
256 (hidden 2048, FFN 5632), so llama.cpp's 2-bit types are really themselves (the script fails
if llama-quantize reports any fallback). Speed does not depend on the weight values.

    python3 bench/speed_fair_model.py [--layers 12] [--threads 1,2] [--reps 3] [--types MPQ2,Q2_K,...]
                                      [--output-type q4_0] [--repack 1] [--prepare-only]

Writes the F16 model (tokenizer metadata copied from SmolLM2's GGUF), an imatrix, one --pure file
per type, then runs one llama-bench over all files (-p 512 -n 128), side by side in one run, and
the machine's streaming read bandwidth (bench/stream_bw.c) at each thread count. Prints a Markdown
table: prompt and generation tokens/s (best and median of the repeats) and, for generation, the
weight bytes read per second (every matrix but the token embedding, once per token) as a share of
the streaming bandwidth.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import demo  # noqa: E402
from benchlib import run  # noqa: E402

from llama_mpq2._libs import bin_path  # noqa: E402
from mpq2.gguf_out import copy_fields  # noqa: E402

WORK = Path.home() / ".cache" / "mpq2" / "speed"
TYPES = ["MPQ2", "Q2_K", "IQ2_XXS", "IQ2_XS", "Q2_0", "Q4_0"]


def write_f16_model(out: Path, layers: int, hidden: int = 2048, ffn: int = 5632, heads: int = 16, kv_heads: int = 4) -> None:
    import gguf
    src = gguf.GGUFReader(demo.smollm2_gguf())
    w = gguf.GGUFWriter(out, "llama")
    w.add_name("fair-random-llama")
    w.add_context_length(2048)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # the real tokenizer, so llama-bench has a vocabulary
    copy_fields(src, w, lambda name: name.startswith("tokenizer."))
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", mat(vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", mat(vocab, hidden))
    kv = hidden // heads * kv_heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(kv, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(kv, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--output-type", default="q4_0",
                    help="type of the output and token embedding in every file (default q4_0: the IQ2 types need an "
                         "imatrix there, which llama-imatrix does not record; a small type keeps the race on the block matrices)")
    ap.add_argument("--repack", default="1",
                    help="llama-bench --repack values: 1 (llama.cpp's default: repacked weights where a type has "
                         "a CPU_REPACK kernel, as MPQ2, Q2_K and Q4_0 have here), 0 (row-wise vec_dot), or 0,1")
    ap.add_argument("--prepare-only", action="store_true", help="write the model files, do not run the benchmark "
                    "(quantizing can share the machine, the race cannot)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    f16 = WORK / f"fair-{args.layers}L-f16.gguf"
    if not f16.exists():
        write_f16_model(f16, args.layers)
    imat = WORK / f"fair-{args.layers}L-imatrix.gguf"
    if not imat.exists():
        text = WORK / "imatrix.txt"
        text.write_text(" ".join(demo.__doc__.split()) * 200)
        run([bin_path("llama-imatrix"), "-m", f16, "-f", text, "-c", "256", "--chunks", "2", "-o", imat, "--no-ppl"])
    files = []
    for typ in args.types.split(","):
        out = WORK / f"fair-{args.layers}L-{args.output_type}-{typ.lower()}.gguf"
        if not out.exists():
            # the output and token embedding are one type for every file (--output-type): the
            # race is on the 2048-wide block matrices
            part = out.with_suffix(".part")
            proc = run([bin_path("llama-quantize"), "--pure", "--output-tensor-type", args.output_type,
                        "--token-embedding-type", args.output_type, "--imatrix", imat, f16, part, typ])
            part.replace(out)
            if "falling back" in proc.stdout + proc.stderr:   # llama.cpp logs it on stderr
                out.unlink()
                raise SystemExit(f"llama-quantize fell back to another type for {typ}: the race would not be fair")
        files.append(out)
    if args.prepare_only:
        return
    stream = {t: stream_bandwidth(int(t)) for t in args.threads.split(",")}
    cmd = [bin_path("llama-bench"), "-p", "512", "-n", "128", "-t", args.threads, "-r", args.reps,
           "--repack", args.repack, "-o", "json"]
    for f in files:
        cmd += ["-m", f]
    print_table(json.loads(run(cmd).stdout), {str(f): weight_bytes_per_token(f) for f in files}, stream)


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of every weight matrix generation reads per token: all but the token embedding (one
    row of it), which is read whole after all when the output layer shares it (tied, no output.weight)."""
    import gguf
    tensors = gguf.GGUFReader(path).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    return sum(int(t.n_bytes) for t in tensors
               if len(t.shape) >= 2 and (t.name != "token_embd.weight" or tied))


def stream_bandwidth(threads: int) -> float:
    """Median streaming read GB/s with this many threads (bench/stream_bw.c, 512 MiB, 9 repeats)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "stream_bw"
        subprocess.run(["cc", "-O3", "-march=native", "-pthread", str(HERE / "stream_bw.c"), "-o", str(exe)], check=True)
        out = run([exe, threads, 512, 9]).stdout
    return float(re.search(r"median ([\d.]+) GB/s", out).group(1))


def print_table(records: list[dict], wbytes: dict[str, int], stream: dict[str, float],
                names: dict[str, str] | None = None) -> None:
    """names: model file -> label (default: the type at the end of the file name)."""
    print("| type | repack | threads | test | t/s best | t/s median | weights GB/s (median) | share of stream read |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        samples = r.get("samples_ts") or [r["avg_ts"]]
        best, med = max(samples), statistics.median(samples)
        name = (names or {}).get(r["model_filename"]) or Path(r["model_filename"]).stem.split("-")[-1].upper()
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        bw = share = "-"
        if not r["n_prompt"]:
            gbs = wbytes[r["model_filename"]] * med / 1e9
            bw, share = f"{gbs:.2f}", f"{gbs / stream[str(r['n_threads'])]:.0%}"
        print(f"| {name} | {int(r.get('repack', 1))} | {r['n_threads']} | {test} | {best:.2f} | {med:.2f} | {bw} | {share} |")
    print()
    print("streaming read (bench/stream_bw.c, median GB/s): " + ", ".join(f"{t} threads {g:.1f}" for t, g in stream.items()))


if __name__ == "__main__":
    main()
