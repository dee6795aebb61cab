"""convert_mpq.py: a Hugging Face model (or a GGUF) to an MPQ2 GGUF with Hessian salience,
int8-mean salient words and GPTQ-compensated 2-bit words (docs/CONVERTER.md)."""
from __future__ import annotations

import argparse
import copy
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

SUPPORTED = {
    "LlamaForCausalLM": "Llama, SmolLM, TinyLlama, ...",
    "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2, Qwen2.5",
    "Qwen3ForCausalLM": "Qwen3",
}
GGUF_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


class ConvertError(Exception):
    """A problem with the user's input, reported without a traceback."""


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
                                            "or a GGUF file (F32/F16/BF16/Q8_0/Q4_x), read through transformers")
    p.add_argument("-o", "--outfile", type=Path, required=True, help="output GGUF")
    p.add_argument("--force", action="store_true", help="overwrite --outfile if it exists")
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
    g.add_argument("--type", choices=["mpq2r", "mpq2"], default="mpq2r",
                   help="type of the quantized weights: mpq2r (default: MPQ2 blocks of weights turned by a fixed "
                        "64-point rotation that the kernels apply to the activations too; same size, lower error: "
                        "docs/BENCHMARKS.md) or mpq2 (the paper's layout as is)")
    g.add_argument("--output-type", default="auto",
                   help="output projection type: auto (default: --type, GPTQ on the final hidden states), mpq2r, mpq2, "
                        "q8_0, q5_0, q4_0, f16, bf16, f32; with tied embeddings it is also the token embedding's type")
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


@dataclass
class Row:
    name: str
    type: str
    k: str
    bpw: float
    rel_err: str


def _check_types(args) -> list[tuple[re.Pattern, str]]:
    from .gguf_out import TYPE_NAMES
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
    if args.tune_norms < 0:
        raise ConvertError(f"--tune-norms {args.tune_norms}: must be >= 0")
    return overrides


def _input_kind(path: Path) -> str:
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConvertError(f"{path} is not a Hugging Face model directory (no config.json)")
        if not list(path.glob("*.safetensors")):
            raise ConvertError(f"{path} has no *.safetensors weights (convert .bin checkpoints to safetensors first)")
        return "hf"
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConvertError(f"{path} is neither a model directory nor a GGUF file")
    return "gguf"


