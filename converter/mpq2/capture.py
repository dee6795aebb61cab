"""Sequential, block by block calibration as in GPTQ: the inputs of block i are the outputs of
blocks 0..i-1 after they were quantized, so memory holds one block's activations at a time."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn


class _Stop(Exception):
    pass


class _Catcher(nn.Module):
    def __init__(self, inner: nn.Module, store: list):
        super().__init__()
        self.inner = inner
        self.store = store

    def forward(self, hidden_states, *args, **kwargs):
        self.store.append((hidden_states.detach(), args, kwargs))
        raise _Stop


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


@torch.no_grad()
def first_block_inputs(model: nn.Module, seqs: torch.Tensor) -> list[tuple]:
    """Runs the embeddings once per sequence and keeps what the first block receives."""
    layers = decoder_layers(model)
    store: list = []
    layers[0] = _Catcher(layers[0], store)
    try:
        for row in seqs:
            try:
                model(row[None], use_cache=False)
            except _Stop:
                pass
    finally:
        layers[0] = layers[0].inner
    return store


def linear_modules(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[tuple]) -> list[tuple]:
    outs = []
    for hs, args, kwargs in inputs:
        outs.append((hidden(block(hs, *args, **kwargs)).detach(), args, kwargs))
    return outs


@torch.no_grad()
def collect(block: nn.Module, inputs: list[tuple], sinks: dict[str, Callable[[torch.Tensor], None]]) -> None:
    """Feeds every input through the block, handing each linear layer's input to its sink."""
    mods = linear_modules(block)
    hooks = [mods[name].register_forward_hook(lambda m, i, o, f=fn: f(i[0])) for name, fn in sinks.items()]
    try:
        for hs, args, kwargs in inputs:
            block(hs, *args, **kwargs)
    finally:
        for h in hooks:
            h.remove()


def blocks(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    yield from enumerate(decoder_layers(model))
