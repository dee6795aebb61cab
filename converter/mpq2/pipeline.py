"""The conversion, stage by stage (docs/CONVERTER.md, "What it does"):

    open the model   lazily: a skeleton on the meta device, weights read one block at a time
    plan             every output tensor's name, type and shape, before any work
    [bit budget]     with --bpw: sensitivities measured, the types allocated (budget.py)
    open the output  the GGUF header written first (or a stopped run's output reopened)
    calibrate        token sequences -> what the first block receives
    [tied embedding] with --embd-first: a float pass (its block outputs kept for the blocks), then GPTQ of the tied matrix
    each block       Hessians, GPTQ per linear layer, norm tuning, written, checkpointed
    the output       GPTQ of the output projection, the final norm's tuning, the embedding
    finish           the output renamed into place, the run's state removed

`convert()` below is that list; each stage is a function of its own.
"""
from __future__ import annotations

import copy
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import budget, calibration, capture, gguf_out, norms, qtypes, resume, skeleton, timing
from .errors import ConvertError
from .format import FTYPE, FTYPE_R, FTYPE_S
from .gguf_out import OUR_TYPES
from .gguf_stream import GGUFStream
from .gptq import MPQ2GPTQ, config_for
from .plan import Plan, Weight, make_plan, qtype_of, retype
from .source import GGUFSource, SafetensorsSource, Source
from .timing import clock

SUPPORTED = {
    "LlamaForCausalLM": "Llama, SmolLM, TinyLlama, ...",
    "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2, Qwen2.5",
    "Qwen3ForCausalLM": "Qwen3",
}
GGUF_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
ROW_CHUNK = 8192          # rows of a tall matrix (embedding, output) handled at a time
GPTQ_TYPES = {*OUR_TYPES, *qtypes.GRIDS}   # encoded with GPTQ on their layer's Hessian


def uses_gptq(w: "Weight") -> bool:
    """GPTQ works on 64-column blocks: a llama.cpp type on rows of other widths (a fallback)
    is rounded to nearest."""
    return w.type in GPTQ_TYPES and w.shape[1] % 64 == 0


@dataclass
class Row:
    """One line of the end-of-run table."""
    name: str
    type: str
    k: str
    bpw: float
    rel_err: str
    predicted: str = "-"            # --bpw: the predicted cost at this type (nats/token)


@dataclass
class ModelInput:
    path: Path
    source: Source
    config: object
    tokenizer: object
    layout: object


@dataclass
class Progress:
    """What flows from stage to stage, and what a checkpoint keeps."""
    seqs: torch.Tensor                  # calibration token ids (n, L)
    inputs: list                        # the quantized model's activations entering the next block
    finputs: list | None                # the float model's own, where the norm tuning aims at them
    next_block: int = 0
    embd_done: bool = False
    rows: list[Row] = field(default_factory=list)
    norm_ratios: list[float] = field(default_factory=list)     # held-out error after / before, per block
    norm_kept: list[bool] = field(default_factory=list)        # whether the tuned gains were kept
    block_seconds: list[float] = field(default_factory=list)

    def stage(self) -> dict:
        return {"next_block": self.next_block, "embd_done": self.embd_done, "rows": [asdict(r) for r in self.rows],
                "norm_ratios": self.norm_ratios, "norm_kept": self.norm_kept, "block_seconds": self.block_seconds,
                "done": f"{self.next_block} blocks"}

    def tensors(self) -> dict:
        return {"seqs": self.seqs, "inputs": self.inputs, "finputs": self.finputs}


@dataclass
class Result:
    rows: list[Row]
    block_seconds: list[float]
    notes: list[str]
    stage_seconds: dict[str, float]     # this run's, inclusive (timing.py); a resumed run's from its resume


def say(opts, *msg) -> None:
    if not opts.quiet:
        print("convert_mpq:", *msg, file=sys.stderr)


# ---------------------------------------------------------------- the top level

