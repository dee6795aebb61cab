"""Sequential, block by block calibration as in GPTQ: the inputs of block i are the outputs of
blocks 0..i-1 after they were quantized, so memory holds one block's activations at a time."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from .timing import clock


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
def first_block_inputs(model: nn.Module, embeds: torch.Tensor) -> list[tuple]:
    """Runs the model's own forward on the token embeddings (n, L, dim), one sequence at a time,
    and keeps what the first block receives (hidden states, mask, rotary embeddings, ...).
    Nothing past the first block runs, so the skeleton's other blocks may stay empty."""
    layers = decoder_layers(model)
    store: list = []
    layers[0] = _Catcher(layers[0], store)
    try:
        for row in embeds:
            try:
                model.model(inputs_embeds=row[None], use_cache=False)
            except _Stop:
                pass
    finally:
        layers[0] = layers[0].inner
    return store


def prefix(inp: tuple, tokens: int | None) -> tuple:
    """A calibration input (hidden, args, kwargs) cut to its first `tokens` positions. Attention is
    causal, so a block computes on the prefix exactly the first `tokens` of its outputs on the
    whole sequence. The inputs the decoder layers take are cut where they have a sequence axis
    (rotary embeddings, position ids, a mask); any other tensor stops with an error rather than
    being guessed at."""
    hs, args, kwargs = inp
    if tokens is None or tokens >= hs.shape[-2]:
        return inp

    def cut(name: str, v):
        if name == "position_embeddings" and isinstance(v, tuple):
            return tuple(t[..., :tokens, :] for t in v)
        if name in ("position_ids", "cache_position") and torch.is_tensor(v):
            return v[..., :tokens]
        if name == "attention_mask" and torch.is_tensor(v):
            return v[..., :tokens, :tokens]
        if torch.is_tensor(v) or (isinstance(v, tuple) and any(torch.is_tensor(t) for t in v)):
            raise ValueError(f"cannot cut the block input {name!r} to a prefix of {tokens} tokens")
        return v

    if any(torch.is_tensor(a) for a in args):
        raise ValueError(f"cannot cut positional block inputs to a prefix of {tokens} tokens")
    return hs[..., :tokens, :], args, {k: cut(k, v) for k, v in kwargs.items()}


def linear_modules(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# Sequences per forward in run_block and collect: batched matrix products ran a SmolLM2 block
# 1.8x faster than one sequence at a time on 2 cores (8 x 512 tokens against 8 x 1).
BATCH_TOKENS = 4096


def batches(inputs: list[tuple]):
    """Consecutive calibration inputs stacked into batches of up to BATCH_TOKENS tokens:
    (hidden (b, L, dim), args, kwargs, b). Every sequence has the same length, so the first's
    masks and rotary embeddings (batch dimension 1) serve the whole batch."""
    i = 0
    while i < len(inputs):
        hs0, args, kwargs = inputs[i]
        per = max(1, BATCH_TOKENS // max(1, hs0.shape[-2]))
        j = i + 1
        while j < len(inputs) and j - i < per and inputs[j][0].shape == hs0.shape:
            j += 1
        yield (hs0 if j == i + 1 else torch.cat([inputs[k][0] for k in range(i, j)])), args, kwargs, j - i
        i = j


@torch.no_grad()
@clock("block forwards")
def run_block(block: nn.Module, inputs: list[tuple]) -> list[tuple]:
    outs = []
    for hs, args, kwargs, n in batches(inputs):
        out = hidden(block(hs, *args, **kwargs)).detach()
        for k, (_, a, kw) in enumerate(inputs[len(outs):len(outs) + n]):
            outs.append((out[k:k + 1].clone() if n > 1 else out, a, kw))
    return outs


def shared_inputs(block: nn.Module, first: tuple) -> list[list[str]]:
    """The block's linear layers grouped by the input they receive (q/k/v share the normed
    hidden states, gate/up the post-attention ones): one Hessian serves each group. Found by
    running one input through the block and comparing the tensors the layers see."""
    mods = linear_modules(block)
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=name: seen.append((n, i[0]))) for name, m in mods.items()]
    try:
        with torch.no_grad():
            hs, args, kwargs = first
            block(hs, *args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    groups: list[tuple[torch.Tensor, list[str]]] = []
    for name, x in seen:
        for t, names in groups:
            if t is x:
                names.append(name)
                break
        else:
            groups.append((x, [name]))
    return [names for _, names in groups]


@torch.no_grad()
def collect(block: nn.Module, inputs: list[tuple], sinks: dict[str, Callable[[torch.Tensor], None]],
            last: str | None = None) -> None:
    """Feeds every input through the block, handing each named linear layer's input to its sink.
    `last`: the block's last linear layer (shared_inputs' last group), where the forward stops
    once its input is handed over: its product (ffn_down's, a quarter of the block's) and what
    follows it are not needed for any Hessian."""
    mods = linear_modules(block)

    def stop(m, a, f):
        f(a[0])
        raise _Stop

    hooks = [mods[name].register_forward_pre_hook(lambda m, a, f=fn: stop(m, a, f)) if name == last
             else mods[name].register_forward_hook(lambda m, i, o, f=fn: f(i[0])) for name, fn in sinks.items()]
    try:
        for hs, args, kwargs, _ in batches(inputs):
            try:
                block(hs, *args, **kwargs)
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()


def blocks(model: nn.Module) -> Iterator[tuple[int, nn.Module]]:
    yield from enumerate(decoder_layers(model))
