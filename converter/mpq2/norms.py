"""Norm tweaking: after a block's linear weights are quantized, its RMSNorm gains (float in the
GGUF, so free in bits) are tuned to bring the block's output back to the float block's.

GPTQ minimises each layer's own output error; the gains then rescale every input channel of
q/k/v and gate/up at once, which absorbs part of what the 2-bit grids got wrong in common
(measured in docs/BENCHMARKS.md, "Norm tweaking"). Adam on the mean squared error of the block
output, one calibration sequence per step.
"""
from __future__ import annotations

import torch

from . import capture

# The error before and after tuning is reported on the first REPORTED sequences only: on all of
# them it cost two extra passes over the calibration set per block, a third of the tuning's time.
REPORTED = 8


def block_norms(block: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The block's RMSNorm gains by module name (input_layernorm, post_attention_layernorm, ...)."""
    return {name: m.weight for name, m in block.named_modules()
            if name.endswith("norm") and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
            and m.weight.dim() == 1}


def tune(block: torch.nn.Module, inputs: list[tuple], targets: list[tuple], steps: int,
         lr: float = 1e-3) -> float:
    """Tunes the block's norm gains in place; returns the block's output error after over before
    (mean squared error over the first REPORTED calibration sequences)."""
    norms = list(block_norms(block).values())
    if steps <= 0 or not norms or not inputs:
        return 1.0

    def loss(k: int, backward: bool) -> float:
        hs, args, kwargs = inputs[k]
        err = torch.nn.functional.mse_loss(capture.hidden(block(hs, *args, **kwargs)), targets[k][0])
        if backward:
            err.backward()
        return float(err.detach())

    return _descend(norms, list(block.parameters()), loss, len(inputs), steps, lr)


def tune_output(norm: torch.nn.Module, weight: torch.Tensor, hidden: list[torch.Tensor],
                target_logits, steps: int, lr: float = 1e-3, chunk: int = 128) -> float:
    """Tunes the final RMSNorm's gain in place so that the logits of the quantized output
    projection `weight` on the quantized model's last hidden states (`hidden`, one (..., tokens,
    dim) tensor per sequence) come close to the target logits: KL(target || quantized) over the
    vocabulary. The gain rescales every input channel of the output projection, so it absorbs
    part of the error the blocks' norms cannot reach: the output projection's own.
    `target_logits(k, rows)` gives the target logits of tokens `rows` (a slice) of sequence k.
    Each step takes one sequence, `chunk` tokens at a time (gradients add up), so memory holds a
    few chunk x vocabulary tensors, not a whole sequence's. Returns KL after over before, on the
    first REPORTED sequences."""
    gain = getattr(norm, "weight", None)
    if steps <= 0 or not isinstance(gain, torch.nn.Parameter) or not hidden:
        return 1.0

    def kl_of(k: int, backward: bool) -> float:
        h = hidden[k].reshape(-1, hidden[k].shape[-1])
        total = 0.0
        for r in range(0, h.shape[0], chunk):
            rows = slice(r, min(r + chunk, h.shape[0]))
            logq = torch.log_softmax(norm(h[rows]) @ weight.T, dim=-1)
            with torch.no_grad():
                logp = torch.log_softmax(target_logits(k, rows).reshape(logq.shape), dim=-1)
            # summed over the vocabulary, averaged over the sequence's tokens
            kl = torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="sum") / h.shape[0]
            if backward:
                kl.backward()
            total += float(kl.detach())
        return total

    return _descend([gain], list(norm.parameters()), kl_of, len(hidden), steps, lr)


def _descend(params: list[torch.nn.Parameter], others: list[torch.nn.Parameter], loss, n: int,
             steps: int, lr: float) -> float:
    """Adam on `params` alone (`others` frozen meanwhile; every flag restored after), one of the
    n calibration sequences per step: `loss(k, backward)` returns sequence k's loss as a float,
    after backpropagating it when asked. Returns the loss after over before, summed over the
    first REPORTED sequences."""
    flags = {p: p.requires_grad for p in (*others, *params)}
    for p in others:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    try:
        with torch.no_grad():
            before = sum(loss(k, False) for k in range(min(REPORTED, n)))
        for step in range(steps):
            opt.zero_grad()
            loss(step % n, True)
            opt.step()
        with torch.no_grad():
            after = sum(loss(k, False) for k in range(min(REPORTED, n)))
    finally:
        for p in params:
            p.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return after / before if before > 0 else 1.0


def float_logits_of(norm: torch.nn.Module, weight: torch.Tensor, hidden: list[tuple]):
    """The `target_logits` of tune_output for a float final norm and output projection on the
    last hidden states `hidden` (capture's (hidden, args, kwargs) tuples)."""
    @torch.no_grad()
    def logits(k: int, rows: slice) -> torch.Tensor:
        h = hidden[k][0]
        return norm(h.reshape(-1, h.shape[-1])[rows]) @ weight.T
    return logits
