#!/usr/bin/env python3
"""Where an MPQ2 file loses its quality: swap one class of tensors back to a high-precision copy
and measure (SmolLM2-135M-Instruct, PTB test, c512, first 60 chunks, KLD against F16).

    python3 bench/sensitivity_smollm2.py --base smollm2-mpq2.gguf --out docs/sensitivity_smollm2.json

Each row is BASE with the tensors matching a regex taken from an all-TYPE copy of the model made
by `llama-quantize --pure` (no imatrix; --types, default Q8_0 and Q5_0). The PPL drop per extra
megabyte says where bits pay. Records are written as they come; a rerun skips measured rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("MPQ2_BENCH_CHUNKS", "60")
import quality_smollm2 as q  # noqa: E402
from splice_gguf import splice  # noqa: E402

CLASSES = ["token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=q.WORK / "smollm2-mpq2.gguf")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "sensitivity_smollm2.json")
    ap.add_argument("--types", default="Q8_0,Q5_0", help="donor types (llama-quantize --pure, no imatrix)")
    ap.add_argument("--classes", default=",".join(CLASSES), help="tensor-name regexes, comma-separated")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    _, test = q.ptb_files()
    f16 = q.f16_reference()
    base_kld = q.kld_base(f16, test)
    jobs = [("base", None, None)] + [(f"{c}={t.lower()}", c, t) for t in args.types.split(",") for c in args.classes.split(",")]
    for name, regex, typ in jobs:
        if name in results:
            continue
        path = args.base
        if regex:
            path = q.WORK / f"splice-{name.replace('=', '-')}.gguf"
            if not path.exists():
                donor, _ = q.llama_quantize(f"all-{typ.lower()}", typ, f16, None, pure=True)
                splice(args.base, donor, regex, path, force=False)
        rec = q.perplexity(path, test, 512, base_kld)
        rec.update(size_mb=path.stat().st_size / 1e6, chunks=q.CHUNKS, base=args.base.name)
        results[name] = rec
        args.out.write_text(json.dumps(results, indent=1))
        print(name, rec, file=sys.stderr, flush=True)
        if regex:
            path.unlink()     # 45-65 MB each; the record keeps what matters
    b = results["base"]
    print("| tensors at the donor type | file MB | PPL | KLD | PPL drop per extra MB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        extra = r["size_mb"] - b["size_mb"]
        per = f"{(b['ppl'] - r['ppl']) / extra:.2f}" if extra > 0 else "-"
        print(f"| {name} | {r['size_mb']:.1f} | {r['ppl']:.2f} | {r.get('kld', 0):.3f} | {per} |")


if __name__ == "__main__":
    main()