def _load(path: Path, kind: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    kw = {} if kind == "hf" else {"gguf_file": path.name}
    src = path if kind == "hf" else path.parent
    try:
        config = AutoConfig.from_pretrained(src, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise ConvertError(f"{path}: cannot read the model configuration: {e}") from e
    archs = getattr(config, "architectures", None) or []
    if kind == "hf" and not any(a in SUPPORTED for a in archs):
        raise ConvertError(f"{path}: architecture {', '.join(archs) or config.model_type} is not supported; "
                           f"supported: {', '.join(SUPPORTED)}")
    if kind == "gguf" and config.model_type not in GGUF_MODEL_TYPES:
        raise ConvertError(f"{path}: architecture {config.model_type} is not supported; supported: {', '.join(sorted(GGUF_MODEL_TYPES))}")
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: cannot load the model: {type(e).__name__}: {e}") from e
    model.eval()
    return model, tokenizer


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation for rope (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _row_order(template_values: np.ndarray, hf_weight: np.ndarray, n_head: int) -> np.ndarray | None:
    """The row permutation llama.cpp applied to this tensor, found by comparing with its export:
    None (as is) or an index array."""
    idx = _permute(np.arange(hf_weight.shape[0]), n_head)
    plain = np.abs(template_values - hf_weight).mean()
    permuted = np.abs(template_values - hf_weight[idx]).mean()
    return idx if permuted < plain else None


def convert(args: argparse.Namespace) -> list[Row]:
    import gguf
    import torch
    from tqdm import tqdm

    from . import calibration, capture, gguf_out, norms
    from .format import BITS_PER_WEIGHT, FTYPE, FTYPE_R
    from .gguf_out import OUR_TYPES
    from .gptq import MPQ2GPTQ, QuantConfig

    overrides = _check_types(args)
    kind = _input_kind(args.model)
    gguf_out.check_output_path(args.outfile, args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QuantConfig(salient_fraction=0.0 if args.all_2bit else args.salient_fraction, salience=args.salience,
                      method=args.method, block_size=args.block_size, percdamp=args.percdamp,
                      act_order=args.act_order, gate=not args.no_gate)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))

    with tempfile.TemporaryDirectory(prefix=".mpq2-", dir=args.outfile.parent) as work:
        say(f"convert_mpq: loading {args.model}")
        model, tokenizer = _load(args.model, kind)
        template_path = gguf_out.export_template(args.model, Path(work)) if kind == "hf" else args.model
        reader = gguf.GGUFReader(template_path)
        template = {t.name: t for t in reader.tensors}
        arch = gguf_out.arch_of(reader)
        arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
        n_blocks = model.config.num_hidden_layers
        names = gguf.get_tensor_name_map(arch_enum, n_blocks)
        n_head = model.config.num_attention_heads
        n_kv = getattr(model.config, "num_key_value_heads", None) or n_head
        attn_v_type = args.attn_v_type if args.attn_v_type != "auto" else ("q5_0" if n_kv < n_head else args.type)

        def gguf_name(hf_name: str) -> str:
            name = names.get_name(hf_name, try_suffixes=(".weight",))
            if name is None or name not in template:
                raise ConvertError(f"tensor {hf_name}: no matching tensor in llama.cpp's export ({name})")
            return name

        def type_for(name: str, cols: int, default: str) -> str:
            typ = default
            for pat, t in overrides:
                if pat.search(name):
                    typ = t
            if not gguf_out.fits(typ, cols):
                say(f"convert_mpq: {name}: rows of {cols} are not a multiple of the {typ} block; using {args.fallback_type}")
                typ = args.fallback_type if gguf_out.fits(args.fallback_type, cols) else "f16"
            return typ

        for hf_name, p in model.named_parameters():
            if not torch.isfinite(p).all():
                raise ConvertError(f"tensor {hf_name} of {args.model} holds NaN or Inf values; the checkpoint is damaged")

        seqs = calibration.calibration_batch(tokenizer, args.calib_file, args.nsamples, args.seqlen, args.seed)
        say(f"convert_mpq: calibration {seqs.shape[0]} x {seqs.shape[1]} tokens")
        replacements: dict[str, gguf_out.Replacement] = {}
        rows: list[Row] = []
        norm_ratios: list[float] = []
        params = dict(model.named_parameters())
        tied = "output.weight" not in template
        out_hf = "model.embed_tokens.weight" if tied else "lm_head.weight"
        out_name = "token_embd.weight" if tied else "output.weight"
        out_type = type_for(out_name, params[out_hf].shape[1], args.output_type)

        tune_out = args.tune_norms > 0 and args.tune_output_norm
        float_out: dict[str, torch.Tensor] = {}   # the float output projection, for the final norm's tuning

        def encode_output(final_hidden) -> None:
            """The output projection, a linear layer too: GPTQ on the final normed hidden states.
            With tied embeddings the same matrix is the token embedding; the model continues
            with the decoded weights."""
            out_w = params[out_hf].detach().float()
            if tune_out:    # keeps the float values alive (the parameter gets new data below): no copy
                float_out["weight"] = out_w
            if out_type in OUR_TYPES:
                g = MPQ2GPTQ(out_w)
                for hs in final_hidden:
                    g.add_batch(hs)
                res = g.fasterquant(out_w, replace(cfg, rotate=out_type == "mpq2r"))
                replacements[out_name] = gguf_out.Replacement(res.packed, OUR_TYPES[out_type][0])
                rows.append(Row(out_name, out_type, f"{res.n_salient}/{res.n_words}", BITS_PER_WEIGHT, f"{res.rel_output_error:.4f}"))
                decoded = res.weight
            else:
                data, qtype = gguf_out.encode(out_w.numpy(), out_type)
                replacements[out_name] = gguf_out.Replacement(data, qtype)
                rows.append(Row(out_name, out_type, "-", data.nbytes * 8 / out_w.numel(), "-"))
                decoded = torch.from_numpy(gguf_out.decode(data, qtype, out_w.shape))
            params[out_hf].data = decoded.reshape(out_w.shape).to(params[out_hf].dtype)

        inputs = capture.first_block_inputs(model, seqs)
        # the float model's own trajectory, kept only where the norm tuning aims at it
        finputs = inputs if args.tune_norms and args.norm_target == "model" else None
        embd_first = args.embd_first and tied
        if embd_first:
            with torch.no_grad():
                encode_output([model.model(row[None], use_cache=False).last_hidden_state for row in seqs])
            inputs = capture.first_block_inputs(model, seqs)
        bar = tqdm(list(capture.blocks(model)), desc="blocks", unit="block", disable=args.quiet, file=sys.stderr)
        for i, block in bar:
            linears = capture.linear_modules(block)
            plan = {}
            for lname, mod in linears.items():
                hf = f"model.layers.{i}.{lname}.weight"
                name = gguf_name(hf)
                default = attn_v_type if name.endswith("attn_v.weight") else args.type
                plan[lname] = (name, type_for(name, mod.weight.shape[1], default))
            gptqs = {ln: MPQ2GPTQ(linears[ln].weight) for ln, (_, t) in plan.items() if t in OUR_TYPES}
            capture.collect(block, inputs, {ln: g.add_batch for ln, g in gptqs.items()})
            # the float block's output: on the float model's trajectory (which advances with it), or
            # on these inputs; what the norm tuning aims at
            if finputs is not None:
                finputs = capture.run_block(block, finputs)
            targets = None
            if args.tune_norms and gptqs:
                targets = finputs if finputs is not None else capture.run_block(block, inputs)
            for lname, (name, typ) in plan.items():
                mod = linears[lname]
                w = mod.weight.detach().float()
                order = _row_order(gguf_out.tensor_values(template[name]), w.numpy(),
                                   n_kv if name.endswith("attn_k.weight") else n_head) \
                    if name.endswith(("attn_q.weight", "attn_k.weight")) else None
                if typ in OUR_TYPES:
                    res = gptqs[lname].fasterquant(w, replace(cfg, rotate=typ == "mpq2r"))
                    mod.weight.data = res.weight.to(mod.weight.dtype)
                    data = res.packed if order is None else res.packed[order]
                    replacements[name] = gguf_out.Replacement(data, OUR_TYPES[typ][0])
                    rows.append(Row(name, typ, f"{res.n_salient}/{res.n_words}", BITS_PER_WEIGHT, f"{res.rel_output_error:.4f}"))
                    del gptqs[lname]
                else:
                    values = w.numpy() if order is None else w.numpy()[order]
                    data, qtype = gguf_out.encode(values, typ)
                    replacements[name] = gguf_out.Replacement(data, qtype)
                    # the later blocks (and the norm tuning) see this layer as llama.cpp will
                    decoded = gguf_out.decode(data, qtype, values.shape)
                    decoded = decoded if order is None else decoded[np.argsort(order)]
                    mod.weight.data = torch.from_numpy(np.ascontiguousarray(decoded)).to(mod.weight.dtype)
                    rows.append(Row(name, typ, "-", data.nbytes * 8 / values.size, "-"))
            if targets is not None:
                norm_ratios.append(norms.tune(block, inputs, targets, args.tune_norms))
                for nname, gain in norms.block_norms(block).items():
                    replacements[gguf_name(f"model.layers.{i}.{nname}.weight")] = gguf_out.Replacement(
                        gain.detach().float().numpy().copy(), gguf.GGMLQuantizationType.F32)
            inputs = capture.run_block(block, inputs)
        bar.close()
        if norm_ratios:
            say(f"convert_mpq: norm gains tuned ({args.tune_norms} steps per block): block output error "
                f"x{np.mean(norm_ratios):.3f} on average")

        if not embd_first:
            with torch.no_grad():
                encode_output([model.model.norm(hs) for hs, _, _ in inputs])
        if tune_out:
            # toward the float model's logits (--norm-target model) or toward the float output
            # projection's on the quantized model's hidden states (block)
            say("convert_mpq: tuning the final norm's gain")
            target = norms.float_logits_of(copy.deepcopy(model.model.norm), float_out["weight"],
                                           finputs if finputs is not None else inputs)
            ratio = norms.tune_output(model.model.norm, params[out_hf].detach().float(), [hs for hs, _, _ in inputs],
                                      target, args.tune_norms)
            say(f"convert_mpq: final norm tuned: KL divergence to the target logits x{ratio:.3f}")
            replacements[gguf_name("model.norm.weight")] = gguf_out.Replacement(
                model.model.norm.weight.detach().float().numpy().copy(), gguf.GGMLQuantizationType.F32)
        if not tied:
            values = params["model.embed_tokens.weight"].detach().float().numpy()
            typ = type_for("token_embd.weight", values.shape[1], args.embd_type)
            data, qtype = gguf_out.encode(values, typ)
            replacements["token_embd.weight"] = gguf_out.Replacement(data, qtype)
            rows.append(Row("token_embd.weight", typ, "-", data.nbytes * 8 / values.size, "-"))

        say(f"convert_mpq: writing {args.outfile}")
        gguf_out.write_atomic(args.outfile, reader, replacements, int(FTYPE_R if args.type == "mpq2r" else FTYPE), args.force)
        del reader
    return rows


def print_summary(rows: list[Row], seconds: float, out: Path) -> None:
    w = max(len(r.name) for r in rows)
    print(f"{'tensor':<{w}}  {'type':<5}  {'K (int8 words)':>15}  {'bpw':>5}  {'rel. output err':>15}")
    for r in rows:
        print(f"{r.name:<{w}}  {r.type:<5}  {r.k:>15}  {r.bpw:5.2f}  {r.rel_err:>15}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {seconds:.0f} s, peak RSS {peak_mb:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.time()
    try:
        from .gguf_out import sigterm_as_interrupt
        with sigterm_as_interrupt():
            rows = convert(args)
    except ConvertError as e:
        print(f"convert_mpq: error: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, IsADirectoryError, ValueError, RuntimeError) as e:
        print(f"convert_mpq: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convert_mpq: interrupted; no output written", file=sys.stderr)
        return 130
    print_summary(rows, time.time() - t0, args.outfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