def convert(opts) -> Result:
    timing.reset()
    inp = open_model(opts.model)
    skel = skeleton.build(inp.config)
    plan = make_plan(inp, skel, opts)
    for note in plan.notes:   # the fallbacks: even with --quiet, they change the file's types
        print("convert_mpq:", note, file=sys.stderr)
    run = resume.RunState(opts.outfile, opts.fingerprint, opts.input_identity)
    saved = run.open(opts.resume, opts.force)
    try:
        if opts.bpw:
            allocate_types(run, saved, inp, skel, plan, opts)
        out = open_output(run, inp, plan, opts, saved)
        prog = restore(run, saved, opts) if saved else calibrate(inp, skel, opts)
        skeleton.place_rotary(skel, opts.device)
        if plan.embd_first and not prog.embd_done:
            encode_tied_embedding(inp, skel, plan, opts, prog, out, run)
            run.checkpoint(out, prog.stage(), prog.tensors())
        for i in blocks_bar(opts, prog.next_block, plan.n_blocks):
            quantize_block(i, inp, skel, plan, opts, prog, out, run)
            run.checkpoint(out, prog.stage(), prog.tensors())
        encode_output(inp, skel, plan, opts, prog, out, run)
        report_norms(opts, prog)
        out.close()
        run.finish(gguf_out.output_mode(opts.outfile))
    except ConvertError:
        run.discard()
        raise
    except BaseException as e:
        e.run_note = run.stopped()
        raise
    finally:
        if "out" in locals():
            out.close()
    return Result(prog.rows, prog.block_seconds, plan.notes, dict(timing.SECONDS))


# ---------------------------------------------------------------- stages

