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


def block_norms(block: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The block's RMSNorm gains by module name (input_layernorm, post_attention_layernorm, ...)."""
    return {name: m.weight for name, m in block.named_modules()
            if name.endswith("norm") and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
            and m.weight.dim() == 1}


def tune(block: torch.nn.Module, inputs: list[tuple], targets: list[tuple], steps: int,
         lr: float = 1e-3) -> float:
    """Tunes the block's norm gains in place; returns the block's output error after over before
    (mean squared error over all calibration sequences)."""
    norms = list(block_norms(block).values())
    if steps <= 0 or not norms or not inputs:
        return 1.0
    grads = {p: p.requires_grad for p in block.parameters()}
    for p in block.parameters():
        p.requires_grad_(False)
    for p in norms:
        p.requires_grad_(True)
    opt = torch.optim.Adam(norms, lr=lr)

    def loss_of(k: int) -> torch.Tensor:
        hs, args, kwargs = inputs[k]
        return torch.nn.functional.mse_loss(capture.hidden(block(hs, *args, **kwargs)), targets[k][0])

    try:
        with torch.no_grad():
            before = sum(float(loss_of(k)) for k in range(len(inputs)))
        for step in range(steps):
            opt.zero_grad()
            loss_of(step % len(inputs)).backward()
            opt.step()
        with torch.no_grad():
            after = sum(float(loss_of(k)) for k in range(len(inputs)))
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
    return after / before if before > 0 else 1.0
