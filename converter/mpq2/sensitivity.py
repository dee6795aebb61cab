"""Sensitivities for `--bpw`: how far each weight's quantization error, at each candidate type,
moves the model's output, measured on calibration tokens (docs/CONVERTER.md, "Bit budget").

The cost of a perturbation dW of one weight is the second-order increase of the KL divergence
from the float model's next-token distribution, in nats per token:

    cost = 1/2 * mean over tokens of (g . dW x)^2

with x the layer's input at that token and g the gradient of -log p(y) with respect to the
layer's output, y drawn from the float model's own distribution (Gumbel-max): in expectation
over y, (g . d)^2 is d^T F d with F the Fisher of the softmax, the KL's Hessian. Cross terms
between positions are dropped (each token's output perturbation is weighed on its own). For
the output projection the expectation is taken exactly, sum_v p dz_v^2 - (sum_v p dz_v)^2, with
dz = dW x the logits' change. A token embedding's row moves only the tokens that use it: its
cost is the same form with x the one-hot token, over the rows the calibration tokens use.

dW is the round-to-nearest error of each candidate type, not GPTQ's: GPTQ lowers every
type's error, and the allocation needs the ranking, not the level.

The model runs in float: one forward stores each block's input, then a backward streamed block
by block in reverse (one block's weights in memory at a time) recomputes each block's forward
with autograd and hooks every linear layer's input and output gradient.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch

from . import capture, gguf_out, skeleton
from .gguf_out import OUR_TYPES
from .gptq import MPQ2GPTQ, config_for

ROW_CHUNK = 8192


def measure(inp, skel, plan, seqs: torch.Tensor, candidates: dict[str, list[str]], opts) -> dict[str, dict[str, float]]:
    """Predicted cost (nats per token) of every weight in `candidates` (GGUF name -> types) at each
    of its types, from the calibration sequences `seqs` (n, L)."""
    dev = opts.device
    skeleton.place_rotary(skel, dev)
    embeds = skeleton.embed(lambda rows: inp.source.get("model.embed_tokens.weight", rows), seqs, ROW_CHUNK)
    first = capture.first_block_inputs(skel, embeds.to(dev))
    del embeds
    block_inputs = float_forward(inp, skel, plan, first, opts)
    costs: dict[str, dict[str, float]] = {}
    grad, tied_rows = output_costs(inp, skel, plan, block_inputs[-1], seqs, candidates, costs, opts)
    for i in _bar(opts, reversed(range(plan.n_blocks)), plan.n_blocks, "sensitivity: blocks"):
        grad = block_costs(i, inp, skel, plan, first, block_inputs[i], grad, candidates, costs, opts)
        block_inputs[i] = None
    embedding_costs(inp, plan, seqs, grad, tied_rows, candidates, costs, opts)
    return costs


# ---------------------------------------------------------------- the float forward

def float_forward(inp, skel, plan, first: list[tuple], opts) -> list[torch.Tensor]:
    """The hidden states entering every block (n, L, dim), and after the last one (index n_blocks)."""
    h = first
    out = [torch.cat([hs for hs, _, _ in h])]
    for i in _bar(opts, range(plan.n_blocks), plan.n_blocks, "sensitivity: float pass"):
        block = skeleton.load_block(skel, i, inp.source, opts.device)
        h = capture.run_block(block, h)
        skeleton.release(block)
        out.append(torch.cat([hs for hs, _, _ in h]))
    return out


# ---------------------------------------------------------------- the output projection

def output_costs(inp, skel, plan, h_last: torch.Tensor, seqs, candidates, costs, opts):
    """The output projection's costs (exact Fisher of the logits), the gradient of the sampled
    labels' loss with respect to the last block's output, and with tied embeddings the error of
    each calibration token's row (per type), the same encoding serving as its embedding. The
    vocabulary is read in row chunks: pass 1 gives each token's log-normaliser and sampled
    label, pass 2 the gradient and costs."""
    norm = skeleton.load_module(skel.model.norm, inp.source, "model.norm.", opts.device)
    for p in norm.parameters():
        p.requires_grad_(False)
    h = h_last.reshape(-1, h_last.shape[-1]).detach().requires_grad_(True)
    x = norm(h)
    xd = x.detach()
    w = plan.output
    rows = w.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(opts.seed)
    lse = torch.full((xd.shape[0],), -torch.inf, device=xd.device)
    best = torch.full_like(lse, -torch.inf)
    label = torch.zeros(xd.shape[0], dtype=torch.long, device=xd.device)
    for lo, hi in _chunks(rows):
        z = xd @ inp.source.get(w.hf, slice(lo, hi)).to(xd.device).T
        lse = torch.logaddexp(lse, torch.logsumexp(z, dim=1))
        u = torch.rand(z.shape, generator=gen).clamp_(1e-20, 1.0).to(z.device)
        noisy = z - torch.log(-torch.log(u))
        m, arg = noisy.max(dim=1)
        better = m > best
        best = torch.where(better, m, best)
        label = torch.where(better, arg + lo, label)
    types = candidates.get(w.name, [])
    acc = {t: [torch.zeros_like(lse), torch.zeros_like(lse)] for t in types}   # sum p dz^2, sum p dz
    grad_x = torch.zeros_like(xd)
    g = _gptq_for(w.shape, [xd], opts) if any(t in OUR_TYPES for t in types) else None
    ids = seqs.reshape(-1).to(xd.device)
    tied_rows = {t: torch.zeros(ids.shape[0], xd.shape[1], device=xd.device) for t in types} if plan.tied else None
    for lo, hi in _chunks(rows):
        W = inp.source.get(w.hf, slice(lo, hi)).to(xd.device)
        p = torch.exp(xd @ W.T - lse[:, None])
        grad_x += p @ W
        used = (ids >= lo) & (ids < hi)
        for t in types:
            D = delta(W, t, g, opts)
            dz = xd @ D.T
            acc[t][0] += (p * dz * dz).sum(1)
            acc[t][1] += (p * dz).sum(1)
            if tied_rows is not None:
                tied_rows[t][used] = D[ids[used] - lo]
        del W, p
    # the sampled labels' one-hot part: their rows of the output matrix
    grad_x -= skeleton.embed(lambda r: inp.source.get(w.hf, r), label.cpu(), ROW_CHUNK).to(xd.device)
    for t in types:
        a, b = acc[t]
        _add(costs, w.name, t, 0.5 * float((a - b * b).clamp_min(0).mean()))
    x.backward(grad_x)
    return h.grad.reshape(h_last.shape), tied_rows


# ---------------------------------------------------------------- the blocks, in reverse

def block_costs(i, inp, skel, plan, first, h_in: torch.Tensor, grad_out: torch.Tensor, candidates, costs, opts):
    """Block i's forward again with autograd, from its stored float input: each linear layer's
    input and output gradient, their costs at every candidate, and the gradient at the block's
    input for the block before it."""
    block = skeleton.load_block(skel, i, inp.source, opts.device)
    for p in block.parameters():
        p.requires_grad_(False)
    linears = capture.linear_modules(block)
    xs: dict[str, list] = {m: [] for m in linears}
    gs: dict[str, list] = {m: [] for m in linears}

    def hook(mod_name):
        def f(module, args, out):
            xs[mod_name].append(args[0].detach().reshape(-1, args[0].shape[-1]))
            out.register_hook(lambda gr: gs[mod_name].append(gr.detach().reshape(-1, gr.shape[-1])))
        return f

    hooks = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    grad_in = []
    try:
        _, args, kwargs = first[0]
        per = max(1, capture.BATCH_TOKENS // h_in.shape[1])
        for lo in range(0, h_in.shape[0], per):
            hs = h_in[lo:lo + per].detach().requires_grad_(True)
            out = capture.hidden(block(hs, *args, **kwargs))
            out.backward(grad_out[lo:lo + per])
            grad_in.append(hs.grad)
    finally:
        for hk in hooks:
            hk.remove()
    for mod, w in plan.blocks[i].items():
        types = candidates.get(w.name, [])
        if not types:
            continue
        x, g = torch.cat(xs.pop(mod)), torch.cat(gs.pop(mod))
        W = linears[mod].weight.detach()
        gq = _gptq_for(W.shape, [x], opts) if any(t in OUR_TYPES for t in types) else None
        for t in types:
            s = ((g @ delta(W, t, gq, opts)) * x).sum(1)
            _add(costs, w.name, t, _cost(s, h_in.shape[0], per_sequence=w.name.endswith("attn_k.weight")))
        del x, g
    skeleton.release(block)
    return torch.cat(grad_in).detach()


# ---------------------------------------------------------------- the token embedding

def embedding_costs(inp, plan, seqs, grad: torch.Tensor, tied_rows, candidates, costs, opts) -> None:
    """A token's embedding row is its input: cost = 1/2 mean (g . dE[id])^2 over the tokens. A
    tied matrix adds this to its output cost, with the rows' errors of the output's encoding
    (`tied_rows`); an untied one is rounded to nearest row by row, as the file holds it."""
    w = plan.output if plan.tied else plan.embedding
    types = candidates.get(w.name, [])
    if not types:
        return
    ids = seqs.reshape(-1).to(grad.device)
    g = grad.reshape(-1, grad.shape[-1])
    rows = tied_rows if tied_rows is not None else _untied_rows(inp, w, ids, types, opts)
    for t in types:
        s = (g * rows[t]).sum(1)
        _add(costs, w.name, t, 0.5 * float((s * s).mean()))


def _untied_rows(inp, w, ids: torch.Tensor, types, opts) -> dict[str, torch.Tensor]:
    """Each calibration token's embedding error per type, read and encoded in row chunks."""
    rows = {t: torch.zeros(ids.shape[0], w.shape[1], device=ids.device) for t in types}
    eye = _identity_gptq((ROW_CHUNK, w.shape[1]), opts) if any(t in OUR_TYPES for t in types) else None
    for lo, hi in _chunks(w.shape[0]):
        used = (ids >= lo) & (ids < hi)
        if not used.any():
            continue
        E = inp.source.get(w.hf, slice(lo, hi)).to(ids.device)
        for t in types:
            rows[t][used] = delta(E, t, eye, opts)[ids[used] - lo]
    return rows