@clock("open the model")
def open_model(path: Path) -> ModelInput:
    """Config, tokenizer and lazy weights; nothing of the weights is read yet."""
    from transformers import AutoConfig, AutoTokenizer
    from .layout import GGUFLayout, HFLayout
    kind = _input_kind(path)
    source = SafetensorsSource(path) if kind == "hf" else GGUFSource(path)
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
        raise ConvertError(f"{path}: architecture {config.model_type} is not supported; "
                           f"supported: {', '.join(sorted(GGUF_MODEL_TYPES))}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
    except Exception as e:  # noqa: BLE001
        raise ConvertError(f"{path}: cannot load the tokenizer: {type(e).__name__}: {e}") from e
    layout = HFLayout(path, next(a for a in archs if a in SUPPORTED)) if kind == "hf" else GGUFLayout(source)
    return ModelInput(path, source, config, tokenizer, layout)


def _input_kind(path: Path) -> str:
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConvertError(f"{path} is not a Hugging Face model directory (no config.json)")
        return "hf"
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConvertError(f"{path} is neither a model directory nor a GGUF file")
    return "gguf"


@clock("bit budget")
def allocate_types(run, saved, inp: ModelInput, skel, plan: Plan, opts) -> None:
    """--bpw: the types from the measured sensitivities (a resumed run reuses its own), kept in
    every checkpoint; the plan's types and the summary's predicted costs follow them."""
    if saved:
        types, predicted = saved["types"], saved["predicted"]
    else:
        alloc = budget.choose_types(inp, skel, plan, opts, lambda m: say(opts, m))
        types, predicted = alloc.types, alloc.predicted
    retype(plan, types, skel)
    run.kept = {"types": types, "predicted": predicted}
    opts.predicted = predicted


@clock("open the output")
def open_output(run, inp: ModelInput, plan: Plan, opts, saved) -> GGUFStream:
    """A fresh run writes the header now; a resumed one reopens its part file where it stopped."""
    if saved:
        stream = GGUFStream(run.part, plan.specs, saved["data_start"], next_index=saved["next_tensor"])
        if stream.position != saved["bytes"]:
            stream.close()
            raise ConvertError(f"--resume: {run.part} does not match its state; start over with --force")
        return stream
    ftype = int({"mpq2r": FTYPE_R, "mpq2s": FTYPE_S}.get(opts.type, FTYPE))
    n_params = sum(int(np.prod(s.shape)) for s in plan.specs[len(plan.extra):])
    stream = GGUFStream.create(run.part, inp.layout.arch, lambda w: inp.layout.add_metadata(w, n_params), plan.specs, ftype)
    for name, values in plan.extra:
        stream.write(name, values)
    return stream


@clock("calibrate")
def calibrate(inp: ModelInput, skel, opts) -> Progress:
    """Calibration sequences, and what the first block receives from the float embedding."""
    ids = calibration.token_ids(inp.tokenizer, opts.calib_file)
    seqs = calibration.sample_sequences(ids, opts.nsamples, opts.seqlen, opts.seed, inp.tokenizer.bos_token_id)
    say(opts, f"calibration {seqs.shape[0]} x {seqs.shape[1]} tokens")
    if short := calibration.short_text_note(len(ids), opts.nsamples, opts.seqlen, opts.calib_file):
        print(f"convert_mpq: {short}", file=sys.stderr)     # even with --quiet: it changes the file's quality
    skeleton.place_rotary(skel, opts.device)
    embeds = skeleton.embed(lambda rows: inp.source.get("model.embed_tokens.weight", rows), seqs, ROW_CHUNK)
    inputs = capture.first_block_inputs(skel, embeds.to(opts.device))
    finputs = inputs if opts.tune_norms and opts.norm_target == "model" else None
    return Progress(seqs, inputs, finputs)


@clock("calibrate")
def restore(run, saved: dict, opts) -> Progress:
    acts = run.activations(opts.device)
    say(opts, f"resuming after {saved['next_block']} blocks")
    return Progress(acts["seqs"], acts["inputs"], acts["finputs"], saved["next_block"], saved["embd_done"],
                    [Row(**r) for r in saved["rows"]], saved["norm_ratios"], saved["norm_kept"], saved["block_seconds"])


@clock("tied embedding")
def encode_tied_embedding(inp: ModelInput, skel, plan: Plan, opts, prog: Progress, out: GGUFStream, run) -> None:
    """--embd-first: GPTQ of the tied embedding/output on the float model's final hidden states,
    so the blocks are then calibrated on its error as an input embedding. The float pass keeps
    every block's output on disk where the blocks will need it (the norm tuning's targets), so
    no block runs twice in float."""
    say(opts, "float pass for the tied embedding/output")
    h = prog.finputs if prog.finputs is not None else prog.inputs
    spool = prog.finputs is not None and spool_fits(run, h, plan.n_blocks, opts)
    for i in blocks_bar(opts, 0, plan.n_blocks, "float pass"):
        block = skeleton.load_block(skel, i, inp.source, opts.device)
        h = capture.run_block(block, h)
        skeleton.release(block)
        if spool:
            run.spool_float(i, [hs for hs, _, _ in h])
    norm = skeleton.load_module(skel.model.norm, inp.source, "model.norm.", opts.device)
    weight = inp.source.get(plan.output.hf).to(opts.device)
    g = new_gptq(weight, opts)
    with torch.no_grad():
        for hs, _, _ in h:
            g.add_batch(norm(hs))
    del h
    data, decoded, row = encode_weight(plan.output, weight, g, opts, ROW_CHUNK)
    out.write(plan.output.name, data)
    prog.rows.append(row)
    embeds = skeleton.embed(lambda rows, d=decoded: d[rows].cpu(), prog.seqs, ROW_CHUNK)
    del decoded, weight, g
    prog.inputs = capture.first_block_inputs(skel, embeds.to(opts.device))
    prog.embd_done = True


def spool_fits(run, hidden: list[tuple], n_blocks: int, opts) -> bool:
    """Whether the float pass's outputs fit on the output's disk with room to spare (twice
    their size); if not, the blocks compute them again, at the cost of one float forward each."""
    need = n_blocks * sum(hs.numel() * hs.element_size() for hs, _, _ in hidden)
    free = shutil.disk_usage(run.dir).free
    if free > 2 * need:
        return True
    say(opts, f"{need / 1e9:.1f} GB of float hidden states would not fit beside the output "
              f"({free / 1e9:.1f} GB free in {run.dir.parent}): each block runs again in float instead")
    return False


@clock("blocks")
def quantize_block(i: int, inp: ModelInput, skel, plan: Plan, opts, prog: Progress, out: GGUFStream, run) -> None:
    """One block, as GPTQ: Hessians from the quantized model's inputs, each linear layer
    encoded, the norm gains tuned, the block's tensors written, its output the next inputs."""
    t0 = time.time()
    block = skeleton.load_block(skel, i, inp.source, opts.device)
    linears = capture.linear_modules(block)
    weights = plan.blocks[i]
    hessians = collect_hessians(block, prog.inputs, [m for m, w in weights.items() if uses_gptq(w)], opts)
    if prog.finputs is not None:          # the float block on the float trajectory, before it changes
        prog.finputs = float_outputs(block, i, prog.finputs, run)
    targets = None
    if opts.tune_norms and hessians:
        targets = prog.finputs if prog.finputs is not None else capture.run_block(block, prog.inputs)
    encoded = {}
    for mod, w in weights.items():
        data, decoded, row = encode_weight(w, linears[mod].weight.detach(), hessians.get(mod), opts)
        linears[mod].weight.data = decoded.to(linears[mod].weight.device, linears[mod].weight.dtype)
        encoded[mod] = data
        prog.rows.append(row)
    del hessians
    if targets is not None:
        tuned = norms.tune(block, prog.inputs, targets, opts.tune_norms, tokens=opts.tune_tokens or None)
        prog.norm_ratios.append(float(tuned.ratio))
        prog.norm_kept.append(bool(tuned.kept))
    for pname, p in block.named_parameters():
        mod = pname.rpartition(".")[0]
        if mod in weights and pname.endswith(".weight"):
            out.write(weights[mod].name, encoded[mod])
        else:
            out.write(*inp.layout.values(f"model.layers.{i}.{pname}", p))
    prog.inputs = capture.run_block(block, prog.inputs)
    skeleton.release(block)
    prog.next_block = i + 1
    prog.block_seconds.append(time.time() - t0)


def float_outputs(block, i: int, finputs: list[tuple], run) -> list[tuple]:
    """The float block's outputs on the float model's trajectory: read back where the float
    pass left them (the same values), else computed."""
    spooled = run.spooled_float(i, finputs[0][0].device)
    if spooled is None:
        return capture.run_block(block, finputs)
    return [(hs, a, kw) for hs, (_, a, kw) in zip(spooled, finputs)]


@clock("hessians")
def collect_hessians(block, inputs: list, names: list[str], opts) -> dict[str, MPQ2GPTQ]:
    """One Hessian per distinct layer input (q/k/v share one, gate/up another), for `names`."""
    if not names:
        return {}
    linears = capture.linear_modules(block)
    groups, sinks = [], {}
    in_order = capture.shared_inputs(block, inputs[0])
    for group in in_order:
        members = [n for n in group if n in names]
        if members:
            g = new_gptq(linears[members[0]].weight, opts)
            sinks[group[0]] = g.add_batch
            groups.append((members, g))
    capture.collect(block, inputs, sinks, last=in_order[-1][0])
    hessians = {}
    for members, g in groups:
        for n in members:
            hessians[n] = g if n == members[0] else g.sharing(linears[n].weight)
    return hessians


def new_gptq(weight: torch.Tensor, opts) -> MPQ2GPTQ:
    return MPQ2GPTQ(weight, device=opts.device)


@clock("encode (GPTQ or round to nearest)")
def encode_weight(w: Weight, weight: torch.Tensor, gptq: MPQ2GPTQ | None, opts,
                  row_chunk: int | None = None) -> tuple[np.ndarray, torch.Tensor, Row]:
    """A weight's bytes in GGUF row order, the values llama.cpp will decode them to (HF row
    order, for the model to continue with), and its summary line. `row_chunk`: GPTQ's working
    copies for that many rows at a time (the same bytes), for a 128k-row output projection."""
    if w.type in OUR_TYPES:
        res = gptq.fasterquant(weight, config_for(opts.cfg, w.type), row_chunk=row_chunk)
        data, decoded = res.packed, res.weight
        row = Row(w.name, w.type, f"{res.n_salient}/{res.n_words}", data.nbytes * 8 / weight.numel(),
                  f"{res.rel_output_error:.4f}", predicted_cost(opts, w.name))
    elif w.type in qtypes.GRIDS and gptq is not None and opts.cfg.method == "gptq":   # GPTQ on llama.cpp's grid
        res = gptq.fasterquant(weight, config_for(opts.cfg, w.type), row_chunk=row_chunk)
        data, decoded = res.packed, res.weight
        row = Row(w.name, w.type, "-", data.nbytes * 8 / weight.numel(), f"{res.rel_output_error:.4f}",
                  predicted_cost(opts, w.name))
    else:
        values = weight.detach().float().cpu().numpy()
        data, qtype = gguf_out.encode(values, w.type)
        decoded = torch.from_numpy(gguf_out.decode(data, qtype, values.shape))
        row = Row(w.name, w.type, "-", data.nbytes * 8 / values.size, "-", predicted_cost(opts, w.name))
    return (data if w.order is None else data[w.order]), decoded, row


@clock("output")
def encode_output(inp: ModelInput, skel, plan: Plan, opts, prog: Progress, out: GGUFStream, run) -> None:
    """The output projection (GPTQ on the final normed hidden states), the final norm's gain
    tuned on its logits, then the untied token embedding (round to nearest, in row chunks)."""
    norm = skeleton.load_module(skel.model.norm, inp.source, "model.norm.", opts.device)
    data = float_weight = None
    if plan.embd_first:
        decoded = read_back(run.part, out, plan.output)
    else:
        float_weight = inp.source.get(plan.output.hf).to(opts.device)
        g = new_gptq(float_weight, opts) if uses_gptq(plan.output) else None
        with torch.no_grad():
            for hs, _, _ in (prog.inputs if g else []):
                g.add_batch(norm(hs))
        data, decoded, row = encode_weight(plan.output, float_weight, g, opts, ROW_CHUNK)
        prog.rows.append(row)
        del g
    if opts.tune_norms and opts.tune_output_norm:
        say(opts, "tuning the final norm's gain")
        # the float weight kept from the encoding, not read again: a 128k-vocabulary output
        # is 2 GB in float32, and a second read's copies made this stage the run's peak
        if float_weight is None:
            float_weight = inp.source.get(plan.output.hf).to(opts.device)
        float_norm = copy.deepcopy(norm)
        target = norms.float_logits_of(float_norm, float_weight, prog.finputs if prog.finputs is not None else prog.inputs)
        tuned = norms.tune_output(norm, decoded.to(opts.device), [hs for hs, _, _ in prog.inputs], target, opts.tune_norms,
                                  tokens=opts.tune_tokens or None)
        say(opts, f"final norm: {tuned.describe()}")
        del target
    del decoded, float_weight
    out.write(*inp.layout.values("model.norm.weight", norm.weight))
    if data is not None:
        out.write(plan.output.name, data)
    if plan.embedding is not None:
        encode_rows(inp.source, plan.embedding, out)
        rows, cols = plan.embedding.shape
        prog.rows.append(Row(plan.embedding.name, plan.embedding.type, "-",
                             out.specs[-1].nbytes * 8 / (rows * cols), "-", predicted_cost(opts, plan.embedding.name)))


def predicted_cost(opts, name: str) -> str:
    """--bpw's predicted cost of a weight at its type, for the summary."""
    value = (getattr(opts, "predicted", None) or {}).get(name)
    return "-" if value is None else f"{value:.2e}"


@clock("embedding rows")
def encode_rows(source: Source, w: Weight, out: GGUFStream) -> None:
    """Round to nearest, ROW_CHUNK rows at a time (every type here encodes rows independently)."""
    rows = w.shape[0]
    for lo in range(0, rows, ROW_CHUNK):
        sl = slice(lo, min(lo + ROW_CHUNK, rows))
        values = source.get(w.hf, sl).numpy()
        data, _ = gguf_out.encode(values, w.type, threads=torch.get_num_threads())
        out.write(w.name, data, last_part=sl.stop == rows)


def read_back(part: Path, out: GGUFStream, w: Weight) -> torch.Tensor:
    """A weight already written, decoded from the output file (row chunks), in HF row order."""
    import gguf
    idx = [s.name for s in out.specs].index(w.name)
    spec = out.specs[idx]
    rows = w.shape[0]
    raw = np.memmap(part, dtype=np.uint8, mode="r", offset=out.offsets[idx], shape=(rows, spec.nbytes // rows))
    decoded = torch.empty(w.shape, dtype=torch.float32)
    for lo in range(0, rows, ROW_CHUNK):
        hi = min(lo + ROW_CHUNK, rows)
        decoded[lo:hi] = torch.from_numpy(np.ascontiguousarray(
            gguf.quants.dequantize(np.asarray(raw[lo:hi]), qtype_of(w.type)), dtype=np.float32).reshape(hi - lo, -1))
    del raw
    return decoded if w.order is None else decoded[torch.from_numpy(np.argsort(w.order))]


def report_norms(opts, prog: Progress) -> None:
    if not prog.norm_ratios:
        return
    kept = [r for r, k in zip(prog.norm_ratios, prog.norm_kept) if k]
    say(opts, f"norm gains: tuned gains kept in {len(kept)} of {len(prog.norm_ratios)} blocks "
              f"(held-out error x{np.mean(kept) if kept else 1.0:.3f} on average where kept); the others keep "
              f"their float gains, which did better on the held-out calibration sequences")


def blocks_bar(opts, start: int, stop: int, desc: str = "blocks"):
    from tqdm import tqdm
    return tqdm(range(start, stop), desc=desc, unit="block", initial=start, total=stop,
                disable=opts.quiet, file=sys.stderr)
