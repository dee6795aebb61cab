"""convert_mpq.py: a Hugging Face model (or a GGUF) to an MPQ2 GGUF with Hessian salience,
int8-mean salient words and GPTQ-compensated 2-bit words (docs/CONVERTER.md)."""
from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from pathlib import Path

from .errors import ConvertError
from .pipeline import SUPPORTED, Result, convert

__all__ = ["ConvertError", "convert", "main", "parse_args"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="convert_mpq.py",
        description="Quantize the linear weights of a Llama-family model to MPQ2 (2.5 bits per weight: "
                    "aligned 32-bit words of 16 x 2-bit codes or 4 x int8 means, tagged by a bitmap) "
                    "with Hessian salience and GPTQ compensation, and write a GGUF for the patched llama.cpp.",
        epilog="Architectures: " + "; ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
               + ". Metadata, tokenizer and norms come from llama.cpp's convert_hf_to_gguf.py (or the input GGUF). "
                 "Both kinds of MPQ2 word cost 32 bits, so --salient-fraction trades precision, never size.")
    p.add_argument("model", type=Path, help="Hugging Face model directory (config.json, safetensors, tokenizer) "
                                            "or a GGUF file (F32/F16/BF16/Q8_0/Q4_x); read lazily, one block at a time")
    p.add_argument("-o", "--outfile", type=Path, required=True, help="output GGUF")
    p.add_argument("--force", action="store_true",
                   help="overwrite --outfile if it exists, and discard an interrupted run's state instead of resuming it")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was stopped (Ctrl-C, SIGTERM, a crash) from its last finished block; "
                        "the state is kept beside the output in OUTFILE.mpq2-resume/ and needs the same options")
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-file", type=Path, action="append",
                   help="calibration text file (repeatable; default: a short text shipped with the converter)")
    g.add_argument("--nsamples", type=int, default=64, help="calibration sequences (default 64; the paper: 128)")
    g.add_argument("--seqlen", type=int, default=512, help="tokens per sequence (default 512; the paper: 2048)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sequence sampling")
    g = p.add_argument_group("method")
    g.add_argument("--salient-fraction", type=float, default=0.0625,
                   help="share of each tensor's 16-weight words that may keep int8 means (default 0.0625)")
    g.add_argument("--no-gate", action="store_true",
                   help="keep the top words as int8 means even where 2-bit fits them better (the paper's rule)")
    g.add_argument("--salience", choices=["hessian", "magnitude"], default="hessian",
                   help="rank words by sum w^2/[H^-1]_jj^2 (default) or by sum w^2 (ablation)")
    g.add_argument("--method", choices=["gptq", "rtn"], default="gptq",
                   help="gptq: compensate rounding errors block-wise (default); rtn: round to nearest (ablation)")
    g.add_argument("--all-2bit", action="store_true", help="no int8 words at all (ablation: no mixed precision)")
    g.add_argument("--block-size", type=int, default=128, help="GPTQ lazy-update block, a multiple of 64 (default 128)")
    g.add_argument("--percdamp", type=float, default=0.01, help="Hessian dampening, share of mean(diag H) (default 0.01)")
    g.add_argument("--act-order", action="store_true", help="quantize columns by decreasing H_jj (same file format)")
    g.add_argument("--tune-norms", type=int, default=64, metavar="STEPS",
                   help="after each block is quantized, tune its RMSNorm gains (float in the file: no extra bits) "
                        "for STEPS Adam steps so the block's output comes back to the float block's (default 64; 0: off)")
    g.add_argument("--tune-tokens", type=int, default=256, metavar="N",
                   help="with --tune-norms, each step tunes on the first N tokens of its calibration sequence "
                        "(default 256; 0: the whole sequence; the held-out check always takes whole sequences). "
                        "On SmolLM2 256 of 512 tokens was within the calibration seed's noise (docs/CONVERTER.md)")
    g.add_argument("--norm-target", choices=["model", "block"], default="model",
                   help="what the tuned gains aim at: model (default): the float model's own hidden states, which "
                        "also corrects error carried in from earlier blocks; block: the float block's output on the "
                        "same inputs")
    g.add_argument("--tune-output-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="with --tune-norms, also tune the final norm's gain for STEPS steps so the logits of the "
                        "quantized output projection come close to the float model's (--norm-target model) or to "
                        "the float output projection's on the same hidden states (block); KL divergence (default: on)")
    g.add_argument("--embd-first", action=argparse.BooleanOptionalAction, default=True,
                   help="with tied embeddings, quantize the embedding/output first (GPTQ on the float model's final "
                        "hidden states), so the blocks are calibrated on its error as an input embedding (default: on)")
    g = p.add_argument_group("tensor types")
    g.add_argument("--bpw", type=float, default=None, metavar="BITS",
                   help="bit budget of the whole file (every tensor, embedding, output and norms included), e.g. 2.75: "
                        "each weight gets the type among --type, q4_0, q4_1, q5_0, q5_1 and q8_0 that minimises the "
                        "model's predicted loss, from sensitivities measured on the calibration text (docs/CONVERTER.md, "
                        "'Bit budget'); --tensor-type rules and explicit --output-type, --embd-type and --attn-v-type "
                        "stay as given. Default: no budget, the types below")
    g.add_argument("--sensitivity-tokens", type=int, default=2048, metavar="N",
                   help="with --bpw: calibration tokens the sensitivities are measured on (default 2048)")
    g.add_argument("--sensitivities", type=Path, default=None, metavar="FILE.json",
                   help="with --bpw: keep the measured sensitivities in FILE.json, and read them from there when it "
                        "exists (the same input and calibration): converting one model at several budgets then "
                        "measures once")
    g.add_argument("--type", choices=["mpq2r", "mpq2", "mpq2s"], default="mpq2r",
                   help="type of the quantized weights: mpq2r (default: MPQ2 blocks of weights turned by a fixed "
                        "64-point rotation that the kernels apply to the activations too; same size, lower error: "
                        "docs/BENCHMARKS.md), mpq2 (the paper's layout as is) or mpq2s (2.25 bpw: MPQ2R's words "
                        "with 8 grids per 128 weights and no int8 words; rows that are not a multiple of 128 get "
                        "mpq2r; docs/FORMAT.md). With --bpw, mpq2r and mpq2s both offer MPQ2S and MPQ2R")
    g.add_argument("--output-type", default="auto",
                   help="output projection type: auto (default: --type, GPTQ on the final hidden states), mpq2r, mpq2, mpq2s, "
                        "q8_0, q5_1, q5_0, q4_1, q4_0 (GPTQ on their grids too), f16, bf16, f32; with tied embeddings it is also the token embedding's type")
    g.add_argument("--embd-type", default="auto",
                   help="token embedding type when it is not tied to the output (default: --type, round to nearest)")
    g.add_argument("--attn-v-type", default="auto",
                   help="type of the attention value projections: auto (default) is q5_0 when the model uses "
                        "grouped-query attention (attn_v is then a small share of the weights and carries the "
                        "most loss per byte: docs/BENCHMARKS.md) and --type otherwise; or any type of --output-type")
    g.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=TYPE",
                   help="override the type of GGUF tensors whose name matches REGEX, e.g. 'attn_v=q8_0' (repeatable)")
    g.add_argument("--fallback-type", default="q8_0",
                   help="type for weights whose rows are not a multiple of 64 (default q8_0)")
    p.add_argument("--device", default="auto",
                   help="where the heavy work runs: auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                   help="write wall time, peak RSS and the time per block to FILE.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _check_types(args) -> list[tuple[re.Pattern, str]]:
    from .gguf_out import TYPE_NAMES
    args.explicit_types = sorted(o for o in ("embd_type", "output_type", "attn_v_type") if getattr(args, o) != "auto")
    for opt in ("embd_type", "output_type"):   # attn_v's auto depends on the model: convert()
        if getattr(args, opt) == "auto":
            setattr(args, opt, args.type)
    for opt in ("embd_type", "output_type", "fallback_type", "attn_v_type"):
        if getattr(args, opt) not in TYPE_NAMES and not (opt == "attn_v_type" and args.attn_v_type == "auto"):
            raise ConvertError(f"--{opt.replace('_', '-')} {getattr(args, opt)!r}: choose one of {', '.join(TYPE_NAMES)}")
    overrides = []
    for spec in args.tensor_type:
        if "=" not in spec:
            raise ConvertError(f"--tensor-type {spec!r}: expected REGEX=TYPE")
        pat, typ = spec.rsplit("=", 1)
        if typ.lower() not in TYPE_NAMES:
            raise ConvertError(f"--tensor-type {spec!r}: type must be one of {', '.join(TYPE_NAMES)}")
        overrides.append((re.compile(pat), typ.lower()))
    if args.block_size % 64 or args.block_size <= 0:
        raise ConvertError(f"--block-size {args.block_size}: must be a positive multiple of 64")
    if not 0.0 <= args.salient_fraction <= 1.0:
        raise ConvertError(f"--salient-fraction {args.salient_fraction}: must be between 0 and 1")
    if args.nsamples < 1 or args.seqlen < 2:
        raise ConvertError("--nsamples must be >= 1 and --seqlen >= 2")
    if args.bpw is not None and not 1.0 < args.bpw <= 16.0:
        raise ConvertError(f"--bpw {args.bpw}: give the budget in bits per weight, e.g. 2.75")
    if args.sensitivity_tokens < 1:
        raise ConvertError(f"--sensitivity-tokens {args.sensitivity_tokens}: must be >= 1")
    if args.tune_norms < 0:
        raise ConvertError(f"--tune-norms {args.tune_norms}: must be >= 0")
    if args.tune_tokens < 0:
        raise ConvertError(f"--tune-tokens {args.tune_tokens}: must be >= 0 (0: the whole sequence)")
    return overrides


# Options that do not change the output's bytes, left out of a run's fingerprint (resume.py).
NOT_FINGERPRINTED = {"resume", "force", "quiet", "threads", "report", "outfile", "sensitivities"}


def resolve_device(name: str):
    import torch
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConvertError(f"--device {name!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConvertError(f"--device {name}: this torch has no CUDA device (torch {torch.__version__}); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConvertError(f"--device {name}: MPS is not available here; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConvertError(f"--device {name}: choose auto, cpu, cuda or mps")
    return dev


def options(args: argparse.Namespace) -> argparse.Namespace:
    """The checked options, with what the stages need derived once: the per-tensor overrides,
    the GPTQ configuration, the device and the run's fingerprint."""
    import torch

    from .gptq import QuantConfig
    args.overrides = _check_types(args)
    args.model = Path(args.model)
    from . import gguf_out
    gguf_out.check_output_path(args.outfile, args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    args.cfg = QuantConfig(salient_fraction=0.0 if args.all_2bit else args.salient_fraction, salience=args.salience,
                           method=args.method, block_size=args.block_size, percdamp=args.percdamp,
                           act_order=args.act_order, gate=not args.no_gate)
    args.fingerprint = {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(args).items()
                        if k not in NOT_FINGERPRINTED | {"overrides", "cfg", "fingerprint"}}
    args.fingerprint["model"] = str(args.model.resolve())
    args.fingerprint["calib_file"] = [str(Path(f).resolve()) for f in args.calib_file or []]
    from .resume import input_identity
    args.input_identity = input_identity(args.model) if args.model.exists() else []
    return args


def print_summary(result: Result, seconds: float, out: Path) -> None:
    rows = result.rows
    w = max(len(r.name) for r in rows)
    budget = any(r.predicted != "-" for r in rows)
    extra = f"  {'predicted KL':>12}" if budget else ""
    print(f"{'tensor':<{w}}  {'type':<5}  {'K (int8 words)':>15}  {'bpw':>5}  {'rel. output err':>15}{extra}")
    for r in rows:
        extra = f"  {r.predicted:>12}" if budget else ""
        print(f"{r.name:<{w}}  {r.type:<5}  {r.k:>15}  {r.bpw:5.2f}  {r.rel_err:>15}{extra}")
    if budget:
        total = sum(float(r.predicted) for r in rows if r.predicted != "-")
        print(f"predicted KL from the float model, summed over the weights: {total:.4f} nats per token "
              f"(round-to-nearest errors; GPTQ and the norm tuning bring the real one lower)")
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items() if v >= 0.5)
    print(f"time by stage (inclusive: a block holds its Hessians, encodes and tuning): {stages}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {seconds:.0f} s, peak RSS {peak_rss_mb():.0f} MB")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(path: Path, result: Result, seconds: float, args) -> None:
    path.write_text(json.dumps({
        "wall_seconds": seconds, "peak_rss_mb": peak_rss_mb(), "device": str(args.device),
        "blocks": [{"index": i, "seconds": s} for i, s in enumerate(result.block_seconds)],
        "stage_seconds": result.stage_seconds,
        "notes": result.notes,
        "tensors": [vars(r) for r in result.rows]}, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    try:
        from .gguf_out import sigterm_as_interrupt
        with sigterm_as_interrupt():
            result = convert(options(args))
    except ConvertError as e:
        print(f"convert_mpq: error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, IsADirectoryError, ValueError, RuntimeError) as e:
        print(f"convert_mpq: error: {e}; {getattr(e, 'run_note', 'no output written')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"convert_mpq: interrupted; {getattr(e, 'run_note', 'no output written')}", file=sys.stderr)
        return 130
    print_summary(result, time.time() - t0, args.outfile)
    if args.report:
        write_report(args.report, result, time.time() - t0, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