# ---------------------------------------------------------------- the candidates' errors

def delta(W: torch.Tensor, type_name: str, gptq: MPQ2GPTQ | None, opts) -> torch.Tensor:
    """Round-to-nearest error of `W` at `type_name`: what the type decodes to, minus W. Our
    types go through the converter's own encoder (salience and bitmap from the Hessian in
    `gptq`); the others through gguf-py's numpy quantizers, as the file would hold them."""
    if type_name in OUR_TYPES:
        cfg = replace(config_for(opts.cfg, type_name), method="rtn")
        return gptq.sharing(W.shape).fasterquant(W, cfg, error=False).weight.to(W.device) - W
    values = W.detach().float().cpu().numpy()
    data, qtype = gguf_out.encode(values, type_name)
    return torch.from_numpy(gguf_out.decode(data, qtype, values.shape)).to(W.device) - W


def _gptq_for(shape, inputs: list[torch.Tensor], opts) -> MPQ2GPTQ:
    g = MPQ2GPTQ(shape, device=opts.device)
    for x in inputs:
        g.add_batch(x)
    return g


def _identity_gptq(shape, opts) -> MPQ2GPTQ:
    """Every input equally important: an embedding row is read, not multiplied by activations."""
    g = MPQ2GPTQ(shape, device=opts.device)
    g.H = torch.eye(shape[1], dtype=torch.float64, device=g.device)
    g.nsamples = 1
    return g


def _cost(s: torch.Tensor, n_seqs: int, per_sequence: bool = False) -> float:
    """1/2 mean (g . d)^2 from the per-token products s (sequence-major). per_sequence: the
    products summed over each sequence before squaring, which keeps the cross terms between
    positions. Only the keys need them: an error shared by a query's keys shifts all its scores
    alike and cancels in the softmax, which the per-token form cannot see (it overstated attn_k's
    cost at MPQ2R 3-4x on tests/test_bit_budget.py's model, and was within 0.65-1.1x elsewhere);
    the per-sequence sum is unbiased but noisier, so it is used there only."""
    if per_sequence:
        ss = s.reshape(n_seqs, -1).sum(1)
        return 0.5 * float((ss * ss).sum()) / s.numel()
    return 0.5 * float((s * s).mean())


def _chunks(rows: int):
    return [(lo, min(lo + ROW_CHUNK, rows)) for lo in range(0, rows, ROW_CHUNK)]


def _add(costs: dict, name: str, type_name: str, value: float) -> None:
    costs.setdefault(name, {})
    costs[name][type_name] = costs[name].get(type_name, 0.0) + value


def _bar(opts, it, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(it, desc=desc, unit="block", total=total, disable=opts.quiet, file=sys.stderr)

